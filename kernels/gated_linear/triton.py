"""Triton path of the gated linear family: simple GLA (Mamba2), GLA and linear attention.

    S_t = e^{g_t} S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
    (GLA: S_t = Diag(e^{g_t}) S_{t-1} + k_t v_t^T with g_t per key channel)

Chunked forward and backward (autograd Functions over the shared kernels of
``kernels/common/``) and a fused single-token step for acting. Linear attention is simple
GLA without decay on ``[v, 1]``: the extra value column carries the normaliser z.

GLA's intra-chunk scores carry a per-channel decay, so they are summed over ``[BT, BT, BK]`` blocks
rather than one ``tl.dot``; it runs on chunks of ``GLA_CHUNK`` = 16 tokens whatever ``chunk_size``
says (the chunk size does not change the result). Gates are clamped to
``[GATE_LOG_MIN, 0]`` as in ``kernels/gated_linear/reference.py``.

Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` (log decay <= 0; GLA
``[B, T, H, K]``), state
``[B, H, K, V]`` fp32; the step ops take q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]``.
Every op returns ``(o, final_state)``: o in the dtype of v, the state fp32.
"""
from __future__ import annotations

import torch

from lifelong.kernels.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
from lifelong.kernels.common.chunk_o import chunk_bwd_dqk, chunk_bwd_dv, chunk_fwd_o
from lifelong.kernels.common.cumsum import chunk_local_cumsum
from lifelong.kernels.common.fused_step import fused_step
from lifelong.kernels.gated_linear.reference import LinearAttnState, clamp_gate, zero_linear_attn_state
from lifelong.kernels.utils.backend import require_triton_device
from lifelong.kernels.utils.checks import (
    check_gated_linear_inputs,
    check_linear_attn_inputs,
    check_triton_chunk_size,
)
from lifelong.kernels.utils.layout import zero_state

__all__ = [
    "simple_gla_triton",
    "simple_gla_step_triton",
    "gla_triton",
    "gla_step_triton",
    "linear_attn_triton",
    "linear_attn_step_triton",
]


GLA_CHUNK = 16


class ChunkGatedLinearFunction(torch.autograd.Function):
    """Chunked simple GLA (g ``[B, T, H]``), GLA (g ``[B, T, H, K]``, ``per_channel``) or no decay
    (g None). Gradients for q, k, v, g and the initial state."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale: float, chunk_size: int, per_channel: bool):
        gc = chunk_local_cumsum(g, chunk_size) if g is not None else None
        hs, ht, _ = chunk_fwd_h(k, v, gc, h0, chunk_size, per_channel=per_channel)
        o = chunk_fwd_o(q, k, v, gc, hs, scale, chunk_size, v.dtype, per_channel=per_channel)
        ctx.save_for_backward(q, k, v, gc, h0)
        ctx.scale, ctx.chunk_size, ctx.per_channel = scale, chunk_size, per_channel
        ctx.has_g = g is not None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0 = ctx.saved_tensors
        scale, BT, pc = ctx.scale, ctx.chunk_size, ctx.per_channel
        do = do.contiguous()
        hs, _, _ = chunk_fwd_h(k, v, gc, h0, BT, per_channel=pc)  # recompute the chunk states
        dhs, dh0, _ = chunk_bwd_dh(q, k, gc, do, dht.contiguous(), scale, BT, per_channel=pc)
        dv = chunk_bwd_dv(q, k, gc, do, dhs, scale, BT, per_channel=pc)
        dq, dk, _, dgc = chunk_bwd_dqk(q, k, v, gc, hs, dhs, do, scale, BT, per_channel=pc)
        dg = chunk_local_cumsum(dgc, BT, reverse=True) if ctx.has_g else None
        return (
            dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg,
            dh0 if h0 is not None else None, None, None, None,
        )


def simple_gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked simple GLA: o ``[B, T, H, V]`` (dtype of v), final state ``[B, H, K, V]`` fp32."""
    require_triton_device(q)
    check_gated_linear_inputs(q, k, v, g, state, counterpart="simple_gla_step_triton")
    check_triton_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    h0 = state.float().contiguous() if state is not None else None
    return ChunkGatedLinearFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(),
        clamp_gate(g).contiguous() if g is not None else None, h0, scale, chunk_size, False,
    )


def gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA, g ``[B, T, H, K]``: o ``[B, T, H, V]`` (dtype of v), state ``[B, H, K, V]`` fp32.

    Runs on chunks of ``GLA_CHUNK`` tokens; ``chunk_size`` is checked and otherwise unused."""
    require_triton_device(q)
    check_gated_linear_inputs(q, k, v, g, state, per_channel=True, counterpart="gla_step_triton")
    check_triton_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    h0 = state.float().contiguous() if state is not None else None
    return ChunkGatedLinearFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), clamp_gate(g).contiguous(), h0, scale, GLA_CHUNK, True,
    )


def gla_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of GLA: q, k, g ``[B, H, K]``, v ``[B, H, V]`` -> o ``[B, H, V]``, state fp32."""
    require_triton_device(q)
    check_gated_linear_inputs(q, k, v, g, state, per_channel=True, single_token=True, counterpart="gla_triton")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if state is None:
        state = zero_state(k, v)
    if _needs_grad(q, k, v, g, state):
        o, s = gla_triton(q[:, None], k[:, None], v[:, None], g[:, None], state, scale=scale)
        return o[:, 0], s
    return fused_step(q, k, v, clamp_gate(g), None, state.float(), scale)


def _needs_grad(*xs: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def simple_gla_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]`` -> o ``[B, H, V]``, state fp32.

    Fused kernel when no gradient is needed (acting); the chunked Function on T = 1 otherwise."""
    require_triton_device(q)
    check_gated_linear_inputs(q, k, v, g, state, single_token=True, counterpart="simple_gla_triton")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if state is None:
        state = zero_state(k, v)
    if _needs_grad(q, k, v, g, state):
        o, s = simple_gla_triton(
            q[:, None], k[:, None], v[:, None], g[:, None] if g is not None else None, state, scale=scale, chunk_size=16
        )
        return o[:, 0], s
    return fused_step(q, k, v, clamp_gate(g) if g is not None else None, None, state.float(), scale)


def _augment(v: torch.Tensor, S: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[v, 1] and [S, z]: the normaliser as one more value column."""
    v_aug = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    s_aug = torch.cat([S.float(), z.float().unsqueeze(-1)], dim=-1)
    return v_aug, s_aug


def _split(o_aug: torch.Tensor, s_aug: torch.Tensor, eps: float, dtype: torch.dtype, state_type):
    o = o_aug[..., :-1].float() / (o_aug[..., -1:].float() + eps)
    return o.to(dtype), state_type(s_aug[..., :-1], s_aug[..., -1])


def linear_attn_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state,
    *,
    eps: float = 1e-6,
    chunk_size: int = 64,
):
    """Linear attention on feature-mapped q, k: o = S_t^T q_t / (z_t^T q_t + eps), S, z inclusive of t.

    ``state`` is ``LinearAttnState(S [B, H, K, V], z [B, H, K])`` fp32 or None (zeros). Returns
    (o ``[B, T, H, V]``, LinearAttnState). Runs simple GLA without decay on ``[v, 1]``."""
    require_triton_device(q)
    check_linear_attn_inputs(q, k, v, state, counterpart="linear_attn_step_triton")
    check_triton_chunk_size(chunk_size)
    state = zero_linear_attn_state(k, v) if state is None else state
    v_aug, s_aug = _augment(v, state[0], state[1])
    o_aug, s_new = ChunkGatedLinearFunction.apply(
        q.contiguous(), k.contiguous(), v_aug.contiguous(), None, s_aug.contiguous(), 1.0, chunk_size, False
    )
    return _split(o_aug, s_new, eps, v.dtype, LinearAttnState)


def linear_attn_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state,
    *,
    eps: float = 1e-6,
):
    """One token of linear attention: q, k ``[B, H, K]``, v ``[B, H, V]`` -> o ``[B, H, V]``, state."""
    require_triton_device(q)
    check_linear_attn_inputs(q, k, v, state, single_token=True, counterpart="linear_attn_triton")
    state = zero_linear_attn_state(k, v) if state is None else state
    if _needs_grad(q, k, v, state[0], state[1]):
        o, s = linear_attn_triton(q[:, None], k[:, None], v[:, None], state, eps=eps, chunk_size=16)
        return o[:, 0], s
    v_aug, s_aug = _augment(v, state[0], state[1])
    o_aug, s_new = fused_step(q, k, v_aug, None, None, s_aug, 1.0)
    return _split(o_aug, s_new, eps, v.dtype, LinearAttnState)
