"""Chunk states of the shared recurrence (see ``kernels/common/__init__.py``): the forward pass
stores the state before every chunk, the backward pass the gradient of the state after every chunk.
Both walk the chunks in order (reverse order for the backward), one program per (V tile, batch x head).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.utils.autotune import v_tile_configs
from lifelong.kernels.utils.ops import matmul_dtype, mm
from lifelong.kernels.utils.tiles import full_block


# ----------------------------------------------------------------------------------------------
# forward: chunk states
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=v_tile_configs(), key=["K", "V", "BT", "USE_DELTA"])
@triton.jit
def _fwd_h_kernel(
    k, v, w, gc, h0, hs, ht, vnew, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_DELTA: tl.constexpr, USE_H0: tl.constexpr,
    MM: tl.constexpr,
):
    """Grid (cdiv(V, BV), B*H). Sequential over chunks; BK covers all of K. USE_GK: per-channel
    gates ``gc [B, T, H, K]`` (GLA) instead of one per head."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_n in range(NT):
        p_h = hs + ((i_b * NT + i_n) * H + i_h).to(tl.int64) * K * V
        tl.store(p_h + p_kv, b_h.to(hs.dtype.element_ty), mask=m_kv)
        o_t = i_n * BT + tl.arange(0, BT)
        m_t = o_t < T
        row = (i_b * T + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        if USE_DELTA:
            b_w = tl.load(w + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
            b_v = b_v - mm(b_w, b_h, MM)
            tl.store(vnew + row[:, None] * V + o_v[None, :], b_v.to(vnew.dtype.element_ty), mask=m_tv)
        if USE_G:
            b_g = tl.load(gc + row, mask=m_t, other=0.0)
            b_gl = tl.sum(tl.where(o_t == tl.minimum(i_n * BT + BT, T) - 1, b_g, 0.0))
            b_v = b_v * tl.where(m_t, tl.exp(b_gl - b_g), 0.0)[:, None]
            b_h = b_h * tl.exp(b_gl)
        if USE_GK:
            b_gk = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_glk = tl.sum(tl.where((o_t == tl.minimum(i_n * BT + BT, T) - 1)[:, None], b_gk, 0.0), 0)
            b_k = b_k * tl.where(m_tk, tl.exp(b_glk[None, :] - b_gk), 0.0)
            b_h = b_h * tl.exp(b_glk)[:, None]
        b_h += mm(tl.trans(b_k), b_v, MM)
    tl.store(ht + i_bh * K * V + p_kv, b_h, mask=m_kv)


def chunk_fwd_h(
    k: torch.Tensor,
    v: torch.Tensor,
    gc: torch.Tensor | None,
    h0: torch.Tensor | None,
    chunk_size: int,
    w: torch.Tensor | None = None,
    per_channel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Chunk states ``hs [B, NT, H, K, V]`` (state before each chunk), final state ``[B, H, K, V]``
    fp32, and, for the delta rule (``w`` given, ``v`` is then U), ``V' = U - W h`` ``[B, T, H, V]``."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK = full_block(K)
    hs_dtype = torch.float32 if v.dtype == torch.float32 else v.dtype
    hs = k.new_empty(B, NT, H, K, V, dtype=hs_dtype)
    ht = k.new_empty(B, H, K, V, dtype=torch.float32)
    vnew = torch.empty_like(v) if w is not None else None

    def grid(meta):
        return (triton.cdiv(V, meta["BV"]), B * H)

    _fwd_h_kernel[grid](
        k, v, w if w is not None else k, gc if gc is not None else k, h0 if h0 is not None else ht,
        hs, ht, vnew if vnew is not None else v, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK,
        USE_G=gc is not None and not per_channel, USE_GK=gc is not None and per_channel,
        USE_DELTA=w is not None, USE_H0=h0 is not None, MM=matmul_dtype(k),
    )
    return hs, ht, vnew


# ----------------------------------------------------------------------------------------------
# backward: state gradients
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=v_tile_configs(), key=["K", "V", "BT", "USE_DELTA"])
@triton.jit
def _bwd_dh_kernel(
    q, k, w, gc, do, dv_local, dv_out, dht, dhs, dh0, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_DELTA: tl.constexpr, USE_DHT: tl.constexpr,
    MM: tl.constexpr,
):
    """Grid (cdiv(V, BV), B*H), reverse over chunks. Stores dh_{n+1} for every chunk n and dh_0.

    dh_n = e^gc_L dh_{n+1} + scale (e^gc Q)^T dO [- W^T dV' for the delta rule, where
    dV' = dv_local + e^(gc_L - gc) K dh_{n+1} is completed and stored here]."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_r in range(NT):
        i_n = NT - 1 - i_r
        p_dh = dhs + ((i_b * NT + i_n) * H + i_h).to(tl.int64) * K * V
        tl.store(p_dh + p_kv, b_dh.to(dhs.dtype.element_ty), mask=m_kv)
        o_t = i_n * BT + tl.arange(0, BT)
        m_t = o_t < T
        row = (i_b * T + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32) * scale
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_gl = 0.0
        if USE_G:
            b_g = tl.load(gc + row, mask=m_t, other=0.0)
            b_gl = tl.sum(tl.where(o_t == tl.minimum(i_n * BT + BT, T) - 1, b_g, 0.0))
            b_q = b_q * tl.exp(b_g)[:, None]
        if USE_GK:
            b_gk = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_glk = tl.sum(tl.where((o_t == tl.minimum(i_n * BT + BT, T) - 1)[:, None], b_gk, 0.0), 0)
            b_q = b_q * tl.exp(b_gk)
        if USE_DELTA:
            b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
            b_w = tl.load(w + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
            if USE_G:
                b_k = b_k * tl.where(m_t, tl.exp(b_gl - b_g), 0.0)[:, None]
            b_dv = tl.load(dv_local + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
            b_dv += mm(b_k, b_dh, MM)
            tl.store(dv_out + row[:, None] * V + o_v[None, :], b_dv, mask=m_tv)
            b_dh_new = mm(tl.trans(b_q), b_do, MM) - mm(tl.trans(b_w), b_dv, MM)
        else:
            b_dh_new = mm(tl.trans(b_q), b_do, MM)
        if USE_G:
            b_dh = b_dh * tl.exp(b_gl)
        if USE_GK:
            b_dh = b_dh * tl.exp(b_glk)[:, None]
        b_dh += b_dh_new
    tl.store(dh0 + i_bh * K * V + p_kv, b_dh, mask=m_kv)


def chunk_bwd_dh(
    q: torch.Tensor, k: torch.Tensor, gc: torch.Tensor | None, do: torch.Tensor,
    dht: torch.Tensor | None, scale: float, chunk_size: int,
    w: torch.Tensor | None = None, dv_local: torch.Tensor | None = None, per_channel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``dhs [B, NT, H, K, V]`` (gradient of the state after each chunk), ``dh0 [B, H, K, V]`` fp32,
    and for the delta rule (``w``, ``dv_local`` given) the full ``dV'`` ``[B, T, H, V]`` fp32."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK = full_block(K)
    dhs_dtype = torch.float32 if do.dtype == torch.float32 else do.dtype
    dhs = q.new_empty(B, NT, H, K, V, dtype=dhs_dtype)
    dh0 = q.new_empty(B, H, K, V, dtype=torch.float32)
    dv = torch.empty_like(dv_local) if w is not None else None

    def grid(meta):
        return (triton.cdiv(V, meta["BV"]), B * H)

    _bwd_dh_kernel[grid](
        q, k, w if w is not None else k, gc if gc is not None else q, do,
        dv_local if dv_local is not None else dh0, dv if dv is not None else dh0,
        dht if dht is not None else dh0, dhs, dh0, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK,
        USE_G=gc is not None and not per_channel, USE_GK=gc is not None and per_channel,
        USE_DELTA=w is not None, USE_DHT=dht is not None, MM=matmul_dtype(q),
    )
    return dhs, dh0, dv
