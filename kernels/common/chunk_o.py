"""Output of the shared recurrence and its per-token gradients (see ``kernels/common/__init__.py``):
one program per (V or K tile, chunk, batch x head), all chunks in parallel given the chunk states.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.utils.autotune import warp_configs
from lifelong.kernels.utils.ops import masked_exp, matmul_dtype, mm
from lifelong.kernels.utils.tiles import block_size


# ----------------------------------------------------------------------------------------------
# forward: output
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=warp_configs((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV"])
@triton.jit
def _fwd_o_kernel(
    q, k, v, gc, hs, o, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, MM: tl.constexpr,
):
    """Grid (cdiv(V, BV), NT, B*H): o = scale (e^gc Q h_n + tril(Q K^T e^(gc_i - gc_j)) V').

    USE_GK (GLA, per-channel gates): the decay differs per key channel, so the intra-chunk scores
    are summed over a [BT, BT, BK] block instead of one tl.dot (small BT)."""
    i_v = tl.program_id(0)
    i_n = tl.program_id(1)
    i_bh = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_n * BT + tl.arange(0, BT)
    m_t = o_t < T
    row = (i_b * T + o_t) * H + i_h
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_h = hs + ((i_b * NT + i_n) * H + i_h).to(tl.int64) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        if USE_GK:
            b_gk = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_o += mm((b_q * tl.exp(b_gk)), b_h, MM)
            b_E = tl.exp(tl.where(m_A[:, :, None], b_gk[:, None, :] - b_gk[None, :, :], 0.0))
            b_A += tl.sum(b_q[:, None, :] * b_k[None, :, :] * b_E, 2)
        else:
            b_o += mm(b_q, b_h, MM)
            b_A += mm(b_q, tl.trans(b_k), MM)
    if USE_G:
        b_g = tl.load(gc + row, mask=m_t, other=0.0)
        b_o = b_o * tl.exp(b_g)[:, None]
        b_A = b_A * masked_exp(b_g[:, None] - b_g[None, :], m_A)
    b_A = tl.where(m_A, b_A, 0.0)
    b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
    b_o = (b_o + mm(b_A, b_v, MM)) * scale
    tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


def chunk_fwd_o(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: torch.Tensor | None,
    hs: torch.Tensor, scale: float, chunk_size: int, out_dtype: torch.dtype, per_channel: bool = False,
) -> torch.Tensor:
    """Output ``[B, T, H, V]`` from the chunk states ``hs`` (``v`` is V' for the delta rule)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK, BV = block_size(K, 32 if per_channel else 64), block_size(V)
    o = torch.empty(B, T, H, V, dtype=out_dtype, device=q.device)
    grid = (triton.cdiv(V, BV), NT, B * H)
    _fwd_o_kernel[grid](
        q, k, v, gc if gc is not None else q, hs, o, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        USE_G=gc is not None and not per_channel, USE_GK=gc is not None and per_channel, MM=matmul_dtype(q),
    )
    return o


# ----------------------------------------------------------------------------------------------
# backward: dv (intra-chunk part, plus the state part for the linear family)
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=warp_configs((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV", "ADD_DH"])
@triton.jit
def _bwd_dv_kernel(
    q, k, gc, do, dhs, dv, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, ADD_DH: tl.constexpr, MM: tl.constexpr,
):
    """Grid (cdiv(V, BV), NT, B*H): dV' = tril(A)^T dO (+ e^(gc_L - gc) K dh_{n+1} when ADD_DH)."""
    i_v = tl.program_id(0)
    i_n = tl.program_id(1)
    i_bh = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_n * BT + tl.arange(0, BT)
    m_t = o_t < T
    row = (i_b * T + o_t) * H + i_h
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_dh = dhs + ((i_b * NT + i_n) * H + i_h).to(tl.int64) * K * V
    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    # b_At[j, i] = k_j . q_i, kept where j <= i
    m_A = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    i_last = tl.minimum(i_n * BT + BT, T) - 1
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        if USE_GK:
            b_gk = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_E = tl.exp(tl.where(m_A[:, :, None], b_gk[None, :, :] - b_gk[:, None, :], 0.0))
            b_At += tl.sum(b_k[:, None, :] * b_q[None, :, :] * b_E, 2)
            b_glk = tl.sum(tl.where((o_t == i_last)[:, None], b_gk, 0.0), 0)
            b_k = b_k * tl.where(m_tk, tl.exp(b_glk[None, :] - b_gk), 0.0)
        else:
            b_At += mm(b_k, tl.trans(b_q), MM)
        if ADD_DH:
            b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_dv += mm(b_k, b_dh, MM)
    if USE_G:
        b_g = tl.load(gc + row, mask=m_t, other=0.0)
        b_gl = tl.sum(tl.where(o_t == i_last, b_g, 0.0))
        b_At = b_At * masked_exp(b_g[None, :] - b_g[:, None], m_A)
        if ADD_DH:
            b_dv = b_dv * tl.where(m_t, tl.exp(b_gl - b_g), 0.0)[:, None]
    b_At = tl.where(m_A, b_At * scale, 0.0)
    b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
    b_dv += mm(b_At, b_do, MM)
    tl.store(dv + row[:, None] * V + o_v[None, :], b_dv, mask=m_tv)


def chunk_bwd_dv(
    q: torch.Tensor, k: torch.Tensor, gc: torch.Tensor | None, do: torch.Tensor,
    dhs: torch.Tensor | None, scale: float, chunk_size: int, per_channel: bool = False,
) -> torch.Tensor:
    """dV' ``[B, T, H, V]`` fp32: the intra-chunk part, plus the state part when ``dhs`` is given."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK, BV = block_size(K, 32 if per_channel else 64), block_size(V)
    dv = torch.empty(B, T, H, V, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(V, BV), NT, B * H)
    _bwd_dv_kernel[grid](
        q, k, gc if gc is not None else q, do, dhs if dhs is not None else dv, dv, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        USE_G=gc is not None and not per_channel, USE_GK=gc is not None and per_channel,
        ADD_DH=dhs is not None, MM=matmul_dtype(q),
    )
    return dv


# ----------------------------------------------------------------------------------------------
# backward: dq, dk (, dw) and the gate gradient's per-token terms
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=warp_configs((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV", "USE_DELTA"])
@triton.jit
def _bwd_dqk_kernel(
    q, k, v, gc, hs, dhs, do, dv, dq, dk, dw, dg, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_DELTA: tl.constexpr, MM: tl.constexpr,
):
    """Grid (cdiv(K, BK), NT, B*H). ``v`` is V' (delta rule) and ``dv`` its full gradient.

    dg (per K block, summed by the caller) gets q.dq [- k.dk for the linear family; the delta rule
    subtracts v.dv in its WY kernel] and, at the chunk's last token, <dh_{n+1}, h_{n+1}>."""
    i_k = tl.program_id(0)
    i_n = tl.program_id(1)
    i_bh = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = i_n * BT + tl.arange(0, BT)
    m_t = o_t < T
    row = (i_b * T + o_t) * H + i_h
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_h = ((i_b * NT + i_n) * H + i_h).to(tl.int64) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_h = tl.load(hs + p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(tl.float32)
        b_dh = tl.load(dhs + p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(tl.float32)
        b_dq += mm(b_do, tl.trans(b_h), MM)
        b_dk += mm(b_v, tl.trans(b_dh), MM)
        b_dA += mm(b_do, tl.trans(b_v), MM)
        if USE_DELTA:
            b_dv = tl.load(dv + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
            b_dw += mm(b_dv, tl.trans(b_h), MM)
        if USE_G or USE_GK:
            b_hdh += tl.sum(b_h * b_dh, 1)
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    i_last = tl.minimum(i_n * BT + BT, T) - 1
    b_dgl = 0.0
    if USE_G:
        b_g = tl.load(gc + row, mask=m_t, other=0.0)
        b_gl = tl.sum(tl.where(o_t == i_last, b_g, 0.0))
        b_dq = b_dq * tl.exp(b_g)[:, None]
        b_dk = b_dk * tl.where(m_t, tl.exp(b_gl - b_g), 0.0)[:, None]
        b_dgl = tl.sum(b_hdh) * tl.exp(b_gl) + tl.sum(b_k * b_dk)
        b_dA = b_dA * masked_exp(b_g[:, None] - b_g[None, :], m_A)
    if USE_GK:
        b_gk = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_glk = tl.sum(tl.where((o_t == i_last)[:, None], b_gk, 0.0), 0)
        b_dq = b_dq * tl.exp(b_gk)
        b_dk = b_dk * tl.where(m_tk, tl.exp(b_glk[None, :] - b_gk), 0.0)
        b_dglk = b_hdh * tl.exp(b_glk) + tl.sum(b_k * b_dk, 0)
    b_dA = tl.where(m_A, b_dA * scale, 0.0)
    if USE_GK:
        b_E = tl.exp(tl.where(m_A[:, :, None], b_gk[:, None, :] - b_gk[None, :, :], 0.0)) * b_dA[:, :, None]
        b_dq = b_dq * scale + tl.sum(b_E * b_k[None, :, :], 1)
        b_dk += tl.sum(b_E * b_q[:, None, :], 0)
    else:
        b_dq = b_dq * scale + mm(b_dA, b_k, MM)
        b_dk += mm(tl.trans(b_dA), b_q, MM)
    tl.store(dq + row[:, None] * K + o_k[None, :], b_dq, mask=m_tk)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk, mask=m_tk)
    if USE_DELTA:
        tl.store(dw + row[:, None] * K + o_k[None, :], -b_dw, mask=m_tk)
    if USE_G:
        b_dg = tl.sum(b_q * b_dq, 1)
        if not USE_DELTA:
            b_dg -= tl.sum(b_k * b_dk, 1)
        b_dg += tl.where(o_t == i_last, b_dgl, 0.0)
        tl.store(dg + i_k * (tl.num_programs(2) * T) + row, b_dg, mask=m_t)
    if USE_GK:
        b_dgk = b_q * b_dq - b_k * b_dk + tl.where((o_t == i_last)[:, None], b_dglk[None, :], 0.0)
        tl.store(dg + row[:, None] * K + o_k[None, :], b_dgk, mask=m_tk)


def chunk_bwd_dqk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: torch.Tensor | None,
    hs: torch.Tensor, dhs: torch.Tensor, do: torch.Tensor, scale: float, chunk_size: int,
    dv: torch.Tensor | None = None, per_channel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """dq, dk ``[B, T, H, K]`` fp32, dw (delta rule, ``dv`` = dV' given) and the chunk-local gate
    gradient terms ``dgc`` fp32 (``[B, T, H]``, or ``[B, T, H, K]`` per channel; None without gates)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK, BV = block_size(K, 32 if per_channel else 64), block_size(V)
    NK = triton.cdiv(K, BK)
    dq = torch.empty(B, T, H, K, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(dq)
    dw = torch.empty_like(dq) if dv is not None else None
    dg = None
    if gc is not None:
        dg = torch.empty(*((B, T, H, K) if per_channel else (NK, B, T, H)), dtype=torch.float32, device=q.device)
    grid = (NK, NT, B * H)
    _bwd_dqk_kernel[grid](
        q, k, v, gc if gc is not None else q, hs, dhs, do, dv if dv is not None else do,
        dq, dk, dw if dw is not None else dq, dg if dg is not None else dq, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        USE_G=gc is not None and not per_channel, USE_GK=gc is not None and per_channel,
        USE_DELTA=dv is not None, MM=matmul_dtype(q),
    )
    if dg is not None and not per_channel:
        dg = dg.sum(0)
    return dq, dk, dw, dg
