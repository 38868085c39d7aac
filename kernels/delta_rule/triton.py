"""Triton path of the delta-rule family: DeltaNet (g None) and Gated DeltaNet.

    S_t = e^{g_t} (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale * S_t^T q_t

Chunked with the WY/UT transform: inside a chunk, with Gamma_ij = e^(gc_i - gc_j),
A = tril(diag(beta) K K^T * Gamma, -1), T = (I + A)^-1, W = T diag(beta e^gc) K, U = T diag(beta) V;
then V' = U - W h_n and the chunk core of ``kernels/common/`` (states, output, backward)
applies with V'. The WY kernels here build T (forward substitution), W, U, and back-propagate
through them (dA = -T^T dT T^T).

Shapes: q, k ``[B, T, H, K]`` (k L2-normalised by the caller), v ``[B, T, H, V]``, g, beta
``[B, T, H]``, state ``[B, H, K, V]`` fp32. Returns ``(o, final_state)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
from lifelong.kernels.common.chunk_o import chunk_bwd_dqk, chunk_bwd_dv, chunk_fwd_o
from lifelong.kernels.common.cumsum import chunk_local_cumsum
from lifelong.kernels.common.fused_step import fused_step
from lifelong.kernels.utils.autotune import warp_configs
from lifelong.kernels.utils.backend import require_triton_device
from lifelong.kernels.utils.checks import check_delta_rule_inputs, check_triton_chunk_size
from lifelong.kernels.utils.layout import zero_state
from lifelong.kernels.utils.ops import masked_exp, matmul_dtype, mm
from lifelong.kernels.utils.tiles import block_size

__all__ = ["gated_delta_rule_triton", "gated_delta_rule_step_triton"]

_SUB = 16  # side of the diagonal blocks inverted by forward substitution


@triton.autotune(configs=warp_configs((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV"])
@triton.jit
def _wy_fwd_kernel(
    k, v, beta, gc, Tm, w, u, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SUB: tl.constexpr, NB: tl.constexpr, LOG_NB: tl.constexpr,
    USE_G: tl.constexpr, MM: tl.constexpr,
):
    """Grid (NT, B*H): T = (I + A)^-1 (stored ``[B, T, H, BT]`` fp32, also the scratch), W, U.

    The inverse: the NB diagonal SUB x SUB blocks by forward substitution (all blocks at once,
    SUB - 1 steps); then with D their block-diagonal inverse and N = D A_off (strictly block-lower,
    N^NB = 0), (I + A)^-1 = (I + N)^-1 D = (I - N)(I + N^2)(I + N^4)... D: 2 LOG_NB fp32 dots
    (3xTF32)."""
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = tl.arange(0, BT)
    o_t = i_n * BT + o_i
    m_t = o_t < T
    row = (i_b * T + o_t) * H + i_h
    b_beta = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_A += mm(b_k, tl.trans(b_k), MM)
    m_A = o_i[:, None] > o_i[None, :]
    b_e = tl.full([BT], 1.0, dtype=tl.float32)
    if USE_G:
        b_g = tl.load(gc + row, mask=m_t, other=0.0)
        b_e = tl.exp(b_g)
        b_A = b_A * masked_exp(b_g[:, None] - b_g[None, :], m_A)
    b_A = tl.where(m_A, b_A * b_beta[:, None], 0.0)
    # diagonal blocks, through the scratch rows of Tm: X = -A_blk, then row r of (I + A_blk)^-1 - I
    # is -A_r - sum_{j<r} A_rj (row j), all NB blocks at once
    same = (o_i[:, None] // SUB) == (o_i[None, :] // SUB)
    p_T = Tm + row[:, None] * BT + o_i[None, :]
    tl.store(p_T, b_A, mask=m_t[:, None] & same)
    tl.debug_barrier()
    o_r = tl.arange(0, SUB)
    i3 = tl.arange(0, NB)[:, None, None] * SUB + o_r[None, :, None]  # chunk row of [block, row, col]
    j3 = tl.arange(0, NB)[:, None, None] * SUB + o_r[None, None, :]  # chunk column
    p3 = Tm + ((i_b * T + i_n * BT + i3) * H + i_h) * BT + j3
    m3 = (i_n * BT + i3 < T) & (j3 >= 0)
    b_X = -tl.load(p3, mask=m3, other=0.0)
    r3 = o_r[None, :, None]
    for r in range(1, SUB):
        b_a = tl.sum(tl.where(r3 == r, b_X, 0.0), 1)
        b_a = b_a + tl.sum(b_a[:, :, None] * b_X, 1)
        b_X = tl.where(r3 == r, b_a[:, None, :], b_X)
    b_X += tl.where(r3 == o_r[None, None, :], 1.0, 0.0)
    tl.debug_barrier()
    tl.store(p3, b_X, mask=m3)
    tl.debug_barrier()
    b_T = tl.load(p_T, mask=m_t[:, None] & same, other=0.0)
    if NB > 1:
        eye = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
        b_N = tl.dot(b_T, tl.where(same, 0.0, b_A), input_precision="tf32x3")
        b_P = eye - b_N
        for _ in tl.static_range(LOG_NB - 1):
            b_N = tl.dot(b_N, b_N, input_precision="tf32x3")
            b_P = tl.dot(b_P, eye + b_N, input_precision="tf32x3")
        b_T = tl.dot(b_P, b_T, input_precision="tf32x3")
    tl.debug_barrier()
    tl.store(p_T, b_T, mask=m_t[:, None])
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_w = mm(b_T, (b_k * (b_beta * b_e)[:, None]), MM)
        tl.store(w + row[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty), mask=m_tk)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_u = mm(b_T, (b_v * b_beta[:, None]), MM)
        tl.store(u + row[:, None] * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_tv)


@triton.autotune(configs=warp_configs((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV"])
@triton.jit
def _wy_bwd_kernel(
    k, v, beta, gc, Tm, dw, du, dk_in, dk, dv, dbeta, dg, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, MM: tl.constexpr,
):
    """Grid (NT, B*H): from dW, dU to dk (added to ``dk_in``), dv, dbeta, and -v.dv into dg."""
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = tl.arange(0, BT)
    o_t = i_n * BT + o_i
    m_t = o_t < T
    row = (i_b * T + o_t) * H + i_h
    b_beta = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    b_T = tl.load(Tm + row[:, None] * BT + o_i[None, :], mask=m_t[:, None], other=0.0)
    m_A = o_i[:, None] > o_i[None, :]
    b_e = tl.full([BT], 1.0, dtype=tl.float32)
    if USE_G:
        b_g = tl.load(gc + row, mask=m_t, other=0.0)
        b_e = tl.exp(b_g)
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_du = tl.load(du + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_dT += mm(b_du, tl.trans(b_v * b_beta[:, None]), MM)
        b_dvb = mm(tl.trans(b_T), b_du, MM)
        b_dv = b_dvb * b_beta[:, None]
        tl.store(dv + row[:, None] * V + o_v[None, :], b_dv, mask=m_tv)
        b_dbeta += tl.sum(b_dvb * b_v, 1)
        b_dg -= tl.sum(b_dv * b_v, 1)
    b_KK = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_dw = tl.load(dw + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_dT += mm(b_dw, tl.trans(b_k * (b_beta * b_e)[:, None]), MM)
        b_dkb = mm(tl.trans(b_T), b_dw, MM)
        b_dbeta += tl.sum(b_dkb * b_k, 1) * b_e
        b_KK += mm(b_k, tl.trans(b_k), MM)
    # dA = -T^T dT T^T on the strict lower triangle; A_ij = beta_i (k_i . k_j) Gamma_ij
    b_dA = mm(b_dT, tl.trans(b_T), MM)
    b_dA = -mm(tl.trans(b_T), b_dA, MM)
    if USE_G:
        b_dA = b_dA * masked_exp(b_g[:, None] - b_g[None, :], m_A)
    b_dA = tl.where(m_A, b_dA, 0.0)
    b_dbeta += tl.sum(b_dA * b_KK, 1)
    b_M = b_dA * b_beta[:, None]
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_dw = tl.load(dw + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_dk = tl.load(dk_in + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_dk += mm(tl.trans(b_T), b_dw, MM) * (b_beta * b_e)[:, None]
        b_dk += mm(b_M, b_k, MM) + mm(tl.trans(b_M), b_k, MM)
        tl.store(dk + row[:, None] * K + o_k[None, :], b_dk, mask=m_tk)
    tl.store(dbeta + row, b_dbeta, mask=m_t)
    if USE_G:
        tl.store(dg + row, b_dg, mask=m_t)


def wy_fwd(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T ``[B, T, H, BT]`` fp32 (per chunk, row t of (I + A)^-1), W ``[B, T, H, K]``, U ``[B, T, H, V]``."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK, BV = block_size(K), block_size(V)
    Tm = torch.empty(B, T, H, BT, dtype=torch.float32, device=k.device)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    _wy_fwd_kernel[(NT, B * H)](
        k, v, beta, gc if gc is not None else beta, Tm, w, u, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, SUB=_SUB, NB=BT // _SUB, LOG_NB=(BT // _SUB).bit_length() - 1,
        USE_G=gc is not None, MM=matmul_dtype(k),
    )
    return Tm, w, u


def wy_bwd(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, Tm: torch.Tensor,
    dw: torch.Tensor, du: torch.Tensor, dk_in: torch.Tensor, chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dk (``dk_in`` plus the WY terms), dv, dbeta and the -v.dv gate terms, all fp32."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK, BV = block_size(K), block_size(V)
    dk = torch.empty_like(dk_in)
    dv = torch.empty(B, T, H, V, dtype=torch.float32, device=k.device)
    dbeta = torch.empty(B, T, H, dtype=torch.float32, device=k.device)
    dg = torch.empty_like(dbeta) if gc is not None else None
    _wy_bwd_kernel[(NT, B * H)](
        k, v, beta, gc if gc is not None else beta, Tm, dw, du, dk_in, dk, dv, dbeta,
        dg if dg is not None else dbeta, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_G=gc is not None, MM=matmul_dtype(k),
    )
    return dk, dv, dbeta, dg


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    """Chunked gated delta rule (g None: DeltaNet). Gradients for q, k, v, g, beta and the state."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, h0, scale: float, chunk_size: int):
        gc = chunk_local_cumsum(g, chunk_size) if g is not None else None
        Tm, w, u = wy_fwd(k, v, beta, gc, chunk_size)
        hs, ht, vnew = chunk_fwd_h(k, u, gc, h0, chunk_size, w=w)
        o = chunk_fwd_o(q, k, vnew, gc, hs, scale, chunk_size, v.dtype)
        ctx.save_for_backward(q, k, v, gc, beta, h0)
        ctx.scale, ctx.chunk_size = scale, chunk_size
        ctx.has_g = g is not None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, beta, h0 = ctx.saved_tensors
        scale, BT = ctx.scale, ctx.chunk_size
        do = do.contiguous()
        Tm, w, u = wy_fwd(k, v, beta, gc, BT)  # recompute instead of storing per-chunk tensors
        hs, _, vnew = chunk_fwd_h(k, u, gc, h0, BT, w=w)
        dv_local = chunk_bwd_dv(q, k, gc, do, None, scale, BT)
        dhs, dh0, dvnew = chunk_bwd_dh(q, k, gc, do, dht.contiguous(), scale, BT, w=w, dv_local=dv_local)
        dq, dk, dw, dgc = chunk_bwd_dqk(q, k, vnew, gc, hs, dhs, do, scale, BT, dv=dvnew)
        dk, dv, dbeta, dg_v = wy_bwd(k, v, beta, gc, Tm, dw, dvnew, dk, BT)
        dg = chunk_local_cumsum(dgc + dg_v, BT, reverse=True) if ctx.has_g else None
        return (
            dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dbeta.to(beta.dtype),
            dh0 if h0 is not None else None, None, None,
        )


def gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule: o ``[B, T, H, V]`` (dtype of v), final state ``[B, H, K, V]`` fp32."""
    require_triton_device(q)
    check_delta_rule_inputs(q, k, v, g, beta, state, counterpart="gated_delta_rule_step_triton")
    check_triton_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return ChunkGatedDeltaRuleFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(),
        g.float().contiguous() if g is not None else None, beta.contiguous(),
        state.float().contiguous() if state is not None else None, scale, chunk_size,
    )


def gated_delta_rule_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]``, g (or None), beta ``[B, H]``, state
    ``[B, H, K, V]`` (None: zeros) -> o ``[B, H, V]`` (dtype of v), state fp32.

    Fused kernel when no gradient is needed (acting); the chunked Function on T = 1 otherwise."""
    require_triton_device(q)
    check_delta_rule_inputs(q, k, v, g, beta, state, single_token=True, counterpart="gated_delta_rule_triton")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if state is None:
        state = zero_state(k, v)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, beta, state)):
        o, s = gated_delta_rule_triton(
            q[:, None], k[:, None], v[:, None], g[:, None] if g is not None else None, beta[:, None], state,
            scale=scale, chunk_size=16,
        )
        return o[:, 0], s
    return fused_step(q, k, v, g.float() if g is not None else None, beta.float(), state.float(), scale)
