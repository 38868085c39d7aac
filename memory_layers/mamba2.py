"""Mamba2 as a memory mixer: a linear state with a scalar, data-dependent decay per head.

    S_t = alpha_t S_{t-1} + k_t v_t^T,   alpha_t = exp(-Delta_t A) = exp(g_t),   o_t = S_t^T q_t * K^-1/2

with Delta_t = softplus(dt_proj(x_t) + dt_bias) and A = exp(A_log) > 0 per head, so alpha_t is in
(0, 1). q and k go through SiLU and are L2-normalised per head. The output is per-head RMSNorm,
a SiLU gate from x, and a projection. The kernel is ``kernels.gated_linear.simple_gla``.

Subclasses (Palimpsa) reuse :meth:`project` and :meth:`output`; keep their signatures.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lifelong.kernels.gated_linear import simple_gla, simple_gla_step
from lifelong.memory_layers.modules import HeadRMSNorm, mamba_a_log, mamba_dt_bias
from lifelong.memory_layers.protocol import MemoryMixer


class GLAState(NamedTuple):
    """The state of the gated linear mixers: ``S [B, H, K, V]`` fp32."""

    S: torch.Tensor


class GatedLinearMixer(MemoryMixer):
    """Plumbing shared by the gated linear mixers (Mamba2, GLA): ``project`` -> kernel op -> ``output``.

    Subclasses build ``gate_proj``, ``o_norm`` and ``o_proj``, define ``project(x) -> (q, k, v, g)``
    and name their kernel ops in ``sequence_op`` / ``step_op``; the state is a ``GLAState``.
    """

    sequence_op = staticmethod(simple_gla)
    step_op = staticmethod(simple_gla_step)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o ``[..., H, V]``, x ``[..., D]`` -> y ``[..., D]`` (head RMSNorm, SiLU gate, o_proj)."""
        return self.o_proj(self.o_norm(o).flatten(-2) * F.silu(self.gate_proj(x)))

    def init_state(self, batch_size: int, device: torch.device | str) -> GLAState:
        K = V = self.head_dim
        return GLAState(torch.zeros(batch_size, self.num_heads, K, V, dtype=torch.float32, device=device))

    def forward_chunk(self, x: torch.Tensor, state: GLAState) -> tuple[torch.Tensor, GLAState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        q, k, v, g = self.project(x)
        o, S = self.sequence_op(q, k, v, g, state.S, chunk_size=self.chunk_size, backend=self.backend)
        return self.output(o, x), GLAState(S)

    def step(self, x: torch.Tensor, state: GLAState) -> tuple[torch.Tensor, GLAState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); one recurrent step, equal to the chunked form."""
        q, k, v, g = self.project(x)
        o, S = self.step_op(q, k, v, g, state.S, backend=self.backend)
        return self.output(o, x), GLAState(S)


class Mamba2(GatedLinearMixer):
    """Mamba2 / simple-GLA mixer: ``x [B, T, D] -> y [B, T, D]`` with a ``GLAState``.

    Args: ``dt_min``/``dt_max`` bound the initial softplus(dt_bias) (log-uniform); ``a_min``/``a_max``
    bound the initial A = exp(A_log) (uniform); ``chunk_size`` and ``backend`` go to the kernel.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        a_min: float = 1.0,
        a_max: float = 16.0,
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0 < a_min <= a_max:
            raise ValueError(f"need 0 < a_min <= a_max, got a_min={a_min}, a_max={a_max}")
        self.chunk_size = chunk_size
        self.backend = backend
        d, H = d_model, num_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.dt_proj = nn.Linear(d, H, bias=False)  # dt_bias is its bias
        self.dt_bias = nn.Parameter(mamba_dt_bias(H, dt_min, dt_max))
        self.A_log = nn.Parameter(mamba_a_log(H, a_min, a_max))
        self.gate_proj = nn.Linear(d, d, bias=False)
        self.o_norm = HeadRMSNorm(H, self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[..., D]`` (``[B, T, D]`` or one token ``[B, D]``) -> q, k ``[..., H, K]``,
        v ``[..., H, V]``, g ``[..., H]`` = log alpha = -exp(A_log) * softplus(dt_proj(x) + dt_bias)."""
        q = F.normalize(F.silu(self.split_heads(self.q_proj(x))), dim=-1)
        k = F.normalize(F.silu(self.split_heads(self.k_proj(x))), dim=-1)
        v = self.split_heads(self.v_proj(x))
        g = -self.A_log.exp() * F.softplus(self.dt_proj(x) + self.dt_bias)
        return q, k, v, g
