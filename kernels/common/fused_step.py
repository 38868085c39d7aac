"""One token of the shared recurrence for every (batch, head), in one kernel: the acting path."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.utils.tiles import block_size, full_block


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
