"""Gated DeltaNet (and DeltaNet with ``use_gate=False``) as a memory mixer.

Per head: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t / sqrt(K):
one online gradient step on ||S^T k_t - v_t||^2 with step size beta_t, after a decay alpha_t.
Projections: q, k, v = SiLU(linear(x)) with q, k L2-normalised per head; beta = sigmoid(beta_proj(x))
(x2 with ``allow_neg_eigval``, so I - beta k k^T may have a negative eigenvalue); log alpha =
g = -exp(A_log) * softplus(dt_proj(x) + dt_bias) (Mamba2 parametrisation). The head outputs go
through a per-head RMSNorm, a SiLU output gate and ``o_proj``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.kernels.delta_rule import gated_delta_rule, gated_delta_rule_step
from lifelong.kernels.utils.backend import BACKENDS
from lifelong.memory_layers.modules import HeadRMSNorm, mamba_a_log, mamba_dt_bias
from lifelong.memory_layers.protocol import MemoryMixer

#: Floor of the per-token log decay. exp(-20) ~ 2e-9 already forgets everything; the floor keeps
#: the in-chunk cumulative sums small enough for fp32 differences to stay accurate.
LOG_DECAY_MIN = -20.0


class DeltaState(NamedTuple):
    """The fast-weight memory of every head: S ``[B, H, K, V]`` fp32."""

    S: torch.Tensor


class GatedDeltaNet(MemoryMixer):
    """Gated delta-rule mixer: x ``[B, T, D]`` -> y ``[B, T, D]`` with state ``DeltaState``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        use_gate: bool = True,
        allow_neg_eigval: bool = False,
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.use_gate = use_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.chunk_size = chunk_size
        self.backend = backend
        d, h = d_model, num_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.beta_proj = nn.Linear(d, h)
        if use_gate:
            self.dt_proj = nn.Linear(d, h, bias=False)
            self.A_log = nn.Parameter(mamba_a_log(h))
            self.dt_bias = nn.Parameter(mamba_dt_bias(h))
        self.gate_proj = nn.Linear(d, d, bias=False)  # SiLU output gate
        self.o_norm = HeadRMSNorm(h, self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    # ---- pieces shared by forward_chunk and step ---------------------------------------------
    def _project(self, x: torch.Tensor):
        """x ``[..., D]`` -> q, k, v ``[..., H, K]``, g ``[..., H]`` or None, beta ``[..., H]``."""
        q = F.normalize(self.split_heads(F.silu(self.q_proj(x))), dim=-1, eps=1e-6)
        k = F.normalize(self.split_heads(F.silu(self.k_proj(x))), dim=-1, eps=1e-6)
        v = self.split_heads(F.silu(self.v_proj(x)))
        beta = torch.sigmoid(self.beta_proj(x))
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = None
        if self.use_gate:
            g = -self.A_log.exp() * F.softplus(self.dt_proj(x) + self.dt_bias)
            g = g.clamp_min(LOG_DECAY_MIN)
        return q, k, v, g, beta

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Head outputs o ``[..., H, V]`` and input x ``[..., D]`` -> y ``[..., D]``."""
        gate = F.silu(self.gate_proj(x)).view(o.shape)
        return self.o_proj((self.o_norm(o) * gate).flatten(-2))

    # ---- protocol ----------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device | str) -> DeltaState:
        h, d = self.num_heads, self.head_dim
        return DeltaState(torch.zeros(batch_size, h, d, d, dtype=torch.float32, device=device))

    def _check_state(self, x: torch.Tensor, state: DeltaState) -> None:
        expected = (x.shape[0], self.num_heads, self.head_dim, self.head_dim)
        if not isinstance(state, DeltaState) or tuple(state.S.shape) != expected:
            got = tuple(state.S.shape) if isinstance(state, DeltaState) else type(state).__name__
            raise ValueError(f"state must be DeltaState(S {expected}) from init_state(batch_size), got {got}")

    def forward_chunk(self, x: torch.Tensor, state: DeltaState) -> tuple[torch.Tensor, DeltaState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, T, {self.d_model}], got {tuple(x.shape)}")
        self._check_state(x, state)
        q, k, v, g, beta = self._project(x)
        o, S = gated_delta_rule(
            q, k, v, g, beta, state.S, chunk_size=self.chunk_size, backend=self.backend
        )
        return self._output(o.to(x.dtype), x), DeltaState(S)

    def step(self, x: torch.Tensor, state: DeltaState) -> tuple[torch.Tensor, DeltaState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); equals ``forward(x[:, None], state)``."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, {self.d_model}] (one token), got {tuple(x.shape)}")
        self._check_state(x, state)
        q, k, v, g, beta = self._project(x)
        o, S = gated_delta_rule_step(q, k, v, g, beta, state.S, backend=self.backend)
        return self._output(o.to(x.dtype), x), DeltaState(S)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, use_gate={self.use_gate}, "
            f"allow_neg_eigval={self.allow_neg_eigval}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )
