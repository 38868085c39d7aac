"""Chunk-parallel Palimpsa in torch: a scan over the ratio-form state ``(M, I~)`` chunk by chunk.

Within a chunk of length C the states after every token are decayed cumulative sums, computed in
parallel with the cumulative log-decay ``G_t = sum_{s<=t} g_s`` and the decay matrix
``L[t, s] = exp(G_t - G_s)`` (``s <= t``, entries <= 1, so no overflow)::

    M_t  = exp(G_t) M_0  + sum_s L[t, s] k_s v_s^T          [C, K, V]
    I~_t = exp(G_t) I~_0 + sum_s L[t, s] k_s^2 b_s^T
    o_t  = scale * sum_k q_t[k] M_t[k, :] / (I_p + I~_t[k, :])

The elementwise division forbids the ``Q K^T`` form of linear attention, so ``[B, H, C, K, V]`` is
materialised, one chunk at a time. The backward pass is written by hand (an autograd Function): it
keeps only the chunk-start states, recomputes each chunk's states in reverse order and runs the
adjoint recurrence ``dM̄_t = dM_t + f_{t+1} dM̄_{t+1}`` with the transposed decay matrix, so peak
memory is one chunk's ``[B, H, C, K, V]`` tensors, never the whole sequence's.
"""
from __future__ import annotations

import torch

from lifelong.kernels.palimpsa.reference import PalimpsaState, prior_precision_tensor, resolve_state
from lifelong.kernels.utils.checks import check_chunk_size, check_palimpsa_inputs


