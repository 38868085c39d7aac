"""Gated linear family: linear attention, simple GLA (Mamba2) and GLA, one dispatching op each.

Every op goes through :func:`kernels.utils.guard.op_guard` (input checks, then the backend): the torch
chunked form (``chunk.py``) or step (``reference.py``) on CPU, Triton (``triton.py``, imported only
when asked for) on CUDA or under ``TRITON_INTERPRET=1``. Shapes and recurrences: see
``reference.py``. Every op returns ``(o, state)``; ``state=None`` starts from zeros.
"""
from __future__ import annotations

import torch

from lifelong.kernels.gated_linear.chunk import gla_chunk, linear_attn_chunk, simple_gla_chunk
from lifelong.kernels.gated_linear.reference import (
    GATE_LOG_MIN,
    LinearAttnState,
    clamp_gate,
    gla_reference,
    gla_step as _gla_step_torch,
    linear_attn_reference,
    linear_attn_step as _linear_attn_step_torch,
    simple_gla_reference,
    simple_gla_step as _simple_gla_step_torch,
)
from lifelong.kernels.utils.checks import check_gated_linear_inputs, check_linear_attn_inputs
from lifelong.kernels.utils.guard import op_guard

__all__ = [
    "GATE_LOG_MIN",
    "LinearAttnState",
    "gla",
    "gla_chunk",
    "gla_reference",
    "gla_step",
    "linear_attn",
    "linear_attn_chunk",
    "linear_attn_reference",
    "linear_attn_step",
    "simple_gla",
    "simple_gla_chunk",
    "simple_gla_reference",
    "simple_gla_step",
]


def _triton():
    """The Triton implementations, imported on first use (Triton may be absent on CPU machines)."""
    from lifelong.kernels.gated_linear import triton as triton_ops

    return triton_ops


def simple_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, chunk_size: int = 64, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t * scale``.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` (log decay, clamped to
    ``[GATE_LOG_MIN, 0]``), state ``[B, H, K, V]`` or None -> (o ``[B, T, H, V]``, state fp32).
    """
    if op_guard(backend, q, check_gated_linear_inputs, q, k, v, g, state) == "triton":
        return _triton().simple_gla_triton(q, k, v, clamp_gate(g), state, scale=scale, chunk_size=chunk_size)
    return simple_gla_chunk(q, k, v, g, state, scale=scale, chunk_size=chunk_size)


def gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, chunk_size: int = 64, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t * scale``.

    q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]`` or None ->
    (o ``[B, T, H, V]``, state fp32). The torch path needs a power-of-two ``chunk_size``.
    """
    if op_guard(backend, q, check_gated_linear_inputs, q, k, v, g, state, per_channel=True) == "triton":
        return _triton().gla_triton(q, k, v, clamp_gate(g), state, scale=scale, chunk_size=chunk_size)
    return gla_chunk(q, k, v, g, state, scale=scale, chunk_size=chunk_size)


def linear_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttnState | None,
    *, eps: float = 1e-6, chunk_size: int = 64, backend: str = "auto",
) -> tuple[torch.Tensor, LinearAttnState]:
    """Normalised linear attention ``o_t = S_t^T q_t / (z_t^T q_t + eps)`` (q, k feature-mapped).

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``LinearAttnState(S, z)`` or None.
    """
    if op_guard(backend, q, check_linear_attn_inputs, q, k, v, state) == "triton":
        return _triton().linear_attn_triton(q, k, v, state, eps=eps, chunk_size=chunk_size)
    return linear_attn_chunk(q, k, v, state, eps=eps, chunk_size=chunk_size)


def simple_gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]`` -> (o ``[B, H, V]``, state)."""
    if op_guard(backend, q, check_gated_linear_inputs, q, k, v, g, state, single_token=True) == "triton":
        return _triton().simple_gla_step_triton(q, k, v, clamp_gate(g), state, scale=scale)
    return _simple_gla_step_torch(q, k, v, g, state, scale=scale)


def gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k, g ``[B, H, K]``, v ``[B, H, V]`` -> (o ``[B, H, V]``, state)."""
    if op_guard(
        backend, q, check_gated_linear_inputs, q, k, v, g, state, per_channel=True, single_token=True
    ) == "triton":
        return _triton().gla_step_triton(q, k, v, clamp_gate(g), state, scale=scale)
    return _gla_step_torch(q, k, v, g, state, scale=scale)


def linear_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttnState | None,
    *, eps: float = 1e-6, backend: str = "auto",
) -> tuple[torch.Tensor, LinearAttnState]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]`` -> (o ``[B, H, V]``, state)."""
    if op_guard(backend, q, check_linear_attn_inputs, q, k, v, state, single_token=True) == "triton":
        return _triton().linear_attn_step_triton(q, k, v, state, eps=eps)
    return _linear_attn_step_torch(q, k, v, state, eps=eps)
