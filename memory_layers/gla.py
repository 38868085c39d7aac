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

from kernels.gated_linear import gla, gla_step
from memory_layers.base import HeadRMSNorm, MemoryMixer
from memory_layers.mamba2 import GLAState


class GLA(MemoryMixer):
    """GLA mixer: ``x [B, T, D] -> y [B, T, D]`` with a ``GLAState`` (``S [B, H, K, V]``).

    ``chunk_size`` must be a power of two (the torch chunked form halves chunks recursively).
    """

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
        self.gk_proj = nn.Sequential(nn.Linear(d, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, d))
        self.gate_proj = nn.Linear(d, d, bias=False)
        self.o_norm = HeadRMSNorm(num_heads, self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., H, D / H]``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[..., D]`` -> q, k, g ``[..., H, K]``, v ``[..., H, V]``; g = logsigmoid(.) / normalizer."""
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        g = self._heads(F.logsigmoid(self.gk_proj(x))) / self.gate_normalizer
        return q, k, v, g

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o ``[..., H, V]``, x ``[..., D]`` -> y ``[..., D]`` (head RMSNorm, SiLU gate, o_proj)."""
        return self.o_proj(self.o_norm(o).flatten(-2) * F.silu(self.gate_proj(x)))

    def init_state(self, batch_size: int, device: torch.device | str) -> GLAState:
        K = V = self.head_dim
        return GLAState(torch.zeros(batch_size, self.num_heads, K, V, dtype=torch.float32, device=device))

    def forward_chunk(self, x: torch.Tensor, state: GLAState) -> tuple[torch.Tensor, GLAState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        q, k, v, g = self.project(x)
        o, S = gla(q, k, v, g, state.S, chunk_size=self.chunk_size, backend=self.backend)
        return self.output(o, x), GLAState(S)

    def step(self, x: torch.Tensor, state: GLAState) -> tuple[torch.Tensor, GLAState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); one recurrent step, equal to the chunked form."""
        q, k, v, g = self.project(x)
        o, S = gla_step(q, k, v, g, state.S, backend=self.backend)
        return self.output(o, x), GLAState(S)
