"""The memory-mixer protocol shared by every layer, and the backbone block around it.

Notation follows DESIGN.md: x is ``[B, T, D]``; heads split D into ``H`` heads of size ``D // H``;
kernels take ``[B, T, H, K]`` / ``[B, T, H, V]``; states are NamedTuples of fp32 tensors whose shapes
never depend on the number of tokens seen (softmax attention's growing cache is the one exception).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import _pytree as pytree

# A state is a NamedTuple of tensors (or a tuple of such per layer in a backbone).
State = Any


def tree_map(fn, state: State) -> State:
    """Apply ``fn`` to every tensor leaf of a (nested) state, keeping its NamedTuple types."""
    return pytree.tree_map(fn, state)


def tree_leaves(state: State) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(state) if isinstance(leaf, torch.Tensor)]


def detach_state(state: State) -> State:
    """Cut the autograd graph (truncated backprop at segment boundaries)."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, state)


def clone_state(state: State) -> State:
    """A deep copy that shares no storage with ``state`` (used by probes)."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, state)


def state_nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(state))


def state_is_finite(state: State) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tree_leaves(state) if t.is_floating_point())


def effective_rank(matrix: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(entropy of the normalised singular values), averaged over leading dims.

    ``matrix``: ``[..., K, V]``. Returns a value in [1, min(K, V)] (0 for an all-zero matrix).
    """
    m = matrix.detach().float().reshape(-1, matrix.shape[-2], matrix.shape[-1])
    s = torch.linalg.svdvals(m)  # [N, min(K, V)]
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum(-1)
    erank = torch.where(total.squeeze(-1) > eps, torch.exp(entropy), torch.zeros_like(entropy))
    return float(erank.mean())


class MemoryMixer(nn.Module, ABC):
    """The protocol of DESIGN.md section 3.

    Subclasses implement :meth:`init_state`, :meth:`forward_chunk` (the chunk-parallel form over a
    whole sequence, no resets) and usually override :meth:`step` with a fused recurrent step.
    :meth:`forward` adds the optional reset mask on top of ``forward_chunk`` for every mixer.
    """

    #: False only for mixers whose state grows with the tokens seen (softmax attention).
    parametric: bool = True

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model ({d_model}) and num_heads ({num_heads}) must be positive")
        if d_model % num_heads != 0:
            divisors = [h for h in range(1, d_model + 1) if d_model % h == 0 and h <= 64]
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}: pick num_heads from "
                f"{divisors} (e.g. memory.num_heads={max(h for h in divisors if h <= num_heads)}) "
                f"or change agent.d_model"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., H, D / H]`` (a view)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    # ---- protocol -------------------------------------------------------------------------
    @abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str) -> State:
        """A fresh state for ``batch_size`` lifetimes (fp32)."""

    @abstractmethod
    def forward_chunk(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token). No resets."""

    def forward(
        self, x: torch.Tensor, state: State, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """x ``[B, T, D]``; reset ``[B, T]`` bool, True at t clears the state before token t.

        Returns y ``[B, T, D]`` and the state after the last token.
        """
        if reset is None or not bool(reset.any()):
            return self.forward_chunk(x, state)
        if reset.shape != x.shape[:2]:
            raise ValueError(f"reset must be [B, T] = {tuple(x.shape[:2])}, got {tuple(reset.shape)}")
        # Split the sequence at every time some lifetime resets; within a piece no reset occurs.
        cut_times = torch.nonzero(reset.any(0)).flatten().tolist()
        bounds = sorted(set([0, *cut_times, x.shape[1]]))
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            state = self.reset_state(state, reset[:, start])
            y, state = self.forward_chunk(x[:, start:end], state)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x ``[B, D]`` -> y ``[B, D]``; equals ``forward(x[:, None], state)``."""
        y, state = self.forward_chunk(x[:, None], state)
        return y[:, 0], state

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        """Replace the state of the lifetimes where ``mask`` ``[B]`` is True by a fresh one."""
        if not bool(mask.any()):
            return state
        fresh = self.init_state(mask.shape[0], mask.device)

        def blend(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            m = mask.view(-1, *([1] * (old.dim() - 1)))
            return torch.where(m, new.to(old.dtype), old)

        return pytree.tree_map(blend, state, fresh)

    def state_metrics(self, state: State) -> dict[str, float]:
        """Diagnostics for TensorBoard: norm and effective rank of the main ``[B, H, K, V]`` tensor."""
        leaves = tree_leaves(state)
        main = leaves[0]
        metrics = {"state_norm": float(main.float().norm(dim=(-2, -1)).mean())} if main.dim() >= 2 else {}
        if main.dim() >= 2 and main.numel() > 0:
            metrics["state_erank"] = effective_rank(main)
        metrics["state_bytes"] = float(state_nbytes(state))
        return metrics


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dim of ``[..., H, V]`` (the output norm of most mixers)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), None, self.eps) * self.weight


class MemoryBlock(nn.Module):
    """RMSNorm -> memory layer -> residual -> RMSNorm -> MLP -> residual (DESIGN.md section 5)."""

    def __init__(self, mixer: MemoryMixer, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        d = mixer.d_model
        self.norm1 = RMSNorm(d)
        self.mixer = mixer
        self.norm2 = RMSNorm(d)
        hidden = int(round(d * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, state: State, reset: torch.Tensor | None = None):
        """x ``[B, T, D]`` -> (``[B, T, D]``, state)."""
        h, state = self.mixer(self.norm1(x), state, reset)
        x = x + h
        return x + self.mlp(self.norm2(x)), state

    def step(self, x: torch.Tensor, state: State):
        """x ``[B, D]`` -> (``[B, D]``, state)."""
        h, state = self.mixer.step(self.norm1(x), state)
        x = x + h
        return x + self.mlp(self.norm2(x)), state


class Backbone(nn.Module):
    """A stack of memory blocks; its state is a tuple with one mixer state per layer."""

    def __init__(self, mixers: list[MemoryMixer], mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if not mixers:
            raise ValueError("a backbone needs at least one memory layer (agent.num_layers >= 1)")
        self.blocks = nn.ModuleList(MemoryBlock(m, mlp_ratio) for m in mixers)
        self.norm = RMSNorm(mixers[0].d_model)

    def init_state(self, batch_size: int, device: torch.device | str) -> tuple:
        return tuple(b.mixer.init_state(batch_size, device) for b in self.blocks)

    def forward(self, x: torch.Tensor, state: tuple, reset: torch.Tensor | None = None):
        """x ``[B, T, D]``, reset ``[B, T]`` or None -> (``[B, T, D]``, new state tuple)."""
        new_states = []
        for block, s in zip(self.blocks, state):
            x, s = block(x, s, reset)
            new_states.append(s)
        return self.norm(x), tuple(new_states)

    def step(self, x: torch.Tensor, state: tuple):
        """x ``[B, D]`` -> (``[B, D]``, new state tuple)."""
        new_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_states.append(s)
        return self.norm(x), tuple(new_states)

    def reset_state(self, state: tuple, mask: torch.Tensor) -> tuple:
        return tuple(b.mixer.reset_state(s, mask) for b, s in zip(self.blocks, state))

    def state_metrics(self, state: tuple) -> dict[str, dict[str, float]]:
        """``{"layer0": {...}, ...}`` from every mixer's own ``state_metrics``."""
        return {f"layer{i}": b.mixer.state_metrics(s) for i, (b, s) in enumerate(zip(self.blocks, state))}


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def mamba_dt_bias(num_heads: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Mamba2-style dt bias: softplus(dt_bias) is log-uniform in [dt_min, dt_max], ``[H]``."""
    dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp_min(1e-4))


def mamba_a_log(num_heads: int, a_min: float = 1.0, a_max: float = 16.0) -> torch.Tensor:
    """Mamba2-style A_log: A = exp(A_log) uniform in [a_min, a_max], ``[H]``."""
    return torch.log(torch.empty(num_heads).uniform_(a_min, a_max))