def _chunk_states(k: torch.Tensor, v: torch.Tensor, b: torch.Tensor, g: torch.Tensor, M0: torch.Tensor,
                  I0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """States after every token of one chunk.

    k ``[B, H, C, K]``, v, b ``[B, H, C, V]``, g ``[B, H, C]``, M0, I0 ``[B, H, K, V]`` (fp32).
    Returns M, I~ ``[B, H, C, K, V]``, G ``[B, H, C]`` and the decay matrix L ``[B, H, C, C]``.
    """
    C = g.shape[-1]
    G = torch.cumsum(g, dim=-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=g.device).tril()
    L = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))
    start = torch.exp(G)[..., None]
    K, V = k.shape[-1], v.shape[-1]
    kv = (k[..., :, None] * v[..., None, :]).flatten(-2)                    # [B, H, C, K*V]
    k2b = ((k * k)[..., :, None] * b[..., None, :]).flatten(-2)
    M = (L @ kv).addcmul_(start, M0.flatten(-2)[:, :, None])
    I = (L @ k2b).addcmul_(start, I0.flatten(-2)[:, :, None])
    shape = (*M.shape[:-1], K, V)
    return M.view(shape), I.view(shape), G, L


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, ...] -> [B, H, T, ...]`` fp32, contiguous (so every per-chunk product is too and
    the batched matmuls need no copies)."""
    return x.transpose(1, 2).float().contiguous()


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_{k, v} a * b`` for ``[B, H, C, K, V]`` tensors -> ``[B, H, C]``."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))


class _PalimpsaChunkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, b, M0, I0, prior, scale: float, chunk_size: int):
        qh, kh, vh, bh, gh = (_heads_first(x) for x in (q, k, v, b, g))
        B, H, T, V = vh.shape
        den_prior = prior[None, :, None, None, None]
        o = qh.new_empty(B, H, T, V)
        M, I = M0, I0
        starts_M, starts_I = [], []
        for s in range(0, T, chunk_size):
            e = min(s + chunk_size, T)
            starts_M.append(M)
            starts_I.append(I)
            Ms, Is, _, _ = _chunk_states(kh[:, :, s:e], vh[:, :, s:e], bh[:, :, s:e], gh[:, :, s:e], M, I)
            M, I = Ms[:, :, -1].clone(), Is[:, :, -1].clone()
            mu = Ms.div_(Is.add_(den_prior))                      # in place: no grad inside forward
            o[:, :, s:e] = (qh[:, :, s:e, :, None] * mu).sum(-2) * scale
        ctx.save_for_backward(q, k, v, g, b, prior, torch.stack(starts_M), torch.stack(starts_I))
        ctx.scale, ctx.chunk_size = scale, chunk_size
        return o.transpose(1, 2).to(q.dtype), M, I

    @staticmethod
    def backward(ctx, do, dM_T, dI_T):
        q, k, v, g, b, prior, starts_M, starts_I = ctx.saved_tensors
        scale, C = ctx.scale, ctx.chunk_size
        qh, kh, vh, bh, gh, doh = (_heads_first(x) for x in (q, k, v, b, g, do))
        B, H, T, K = kh.shape
        den_prior = prior[None, :, None, None, None]
        dq, dk, dv, db = (torch.zeros_like(x) for x in (qh, kh, vh, bh))
        dg = torch.zeros_like(gh)
        dprior = torch.zeros_like(prior)
        dM = torch.zeros_like(starts_M[0]) if dM_T is None else dM_T.float().clone()
        dI = torch.zeros_like(starts_I[0]) if dI_T is None else dI_T.float().clone()
        for c in reversed(range(starts_M.shape[0])):
            s = c * C
            e = min(s + C, T)
            qc, kc, vc, bc, gc, doc = (x[:, :, s:e] for x in (qh, kh, vh, bh, gh, doh))
            Ms, Is, G, L = _chunk_states(kc, vc, bc, gc, starts_M[c], starts_I[c])
            den = Is + den_prior
            mu = Ms / den
            do_s = doc * scale
            dq[:, :, s:e] = (mu * do_s[..., None, :]).sum(-1)
            dMd = torch.mul(qc[..., :, None], do_s[..., None, :]).div_(den)  # direct dL/dM_t
            dId_neg = dMd * mu                                                 # minus the direct dL/dI~_t
            dprior -= dId_neg.sum(dim=(0, 2, 3, 4))
            # adjoint recurrence inside the chunk: dM̄_t = sum_{s>=t} L[s, t] dMd_s + exp(G_C - G_t) dM
            Lt = L.transpose(-1, -2)
            tail = torch.exp(G[..., -1:] - G)[..., None]
            shape = dMd.shape
            dMbar = (Lt @ dMd.flatten(-2)).addcmul_(tail, dM.flatten(-2)[:, :, None]).view(shape)
            dIbar = (Lt @ dId_neg.flatten(-2)).neg_().addcmul_(tail, dI.flatten(-2)[:, :, None]).view(shape)
            dk_M = (dMbar * vc[..., None, :]).sum(-1)                        # sum_v dM̄[k, v] v[v]
            dk_I = (dIbar * bc[..., None, :]).sum(-1)                        # sum_v dĪ[k, v] b[v]
            k2 = kc * kc
            dk[:, :, s:e] = dk_M + 2 * kc * dk_I
            dv[:, :, s:e] = (kc[..., :, None] * dMbar).sum(-2)
            db[:, :, s:e] = (k2[..., :, None] * dIbar).sum(-2)
            # dg_t = f_t <dM̄_t, M_{t-1}> + f_t <dĪ_t, I~_{t-1}>, with f_t M_{t-1} = M_t - k_t v_t^T
            dg[:, :, s:e] = (_inner(dMbar, Ms) - (kc * dk_M).sum(-1) + _inner(dIbar, Is) - (k2 * dk_I).sum(-1))
            f0 = torch.exp(gc[..., 0])[..., None, None]
            dM, dI = f0 * dMbar[:, :, 0], f0 * dIbar[:, :, 0]

        def back(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).to(like.dtype)

        return (back(dq, q), back(dk, k), back(dv, v), back(dg, g), back(db, b), dM, dI, dprior, None, None)


def palimpsa_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                   state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                   scale: float | None = None, chunk_size: int = 64) -> tuple[torch.Tensor, PalimpsaState]:
    """Chunked Palimpsa. q, k ``[B, T, H, K]``; v, b ``[B, T, H, V]``; g ``[B, T, H]`` (log f_t <= 0).

    ``prior_precision``: I_p > 0, a float or a tensor broadcastable to ``[H]`` (differentiable).
    Returns o ``[B, T, H, V]`` (q's dtype) and the final fp32 state; differentiable in every input,
    the initial state and the prior precision.
    """
    check_palimpsa_inputs(q, k, v, g, b, state)
    check_chunk_size(chunk_size)
    H, K = q.shape[-2], q.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    state = resolve_state(q, v, state)
    if q.shape[1] == 0:
        return q.new_zeros(*q.shape[:-1], v.shape[-1]), state
    prior = prior_precision_tensor(prior_precision, H, q.device)
    o, M, I = _PalimpsaChunkFunction.apply(q, k, v, g, b, state.M, state.I_tilde, prior, scale, int(chunk_size))
    return o, PalimpsaState(M, I)
