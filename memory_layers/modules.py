"""Modules and initialisations shared by several mixers: RMS norms, Mamba2-style inits and the
helpers of the eager acting step (packed projections)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook


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


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """The y with ``softplus(y) == x`` (elementwise, x > 0)."""
    return x + torch.log(-torch.expm1(-x))


def mamba_dt_bias(num_heads: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Mamba2-style dt bias: softplus(dt_bias) is log-uniform in [dt_min, dt_max], ``[H]``."""
    dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp_min(1e-4))


def mamba_a_log(num_heads: int, a_min: float = 1.0, a_max: float = 16.0) -> torch.Tensor:
    """Mamba2-style A_log: A = exp(A_log) uniform in [a_min, a_max], ``[H]``."""
    return torch.log(torch.empty(num_heads).uniform_(a_min, a_max))


# ---- the eager acting step ----------------------------------------------------------------------------
# Acting runs one token per lifetime (a handful of rows per op), so its cost is the number of ops, not
# their FLOPs. In eager inference mode the mixers and blocks take a path with fewer ops: the
# projections that read the same input run as one matmul against packed, pre-transposed weights, which
# are derived from the parameters once and rebuilt only when a parameter changes. Learning, autograd
# and torch.compile (which fuses the plain path itself) take the plain path.


def eager_acting() -> bool:
    """True in eager inference mode (the acting step), False under autograd or torch.compile tracing."""
    # is_compiling() first: torch.compile traces it as a constant and never reaches the other check
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


_optimizer_steps = 0  # optimizer steps taken in this process (any optimizer)


def _count_optimizer_step(*_args) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# A fused optimizer (torch.optim.Adam(fused=True), the learner's) writes its parameters without
# bumping their version counters, so every optimizer step also counts as a change of every parameter.
register_optimizer_step_post_hook(_count_optimizer_step)


class ParamCache:
    """Tensors derived from parameters (packed or transposed weights), rebuilt whenever one of the
    parameters may have changed: after any optimizer step, after an in-place write (``load_state_dict``,
    ``copy_``: each bumps the tensor's version counter) and for a new parameter object. (A write
    through ``p.data`` is not seen; call :meth:`clear` after one.)"""

    __slots__ = ("_key", "_value")

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value = None

    def get(self, params: list[torch.Tensor], build):
        key = (_optimizer_steps, *((id(p), p._version) for p in params))
        if key != self._key:
            with torch.inference_mode():
                self._value = build()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None

    def __deepcopy__(self, memo: dict) -> "ParamCache":
        return ParamCache()  # a copy's parameters are new objects: rebuilt on first use


def packed_linears(x: torch.Tensor, linears: list[nn.Linear], cache: ParamCache,
                   extra_bias: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """``torch.cat([lin(x) for lin in linears], -1)`` as one matmul (x ``[N, D]``): the weights packed
    and transposed once (in ``cache``); ``extra_bias`` {i: [out_i]} adds a parameter to linear i's
    output (a bias kept outside the Linear). Split the ``[N, sum(out)]`` result to get each output."""
    extra = extra_bias or {}
    params = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None] + list(extra.values())

    def build():
        weight = torch.cat([lin.weight for lin in linears]).t().contiguous()
        if all(lin.bias is None for lin in linears) and not extra:
            return weight, None
        biases = []
        for i, lin in enumerate(linears):
            b = lin.bias if lin.bias is not None else weight.new_zeros(lin.out_features)
            biases.append(b + extra[i] if i in extra else b)
        return weight, torch.cat(biases)

    weight, bias = cache.get(params, build)
    return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
