"""Gated linear attention (GLA, Yang et al. 2024) as a memory mixer: per-key-channel decay.

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t * K^-1/2

with g_t = logsigmoid(W_2 W_1 x_t + b) / gate_normalizer ``[H, K]`` from a low-rank gate projection
(d -> gate_low_rank_dim -> d; 16 and 16 as in the paper). The output is per-head RMSNorm, a SiLU
gate from x, and a projection. The kernel is ``kernels.gated_linear.gla``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.kernels.gated_linear import gla, gla_step
from lifelong.memory_layers.mamba2 import GatedLinearMixer
from lifelong.memory_layers.modules import HeadRMSNorm


class GLA(GatedLinearMixer):
    """GLA mixer: ``x [B, T, D] -> y [B, T, D]`` with a ``GLAState`` (``S [B, H, K, V]``).

    ``chunk_size`` must be a power of two (the torch chunked form halves chunks recursively).
    """

    sequence_op = staticmethod(gla)
    step_op = staticmethod(gla_step)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        gate_low_rank_dim: int = 16,
        gate_normalizer: float = 16.0,
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads)
        if chunk_size < 1 or chunk_size & (chunk_size - 1):
            raise ValueError(f"GLA needs a power-of-two chunk_size (e.g. 16, 32, 64), got {chunk_size}")
        if gate_low_rank_dim < 1 or gate_normalizer <= 0:
            raise ValueError(
                f"need gate_low_rank_dim >= 1 and gate_normalizer > 0, got {gate_low_rank_dim}, {gate_normalizer}"
            )
        self.chunk_size = chunk_size
        self.backend = backend
        self.gate_normalizer = float(gate_normalizer)
        d = d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.g_proj = nn.Sequential(nn.Linear(d, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, d))
        self.gate_proj = nn.Linear(d, d, bias=False)
        self.o_norm = HeadRMSNorm(num_heads, self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[..., D]`` -> q, k, g ``[..., H, K]``, v ``[..., H, V]``; g = logsigmoid(.) / normalizer."""
        q = self.split_heads(self.q_proj(x))
        k = self.split_heads(self.k_proj(x))
        v = self.split_heads(self.v_proj(x))
        g = self.split_heads(F.logsigmoid(self.g_proj(x))) / self.gate_normalizer
        return q, k, v, g
