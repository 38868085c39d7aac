"""Palimpsa in Triton: chunked forward and backward of the ``(M, I~)`` scan and a fused step.

The state recurrence is elementwise over ``K x V``, so a program owns one ``[BK, BV]`` tile of the
state of one (batch, head) and walks the chunks of ``BT`` tokens in order (forward) or in reverse
(backward). Inside a chunk the states after every token, ``[BT, BK, BV]``, are decayed cumulative
sums computed with one ``tl.dot`` each: ``M = L @ (k v^T) + e^G M_0`` with the causal decay matrix
``L[t, s] = exp(G_t - G_s)`` (``s <= t``, entries <= 1) and the ``[BK, BV]`` tile flattened.
Sums over K (the readout, dv, db) and over V (dq, dk) are per-tile partials that the wrappers add
up; dg and dI_p likewise.

Backward: the forward stores the chunk-start states (fp32); the backward recomputes each chunk's
states and runs the adjoint ``dM̄_t = dM_t + f_{t+1} dM̄_{t+1}`` as ``L^T @ dM`` plus the decayed
carry from the next chunk. All arithmetic is fp32 (q, k, v, b may be bf16); padded tokens have
``g = 0, k = 0`` so they leave the state unchanged.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.palimpsa.reference import PalimpsaState, prior_precision_tensor, resolve_state
from lifelong.kernels.palimpsa.reference import palimpsa_step as palimpsa_step_torch
from lifelong.kernels.utils.autotune import warp_configs
from lifelong.kernels.utils.backend import require_triton_device
from lifelong.kernels.utils.checks import check_chunk_size, check_palimpsa_inputs
from lifelong.kernels.utils.ops import masked_exp
from lifelong.kernels.utils.tiles import block_size

#: Chunk length of the Triton kernels: [BT, BK, BV] tiles live in registers, so BT stays small.
TRITON_CHUNK = 16
#: Largest K and V tile of one program; sums over several tiles are partials added by the wrapper.
#: The backward keeps more [BT, BK, BV] tensors alive, so its V tile is halved. The tiles are sized
#: to compile without register spills for sm_80 / sm_90 with 8 warps (checked by the kernel tests).
MAX_TILE = 16
BWD_MAX_TILE_V = 8
#: Smallest tile side: the flattened BK * BV tile is a side of a tl.dot, which needs at least 16.
MIN_TILE = 4


@triton.jit
def _decay_matrix(b_g, o_c):
    """Cumulative log decay G ``[BT]`` and the causal decay matrix L ``[BT, BT]`` of a chunk."""
    b_G = tl.cumsum(b_g, 0)
    b_L = masked_exp(b_G[:, None] - b_G[None, :], o_c[:, None] >= o_c[None, :])
    return b_G, b_L


@triton.jit
def _causal_sum(b_L, b_x, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """``sum_s L[t, s] x[s]`` for x ``[BT, BK, BV]`` as one matmul over the flattened tile."""
    b_y = tl.dot(b_L, tl.reshape(b_x, (BT, BK * BV)), input_precision="ieee")
    return tl.reshape(b_y, (BT, BK, BV))


@triton.jit
def _chunk_states(b_k, b_v, b_b, b_G, b_L, b_M0, b_I0, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """States after every token of a chunk: M, I~ ``[BT, BK, BV]``.

    b_k ``[BT, BK]``, b_v, b_b ``[BT, BV]``, b_G ``[BT]``, b_L ``[BT, BT]``, b_M0, b_I0 ``[BK, BV]``."""
    b_start = tl.exp(b_G)[:, None, None]
    b_M = _causal_sum(b_L, b_k[:, :, None] * b_v[:, None, :], BT, BK, BV) + b_start * b_M0[None, :, :]
    b_I = _causal_sum(b_L, (b_k * b_k)[:, :, None] * b_b[:, None, :], BT, BK, BV) + b_start * b_I0[None, :, :]
    return b_M, b_I


@triton.autotune(configs=warp_configs((8, 3), (4, 3)), key=["K", "V", "BT", "BK", "BV"])
@triton.jit
def _palimpsa_fwd_kernel(
    q, k, v, g, b, prior, M0, I0, o_part, hs_M, hs_I, MT, IT, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (NV, NK, B*H). o_part ``[NK, B, T, H, V]``; hs_* ``[B, H, NT, K, V]``; MT, IT ``[B, H, K, V]``."""
    i_v = tl.program_id(0)
    i_k = tl.program_id(1)
    i_bh = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    n_bh = tl.num_programs(2)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_M = tl.load(M0 + i_bh * K * V + p_kv, mask=m_kv, other=0.0)
    b_I = tl.load(I0 + i_bh * K * V + p_kv, mask=m_kv, other=0.0)
    b_prior = tl.load(prior + i_h)
    o_c = tl.arange(0, BT)
    for i_n in range(NT):
        p_hs = (i_bh * NT + i_n) * K * V + p_kv
        tl.store(hs_M + p_hs, b_M, mask=m_kv)
        tl.store(hs_I + p_hs, b_I, mask=m_kv)
        o_t = i_n * BT + o_c
        m_t = o_t < T
        row = (i_b * T + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_kk = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_vv = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_bb = tl.load(b + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_G, b_L = _decay_matrix(tl.load(g + row, mask=m_t, other=0.0).to(tl.float32), o_c)
        b_Ms, b_Is = _chunk_states(b_kk, b_vv, b_bb, b_G, b_L, b_M, b_I, BT, BK, BV)
        b_mu = b_Ms / (b_prior + b_Is)
        b_o = tl.sum(b_q[:, :, None] * b_mu, 1) * scale
        tl.store(o_part + (i_k * n_bh * T + row[:, None]) * V + o_v[None, :], b_o, mask=m_tv)
        last = (o_c == BT - 1)[:, None, None]
        b_M = tl.sum(tl.where(last, b_Ms, 0.0), 0)
        b_I = tl.sum(tl.where(last, b_Is, 0.0), 0)
    tl.store(MT + i_bh * K * V + p_kv, b_M, mask=m_kv)
    tl.store(IT + i_bh * K * V + p_kv, b_I, mask=m_kv)


@triton.autotune(configs=warp_configs((8, 3), (4, 3)), key=["K", "V", "BT", "BK", "BV"])
@triton.jit
def _palimpsa_bwd_kernel(
    q, k, v, g, b, prior, hs_M, hs_I, do, dMT, dIT,
    dq_part, dk_part, dv_part, db_part, dg_part, dprior_part, dM0, dI0, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (NV, NK, B*H), reverse over chunks. Partials: dq, dk ``[NV, B, T, H, K]``; dv, db
    ``[NK, B, T, H, V]``; dg ``[NK * NV, B, T, H]``; dprior ``[NK * NV, B * H]``."""
    i_v = tl.program_id(0)
    i_k = tl.program_id(1)
    i_bh = tl.program_id(2)
    n_v = tl.num_programs(0)
    n_bh = tl.num_programs(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    b_dM = tl.load(dMT + i_bh * K * V + p_kv, mask=m_kv, other=0.0)
    b_dI = tl.load(dIT + i_bh * K * V + p_kv, mask=m_kv, other=0.0)
    b_prior = tl.load(prior + i_h)
    b_dprior = tl.zeros([BK, BV], dtype=tl.float32)
    o_c = tl.arange(0, BT)
    i_tile = i_k * n_v + i_v
    for i_r in range(NT):
        i_n = NT - 1 - i_r
        p_hs = (i_bh * NT + i_n) * K * V + p_kv
        b_M0 = tl.load(hs_M + p_hs, mask=m_kv, other=0.0)
        b_I0 = tl.load(hs_I + p_hs, mask=m_kv, other=0.0)
        o_t = i_n * BT + o_c
        m_t = o_t < T
        row = (i_b * T + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_kk = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_vv = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_bb = tl.load(b + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_g = tl.load(g + row, mask=m_t, other=0.0).to(tl.float32)
        b_G, b_L = _decay_matrix(b_g, o_c)
        b_Ms, b_Is = _chunk_states(b_kk, b_vv, b_bb, b_G, b_L, b_M0, b_I0, BT, BK, BV)
        b_den = b_prior + b_Is
        b_mu = b_Ms / b_den
        b_dq = tl.sum(b_mu * b_do[:, None, :], 2) * scale
        tl.store(dq_part + (i_v * n_bh * T + row[:, None]) * K + o_k[None, :], b_dq, mask=m_tk)
        b_dMd = (scale * b_q[:, :, None] * b_do[:, None, :]) / b_den
        b_dId = -b_dMd * b_mu
        b_dprior += tl.sum(b_dId, 0)
        # adjoint: dM̄_t = sum_{s >= t} L[s, t] dM_s + exp(G_last - G_t) dM_carry (padded g = 0)
        b_Lt = tl.trans(b_L)
        b_tail = tl.exp(tl.sum(tl.where(o_c == BT - 1, b_G, 0.0)) - b_G)[:, None, None]
        b_dMbar = _causal_sum(b_Lt, b_dMd, BT, BK, BV) + b_tail * b_dM[None, :, :]
        b_dIbar = _causal_sum(b_Lt, b_dId, BT, BK, BV) + b_tail * b_dI[None, :, :]
        b_kv = b_kk[:, :, None] * b_vv[:, None, :]
        b_k2b = (b_kk * b_kk)[:, :, None] * b_bb[:, None, :]
        b_dk = tl.sum(b_dMbar * b_vv[:, None, :], 2) + 2 * b_kk * tl.sum(b_dIbar * b_bb[:, None, :], 2)
        tl.store(dk_part + (i_v * n_bh * T + row[:, None]) * K + o_k[None, :], b_dk, mask=m_tk)
        b_dv = tl.sum(b_dMbar * b_kk[:, :, None], 1)
        b_db = tl.sum(b_dIbar * (b_kk * b_kk)[:, :, None], 1)
        tl.store(dv_part + (i_k * n_bh * T + row[:, None]) * V + o_v[None, :], b_dv, mask=m_tv)
        tl.store(db_part + (i_k * n_bh * T + row[:, None]) * V + o_v[None, :], b_db, mask=m_tv)
        # dg_t = <dM̄_t, f_t M_{t-1}> + <dĪ_t, f_t I~_{t-1}>
        b_dg = tl.sum(tl.sum(b_dMbar * (b_Ms - b_kv) + b_dIbar * (b_Is - b_k2b), 2), 1)
        tl.store(dg_part + i_tile * n_bh * T + row, b_dg, mask=m_t)
        first = (o_c == 0)[:, None, None]
        b_f0 = tl.exp(tl.sum(tl.where(o_c == 0, b_g, 0.0)))
        b_dM = b_f0 * tl.sum(tl.where(first, b_dMbar, 0.0), 0)
        b_dI = b_f0 * tl.sum(tl.where(first, b_dIbar, 0.0), 0)
    tl.store(dM0 + i_bh * K * V + p_kv, b_dM, mask=m_kv)
    tl.store(dI0 + i_bh * K * V + p_kv, b_dI, mask=m_kv)
    tl.store(dprior_part + i_tile * n_bh + i_bh, tl.sum(tl.sum(b_dprior, 1), 0))


@triton.jit
def _palimpsa_step_kernel(
    q, k, v, g, b, prior, M, I, o_part, M_out, I_out, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (NV, NK, B*H), one token. o_part ``[NK, B, H, V]``."""
    i_v = tl.program_id(0)
    i_k = tl.program_id(1)
    i_bh = tl.program_id(2)
    n_bh = tl.num_programs(2)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    b_M = tl.load(M + p_kv, mask=m_kv, other=0.0)
    b_I = tl.load(I + p_kv, mask=m_kv, other=0.0)
    b_q = tl.load(q + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_b = tl.load(b + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_f = tl.exp(tl.load(g + i_bh).to(tl.float32))
    b_prior = tl.load(prior + i_bh % H)
    b_M = b_f * b_M + b_k[:, None] * b_v[None, :]
    b_I = b_f * b_I + (b_k * b_k)[:, None] * b_b[None, :]
    b_o = tl.sum(b_q[:, None] * (b_M / (b_prior + b_I)), 0) * scale
    tl.store(o_part + (i_k * n_bh + i_bh) * V + o_v, b_o, mask=m_v)
    tl.store(M_out + p_kv, b_M, mask=m_kv)
    tl.store(I_out + p_kv, b_I, mask=m_kv)


def _tiles(K: int, V: int, max_v: int = MAX_TILE) -> tuple[int, int, int, int]:
    """Tile sides and tile counts: BK, BV, NK, NV."""
    BK, BV = block_size(K, MAX_TILE, MIN_TILE), block_size(V, max_v, MIN_TILE)
    return BK, BV, triton.cdiv(K, BK), triton.cdiv(V, BV)


class _PalimpsaTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, b, M0, I0, prior, scale: float, chunk_size: int):
        q, k, v, g, b = (x.contiguous() for x in (q, k, v, g, b))
        M0, I0, prior = M0.float().contiguous(), I0.float().contiguous(), prior.float().contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT = chunk_size
        NT = triton.cdiv(T, BT)
        BK, BV, NK, NV = _tiles(K, V)
        o_part = q.new_empty(NK, B, T, H, V, dtype=torch.float32)
        hs_M = q.new_empty(B, H, NT, K, V, dtype=torch.float32)
        hs_I = torch.empty_like(hs_M)
        MT = q.new_empty(B, H, K, V, dtype=torch.float32)
        IT = torch.empty_like(MT)
        _palimpsa_fwd_kernel[(NV, NK, B * H)](
            q, k, v, g, b, prior, M0, I0, o_part, hs_M, hs_I, MT, IT, scale, T, NT,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        )
        ctx.save_for_backward(q, k, v, g, b, prior, hs_M, hs_I)
        ctx.scale, ctx.chunk_size = scale, chunk_size
        return o_part.sum(0).to(q.dtype), MT, IT

    @staticmethod
    def backward(ctx, do, dMT, dIT):
        q, k, v, g, b, prior, hs_M, hs_I = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT = ctx.chunk_size
        NT = hs_M.shape[2]
        BK, BV, NK, NV = _tiles(K, V, BWD_MAX_TILE_V)
        do = do.contiguous()
        dMT = torch.zeros_like(hs_M[:, :, 0]) if dMT is None else dMT.float().contiguous()
        dIT = torch.zeros_like(hs_M[:, :, 0]) if dIT is None else dIT.float().contiguous()
        f32 = {"dtype": torch.float32, "device": q.device}
        dq_part = torch.empty(NV, B, T, H, K, **f32)
        dk_part = torch.empty_like(dq_part)
        dv_part = torch.empty(NK, B, T, H, V, **f32)
        db_part = torch.empty_like(dv_part)
        dg_part = torch.empty(NK * NV, B, T, H, **f32)
        dprior_part = torch.empty(NK * NV, B, H, **f32)
        dM0 = torch.empty(B, H, K, V, **f32)
        dI0 = torch.empty_like(dM0)
        _palimpsa_bwd_kernel[(NV, NK, B * H)](
            q, k, v, g, b, prior, hs_M, hs_I, do, dMT, dIT,
            dq_part, dk_part, dv_part, db_part, dg_part, dprior_part, dM0, dI0, ctx.scale, T, NT,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        )
        return (dq_part.sum(0).to(q.dtype), dk_part.sum(0).to(k.dtype), dv_part.sum(0).to(v.dtype),
                dg_part.sum(0).to(g.dtype), db_part.sum(0).to(b.dtype), dM0, dI0,
                dprior_part.sum((0, 1)), None, None)


def palimpsa_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                    state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                    scale: float | None = None, chunk_size: int = 64) -> tuple[torch.Tensor, PalimpsaState]:
    """Triton Palimpsa over a sequence (same contract as ``palimpsa_chunk``).

    The kernels always use chunks of :data:`TRITON_CHUNK` tokens (their ``[BT, BK, BV]`` tiles
    live in registers); ``chunk_size`` is checked and otherwise ignored."""
    require_triton_device(q)
    check_palimpsa_inputs(q, k, v, g, b, state)
    check_chunk_size(chunk_size)
    H, K = q.shape[-2], q.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    state = resolve_state(q, v, state)
    if q.shape[1] == 0:
        return q.new_zeros(*q.shape[:-1], v.shape[-1]), state
    prior = prior_precision_tensor(prior_precision, H, q.device)
    o, M, I = _PalimpsaTritonFunction.apply(q, k, v, g, b, state.M, state.I_tilde, prior, scale, TRITON_CHUNK)
    return o, PalimpsaState(M, I)


class _PalimpsaStepTritonFunction(torch.autograd.Function):
    """Fused single-token kernel forward; the backward differentiates the torch step (cheap, one token)."""

    @staticmethod
    def forward(ctx, q, k, v, g, b, M, I, prior, scale: float):
        q, k, v, g, b = (x.contiguous() for x in (q, k, v, g, b))
        M, I, prior = M.float().contiguous(), I.float().contiguous(), prior.float().contiguous()
        B, H, K = q.shape
        V = v.shape[-1]
        BK, BV, NK, NV = _tiles(K, V)
        o_part = q.new_empty(NK, B, H, V, dtype=torch.float32)
        M_out = torch.empty_like(M)
        I_out = torch.empty_like(I)
        _palimpsa_step_kernel[(NV, NK, B * H)](
            q, k, v, g, b, prior, M, I, o_part, M_out, I_out, scale, H=H, K=K, V=V, BK=BK, BV=BV,
        )
        ctx.save_for_backward(q, k, v, g, b, M, I, prior)
        ctx.scale = scale
        return o_part.sum(0).to(q.dtype), M_out, I_out

    @staticmethod
    def backward(ctx, do, dM, dI):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in saved]
            q, k, v, g, b, M, I, prior = inputs
            o, state = palimpsa_step_torch(q, k, v, g, b, PalimpsaState(M, I), prior_precision=prior,
                                           scale=ctx.scale)
            outputs, grads_out = [o], [do]
            for out, grad in ((state.M, dM), (state.I_tilde, dI)):
                if grad is not None:
                    outputs.append(out)
                    grads_out.append(grad)
            grads = torch.autograd.grad(outputs, inputs, grads_out, allow_unused=True)
        return (*grads, None)


def palimpsa_step_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                         state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                         scale: float | None = None) -> tuple[torch.Tensor, PalimpsaState]:
    """One token with the fused kernel: q, k ``[B, H, K]``; v, b ``[B, H, V]``; g ``[B, H]``."""
    require_triton_device(q)
    check_palimpsa_inputs(q, k, v, g, b, state, single_token=True)
    H, K = q.shape[-2], q.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    state = resolve_state(q, v, state)
    prior = prior_precision_tensor(prior_precision, H, q.device)
    o, M, I = _PalimpsaStepTritonFunction.apply(q, k, v, g, b, state.M, state.I_tilde, prior, scale)
    return o, PalimpsaState(M, I)
