"""The backbone: a stack of pre-norm memory blocks (DESIGN.md section 5)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.memory_layers.modules import ParamCache, RMSNorm, eager_acting, packed_linears
from lifelong.memory_layers.protocol import MemoryMixer
from lifelong.memory_layers.state import State


class MemoryBlock(nn.Module):
    """RMSNorm -> memory layer -> residual -> RMSNorm -> MLP -> residual (DESIGN.md section 5)."""

    def __init__(self, mixer: MemoryMixer, mlp_ratio: float) -> None:
        super().__init__()
        d = mixer.d_model
        self.norm1 = RMSNorm(d)
        self.mixer = mixer
        self.norm2 = RMSNorm(d)
        hidden = int(round(d * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self._up_cache, self._down_cache = ParamCache(), ParamCache()  # the eager acting step's weights

    def forward(
        self, x: torch.Tensor, state: State, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """x ``[B, T, D]`` -> (``[B, T, D]``, state)."""
        h, state = self.mixer(self.norm1(x), state, reset)
        x = x + h
        return x + self.mlp(self.norm2(x)), state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x ``[B, D]`` -> (``[B, D]``, state)."""
        if eager_acting() and isinstance(self.mlp[1], nn.GELU) and self.mlp[1].approximate == "none":
            # the same arithmetic with fewer ops: functional norms, pre-transposed MLP weights
            h, state = self.mixer.step(F.rms_norm(x, x.shape[-1:], self.norm1.weight, self.norm1.eps), state)
            x = x + h
            z = F.rms_norm(x, x.shape[-1:], self.norm2.weight, self.norm2.eps)
            z = F.gelu(packed_linears(z, [self.mlp[0]], self._up_cache))
            return x + packed_linears(z, [self.mlp[2]], self._down_cache), state
        h, state = self.mixer.step(self.norm1(x), state)
        x = x + h
        return x + self.mlp(self.norm2(x)), state


class Backbone(nn.Module):
    """A stack of memory blocks; its state is a tuple with one mixer state per layer."""

    def __init__(self, mixers: list[MemoryMixer], mlp_ratio: float) -> None:
        super().__init__()
        if not mixers:
            raise ValueError("a backbone needs at least one memory layer (agent.num_layers >= 1)")
        self.blocks = nn.ModuleList(MemoryBlock(m, mlp_ratio) for m in mixers)
        self.norm = RMSNorm(mixers[0].d_model)

    def init_state(self, batch_size: int, device: torch.device | str) -> tuple:
        """One fresh mixer state per layer."""
        return tuple(b.mixer.init_state(batch_size, device) for b in self.blocks)

    def forward(
        self, x: torch.Tensor, state: tuple, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple]:
        """x ``[B, T, D]``, reset ``[B, T]`` or None -> (``[B, T, D]``, new state tuple)."""
        new_states = []
        for block, s in zip(self.blocks, state):
            x, s = block(x, s, reset)
            new_states.append(s)
        return self.norm(x), tuple(new_states)

    def step(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """x ``[B, D]`` -> (``[B, D]``, new state tuple)."""
        new_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_states.append(s)
        return self.norm(x), tuple(new_states)

    def reset_state(self, state: tuple, mask: torch.Tensor) -> tuple:
        """Fresh per-layer states for the lifetimes where ``mask`` ``[B]`` is True."""
        return tuple(b.mixer.reset_state(s, mask) for b, s in zip(self.blocks, state))

    def state_metrics(self, state: tuple) -> dict[str, dict[str, float]]:
        """``{"layer0": {...}, ...}`` from every mixer's own ``state_metrics``."""
        return {f"layer{i}": b.mixer.state_metrics(s) for i, (b, s) in enumerate(zip(self.blocks, state))}
