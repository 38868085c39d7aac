"""Triton kernels shared by the matmul-form recurrences (simple GLA / Mamba2, linear attention, delta rule).

Every recurrence here is, inside a chunk of ``BT`` tokens with chunk-local cumulative log decay
``gc`` (``gc_t = sum of g over the chunk up to t``), ``h_n`` the state before chunk ``n``:

    o   = scale * (diag(e^gc) Q h_n + tril(Q K^T * e^(gc_i - gc_j)) V')
    h_{n+1} = e^gc_L h_n + (diag(e^(gc_L - gc)) K)^T V'

with ``V' = V`` for the gated linear family and ``V' = U - W h_n`` (the WY form) for the delta rule.
The kernels below compute the chunk states (forward), the output, and the backward pass of that
shared core; the delta rule adds its WY kernels in ``kernels/delta_rule/triton.py``.

Layout: q, k, w ``[B, T, H, K]``; v, u, v' ``[B, T, H, V]``; gc ``[B, T, H]`` fp32; chunk states
``[B, NT, H, K, V]`` (fp32, or the input dtype for bf16/fp16 inputs). All accumulation is fp32;
``MM`` is the dtype fed to ``tl.dot``: the input dtype (bf16, fp16), or fp32, which runs as 3xTF32
(and always under the interpreter, where bf16 dots are wrong).

Gate gradients use the reparametrisation q~ = q e^gc, v~ = v e^-gc (k~ = k e^-gc for the linear
family) inside each chunk, which gives ``dgc_t = q_t.dq_t - v_t.dv_t + [t = last] <dh_{n+1}, h_{n+1}>``
and ``dg = reverse cumsum of dgc within the chunk``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lifelong.kernels.backend import autotune_configs, triton_interpret

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def matmul_dtype(x: torch.Tensor):
    """The ``tl`` dtype fed to ``tl.dot``: fp32 under the interpreter (bf16 dots are wrong there)."""
    if triton_interpret() or x.dtype not in _TL_DTYPES:
        return tl.float32
    return _TL_DTYPES[x.dtype]


def block_size(n: int, cap: int = 64) -> int:
    """Power-of-two tile covering ``n`` (at least 16, the smallest ``tl.dot`` side), capped at ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def full_block(n: int) -> int:
    """Power-of-two tile covering all of ``n`` (at least 16)."""
    return max(16, triton.next_power_of_2(n))


def require_triton_device(x: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests)."""
    if not x.is_cuda and not triton_interpret():
        raise RuntimeError(
            "the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set in the environment before "
            "the kernels are imported (slow; for tests). On CPU call the op with backend='auto' or 'torch'."
        )


def check_chunk_size(chunk_size: int) -> int:
    """Chunk sizes must be powers of two in [16, 128] (tile sides of ``tl.dot``)."""
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, 128 for the Triton kernels, got {chunk_size}")
    return chunk_size


def chunk_local_cumsum(g: torch.Tensor, chunk_size: int, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum of ``g`` ``[B, T, H]`` or ``[B, T, H, K]`` over T within chunks (fp32).

    ``reverse=True`` sums from the end of each chunk (the adjoint, used for gate gradients).
    """
    B, T = g.shape[:2]
    rest = tuple(g.shape[2:])
    nt = triton.cdiv(T, chunk_size)
    pad = [0, 0] * len(rest) + [0, nt * chunk_size - T]
    gp = F.pad(g.float(), pad).view(B, nt, chunk_size, *rest)
    if reverse:
        gp = gp.flip(2).cumsum(2).flip(2)
    else:
        gp = gp.cumsum(2)
    return gp.reshape(B, nt * chunk_size, *rest)[:, :T].contiguous()


@triton.jit
def mm(a, b, MM: tl.constexpr):
    """``tl.dot`` with fp32 accumulation: operands cast to ``MM``; fp32 runs as 3xTF32 on tensor
    cores (close to fp32 accuracy; plain TF32 would lose about three digits)."""
    if MM == tl.float32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    else:
        return tl.dot(a.to(MM), b.to(MM))


@triton.jit
def masked_exp(x, mask):
    """exp(x) where ``mask``, 0 elsewhere, without evaluating exp off the mask (no overflow there)."""
    return tl.where(mask, tl.exp(tl.where(mask, x, 0.0)), 0.0)


