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
from lifelong.memory_layers.modules import (HeadRMSNorm, ParamCache, eager_acting, mamba_a_log, mamba_dt_bias,
                                            packed_linears)
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
        self._in_cache, self._out_cache = ParamCache(), ParamCache()  # the eager acting step's packed weights

    # ---- pieces shared by forward_chunk and step ---------------------------------------------
    def _in_linears(self) -> list[nn.Linear]:
        """The projections of the input, in the order of the packed projection."""
        linears = [self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.beta_proj]
        return linears + [self.dt_proj] if self.use_gate else linears

    def _project(self, x: torch.Tensor):
        """x ``[..., D]`` -> q, k, v ``[..., H, K]``, g ``[..., H]`` or None, beta ``[..., H]`` and the
        output gate's pre-activation ``[..., D]``. One matmul against the concatenated weights (the
        same products as one Linear each, in one pass over x and one in the backward)."""
        D, H = self.d_model, self.num_heads
        linears = self._in_linears()
        weight = torch.cat([lin.weight for lin in linears])
        bias = [x.new_zeros(4 * D), self.beta_proj.bias] + ([self.dt_bias] if self.use_gate else [])
        y = F.linear(x, weight, torch.cat(bias))
        qkv, gate, beta, dt = y.split([3 * D, D, H, y.shape[-1] - 4 * D - H], dim=-1)
        qkv = F.silu(qkv).unflatten(-1, (3, H, self.head_dim))
        qk = F.normalize(qkv[..., :2, :, :], dim=-1, eps=1e-6)
        q, k, v = qk[..., 0, :, :], qk[..., 1, :, :], qkv[..., 2, :, :]
        beta = torch.sigmoid(beta)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = None
        if self.use_gate:  # softplus(dt_proj(x) + dt_bias): dt_bias is the packed bias of dt_proj's rows
            g = (-self.A_log.exp() * F.softplus(dt)).clamp_min(LOG_DECAY_MIN)
        return q, k, v, g, beta, gate

    def _output(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Head outputs o ``[..., H, V]`` and the gate's pre-activation ``[..., D]`` -> y ``[..., D]``."""
        gate = F.silu(gate).view(o.shape)
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
        q, k, v, g, beta, gate = self._project(x)
        o, S = gated_delta_rule(
            q, k, v, g, beta, state.S, chunk_size=self.chunk_size, backend=self.backend
        )
        return self._output(o.to(x.dtype), gate), DeltaState(S)

    def step(self, x: torch.Tensor, state: DeltaState) -> tuple[torch.Tensor, DeltaState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); equals ``forward(x[:, None], state)``."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, {self.d_model}] (one token), got {tuple(x.shape)}")
        self._check_state(x, state)
        if eager_acting() and x.device.type == "cpu":
            return self._acting_step(x, state.S)
        q, k, v, g, beta, gate = self._project(x)
        o, S = gated_delta_rule_step(q, k, v, g, beta, state.S, backend=self.backend)
        return self._output(o.to(x.dtype), gate), DeltaState(S)

    def _acting_step(self, x: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, DeltaState]:
        """:meth:`step` in eager inference mode with fewer ops (the same arithmetic): every input
        projection in one matmul (packed weights, ``dt_bias`` folded in), q and k normalised together,
        the delta rule inline, the head norm's weight applied with the gate."""
        B, D, H, K = x.shape[0], self.d_model, self.num_heads, self.head_dim
        y = packed_linears(x, self._in_linears(), self._in_cache, {5: self.dt_bias} if self.use_gate else None)
        qkv, gate, beta, dt = y.split([3 * D, D, H, y.shape[1] - 4 * D - H], dim=1)
        qkv = F.silu(qkv).view(B, 3, H, K)
        qk = qkv[:, :2]
        qk = qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min_(1e-6)
        q, k = qk[:, 0].unsqueeze(2), qk[:, 1].unsqueeze(2)  # [B, H, 1, K]
        beta = torch.sigmoid(beta)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        if self.use_gate:  # S <- alpha S, alpha = exp(g), g = -exp(A_log) softplus(dt + dt_bias)
            g = torch.mul(F.softplus(dt), self.A_log.exp().neg_()).clamp_min_(LOG_DECAY_MIN)
            S = S * g.exp_().view(B, H, 1, 1)
        u = (qkv[:, 2].unsqueeze(2) - k @ S).mul_(beta.view(B, H, 1, 1))  # beta (v - S^T k)  [B, H, 1, V]
        S = torch.addcmul(S, k.transpose(2, 3), u)  # S + k u^T
        o = (q @ S).view(B, H, K).mul_(K**-0.5)
        o = F.rms_norm(o, (K,), None, self.o_norm.eps).mul_(F.silu(gate).view(B, H, K) * self.o_norm.weight)
        return packed_linears(o.view(B, D), [self.o_proj], self._out_cache), DeltaState(S)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, use_gate={self.use_gate}, "
            f"allow_neg_eigval={self.allow_neg_eigval}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )
