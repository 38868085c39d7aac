"""Delta-rule family: DeltaNet (``delta_rule``) and Gated DeltaNet (``gated_delta_rule``).

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t * scale

q, k ``[B, T, H, K]`` (k L2-normalised by the caller), v ``[B, T, H, V]``, g = log alpha and beta
``[B, T, H]``, state ``[B, H, K, V]`` fp32 (None = zeros). Every op returns ``(o, state)``.
Every op checks its inputs and picks the backend through ``kernels.utils.guard.op_guard``:
``backend="auto"`` runs the Triton kernels (``kernels/delta_rule/triton.py``, imported lazily) on
CUDA tensors and the chunked torch form otherwise.
"""
from __future__ import annotations

import torch

from lifelong.kernels.delta_rule.chunk import gated_delta_rule_chunk
from lifelong.kernels.delta_rule.reference import gated_delta_rule_reference
from lifelong.kernels.delta_rule.reference import gated_delta_rule_step as _gated_delta_rule_step_torch
from lifelong.kernels.utils.checks import check_delta_rule_inputs
from lifelong.kernels.utils.guard import op_guard
from lifelong.kernels.utils.layout import zero_state

__all__ = [
    "delta_rule",
    "delta_rule_step",
    "gated_delta_rule",
    "gated_delta_rule_chunk",
    "gated_delta_rule_reference",
    "gated_delta_rule_step",
]


def _zeros_gate(beta: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """The Triton kernels always take a gate: g = 0 (alpha = 1) is DeltaNet exactly."""
    return torch.zeros_like(beta, dtype=torch.float32) if g is None else g


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule over a sequence: o ``[B, T, H, V]``, state ``[B, H, K, V]`` fp32."""
    if op_guard(backend, q, check_delta_rule_inputs, q, k, v, g, beta, state) == "triton":
        from lifelong.kernels.delta_rule.triton import gated_delta_rule_triton

        if state is None:
            state = zero_state(k, v)
        return gated_delta_rule_triton(
            q, k, v, _zeros_gate(beta, g), beta, state, scale=scale, chunk_size=chunk_size
        )
    return gated_delta_rule_chunk(q, k, v, g, beta, state, scale=scale, chunk_size=chunk_size)


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]``, g, beta ``[B, H]`` -> o ``[B, H, V]``, state."""
    resolved = op_guard(backend, q, check_delta_rule_inputs, q, k, v, g, beta, state, single_token=True)
    if state is None:
        state = zero_state(k, v)
    if resolved == "triton":
        from lifelong.kernels.delta_rule.triton import gated_delta_rule_step_triton

        return gated_delta_rule_step_triton(q, k, v, _zeros_gate(beta, g), beta, state, scale=scale)
    return _gated_delta_rule_step_torch(q, k, v, g, beta, state, scale=scale)


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeltaNet: ``gated_delta_rule`` with no decay (alpha = 1)."""
    return gated_delta_rule(q, k, v, None, beta, state, scale=scale, chunk_size=chunk_size, backend=backend)


def delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeltaNet single token: ``gated_delta_rule_step`` with no decay."""
    return gated_delta_rule_step(q, k, v, None, beta, state, scale=scale, backend=backend)