def _cfg(*pairs: tuple[int, int]) -> list:
    return autotune_configs([triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs])


def _cfg_bv() -> list:
    """Configs of the kernels that run sequentially over chunks: their parallelism is B * H * V / BV,
    so the V tile is tuned too (the first config is the one used under the interpreter)."""
    return autotune_configs([
        triton.Config({"BV": bv}, num_warps=w, num_stages=s)
        for bv in (64, 32) for w in (4, 8) for s in (2, 3)
    ])


#: shared memory per thread block on an H100 / H200 (227 KiB)
H100_SHARED_BYTES = 232448


def aot_compile(
    kernel, constexprs: dict, *, ints: tuple[str, ...] = ("T", "NT"), floats: tuple[str, ...] = ("scale",),
    pointer_dtype: str = "bf16", fp32_pointers: tuple[str, ...] = (), arch: int = 90,
    num_warps: int = 4, num_stages: int = 2,
) -> int:
    """Compile ``kernel`` to a cubin for ``sm_<arch>`` without a GPU (Triton ships ptxas) and return
    its shared memory in bytes. Catches GPU-only compile errors in CI. Needs TRITON_INTERPRET unset:
    run it in a subprocess from tests. Pointer arguments are ``pointer_dtype`` unless named in
    ``fp32_pointers``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = kernel
    while hasattr(fn, "fn"):  # autotuner -> JITFunction -> python function
        fn = fn.fn
    jit_fn = JITFunction(fn)
    sig = {}
    for name in jit_fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ints:
            sig[name] = "i32"
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "*" + ("fp32" if name in fp32_pointers else pointer_dtype)
    src = ASTSource(fn=jit_fn, signature=sig, constexprs=constexprs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    return int(compiled.metadata.shared)


# ----------------------------------------------------------------------------------------------
# forward: chunk states
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_cfg_bv(), key=["K", "V", "BT", "USE_DELTA"])
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
# forward: output
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_cfg((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV"])
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
@triton.autotune(configs=_cfg((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV", "ADD_DH"])
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
# backward: state gradients
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_cfg_bv(), key=["K", "V", "BT", "USE_DELTA"])
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


# ----------------------------------------------------------------------------------------------
# backward: dq, dk (, dw) and the gate gradient's per-token terms
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_cfg((4, 2), (8, 2), (4, 3), (2, 2)), key=["K", "V", "BT", "BK", "BV", "USE_DELTA"])
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


# ----------------------------------------------------------------------------------------------
# single step (acting)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _step_kernel(
    q, k, v, g, beta, h, o, h_out, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_DELTA: tl.constexpr,
):
    """Grid (cdiv(V, BV), B*H), one token: S = e^g S; S += k (beta (v - S^T k))^T (delta rule) or
    S += k v^T; o = scale S^T q."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(h + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    b_q = tl.load(q + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    if USE_G:
        b_h = b_h * tl.exp(tl.load(g + i_bh).to(tl.float32))
    if USE_GK:
        b_h = b_h * tl.exp(tl.load(g + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32))[:, None]
    if USE_DELTA:
        b_beta = tl.load(beta + i_bh).to(tl.float32)
        b_v = (b_v - tl.sum(b_h * b_k[:, None], 0)) * b_beta
    b_h += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_h * b_q[:, None], 0) * scale
    tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    tl.store(h_out + p_kv, b_h, mask=m_kv)


def fused_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, state: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token for every (batch, head): q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]`` (or
    ``[B, H, K]``, per channel) or None, beta ``[B, H]`` or None, state ``[B, H, K, V]``
    -> o ``[B, H, V]`` (dtype of v), new state fp32. No autograd."""
    B, H, K = q.shape
    V = v.shape[-1]
    BK = full_block(K)
    BV = block_size(V, 64 if BK <= 128 else 32)
    q, k, v, state = q.contiguous(), k.contiguous(), v.contiguous(), state.contiguous()
    o = torch.empty_like(v)
    h_out = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(V, BV), B * H)
    _step_kernel[grid](
        q, k, v, g.contiguous() if g is not None else q, beta.contiguous() if beta is not None else q,
        state, o, h_out, scale, H=H, K=K, V=V, BK=BK, BV=BV,
        USE_G=g is not None and g.dim() == 2, USE_GK=g is not None and g.dim() == 3,
        USE_DELTA=beta is not None,
    )
    return o, h_out
