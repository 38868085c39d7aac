"""Linear attention (Katharopoulos et al. 2020) as a memory mixer: a state that never forgets.

    phi(x) = elu(x) + 1,  S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t),
    o_t = S_t^T phi(q_t) / (z_t^T phi(q_t) + eps)

The state ``LinearAttnState(S [B, H, K, V], z [B, H, K])`` only grows in norm: the baseline for
"forgets by nothing". The output is per-head RMSNorm and a projection. The kernel is
``kernels.gated_linear.linear_attn``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lifelong.kernels.gated_linear import LinearAttnState, linear_attn, linear_attn_step
from lifelong.kernels.utils.feature_maps import elu_feature_map
from lifelong.memory_layers.modules import HeadRMSNorm
from lifelong.memory_layers.protocol import MemoryMixer


class LinearAttention(MemoryMixer):
    """Normalised linear attention mixer: ``x [B, T, D] -> y [B, T, D]`` with a ``LinearAttnState``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        eps: float = 1e-6,
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads)
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (it keeps the normaliser away from 0), got {eps}")
        self.eps = float(eps)
        self.chunk_size = chunk_size
        self.backend = backend
        d = d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_norm = HeadRMSNorm(num_heads, self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[..., D]`` -> phi(q), phi(k) ``[..., H, K]`` (positive), v ``[..., H, V]``."""
        q = elu_feature_map(self.split_heads(self.q_proj(x)))
        k = elu_feature_map(self.split_heads(self.k_proj(x)))
        return q, k, self.split_heads(self.v_proj(x))

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """o ``[..., H, V]`` -> y ``[..., D]``."""
        return self.o_proj(self.o_norm(o).flatten(-2))

    def init_state(self, batch_size: int, device: torch.device | str) -> LinearAttnState:
        K = V = self.head_dim
        S = torch.zeros(batch_size, self.num_heads, K, V, dtype=torch.float32, device=device)
        return LinearAttnState(S, S.new_zeros(batch_size, self.num_heads, K))

    def forward_chunk(self, x: torch.Tensor, state: LinearAttnState) -> tuple[torch.Tensor, LinearAttnState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        q, k, v = self.project(x)
        o, state = linear_attn(q, k, v, state, eps=self.eps, chunk_size=self.chunk_size, backend=self.backend)
        return self.output(o), state

    def step(self, x: torch.Tensor, state: LinearAttnState) -> tuple[torch.Tensor, LinearAttnState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); one recurrent step, equal to the chunked form."""
        q, k, v = self.project(x)
        o, state = linear_attn_step(q, k, v, state, eps=self.eps, backend=self.backend)
        return self.output(o), state

    def state_metrics(self, state: LinearAttnState) -> dict[str, float]:
        """The base metrics of S plus the normaliser's norm (grows linearly with tokens seen)."""
        metrics = super().state_metrics(state)
        metrics["normalizer_norm"] = float(state.z.float().norm(dim=-1).mean())
        return metrics
