"""Modules and initialisations shared by several mixers: RMS norms and Mamba2-style inits."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
