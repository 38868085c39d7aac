"""Gated delta rule in chunk-parallel torch form (the CPU training path).

Within a chunk of C tokens starting from state S0, with gamma_i = g_1 + ... + g_i (log decay
accumulated inside the chunk), the recurrence of ``reference.py`` unrolls to

    S_i = e^{gamma_i} S0 + sum_{j<=i} e^{gamma_i - gamma_j} k_j u_j^T
    u_i = beta_i (v_i - e^{gamma_i} S0^T k_i - sum_{j<i} e^{gamma_i - gamma_j} (k_i . k_j) u_j)

so (I + A) U = diag(beta) (V - diag(e^gamma) K S0) with A_ij = beta_i e^{gamma_i - gamma_j} k_i . k_j
(j < i). The UT transform solves this unit lower-triangular system once per chunk, in parallel
over all chunks: U = U' - W S0 with U' = T V, W = T diag(e^gamma) K, T = (I + A)^-1 diag(beta).
Everything that does not depend on S0 is then computed for all chunks at once, and the only
sequential part left is one matmul per chunk:

    S_{n+1} = (e^{gamma_C} I - Kd^T W) S_n + Kd^T U',      Kd_j = e^{gamma_C - gamma_j} k_j
    O_n     = P U' + (Qg - P W) S_n,                       P_ij = e^{gamma_i - gamma_j} q_i . k_j (j <= i)

Only differences gamma_i - gamma_j with j <= i are exponentiated, so no factor exceeds 1.
Gradients come from autograd, into every input including the initial state, g and beta.
"""
from __future__ import annotations

import torch

from lifelong.kernels.utils.checks import check_chunk_size, check_delta_rule_inputs
from lifelong.kernels.utils.layout import to_chunks, zero_state


def gated_delta_rule_chunk(
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
    """Same contract as ``gated_delta_rule_reference``: o ``[B, T, H, V]`` (dtype of v), S fp32.

    T need not be a multiple of ``chunk_size``: the tail is padded with k = v = beta = g = 0,
    tokens that leave the state unchanged.
    """
    check_delta_rule_inputs(q, k, v, g, beta, state)
    check_chunk_size(chunk_size)
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = zero_state(k, v) if state is None else state.float()
    if T == 0:
        return v.new_zeros(v.shape), S
    C = min(chunk_size, T)
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)  # [B,H,N,C,D]
    bc = to_chunks(beta, C)  # [B, H, N, C]
    qc = qc * scale

    causal = torch.ones(C, C, dtype=torch.bool, device=k.device).tril()
    if g is None:
        decay = causal.float()  # e^{gamma_i - gamma_j} = 1 on and below the diagonal
        qg, kd, k_dec = qc, kc, kc
        chunk_decay = None
    else:
        gamma = to_chunks(g, C).cumsum(-1)  # [B, H, N, C]
        diff = gamma[..., :, None] - gamma[..., None, :]
        decay = torch.where(causal, diff, float("-inf")).exp()  # [B, H, N, C, C]
        eg = gamma.exp()[..., None]
        qg, k_dec = qc * eg, kc * eg
        kd = kc * (gamma[..., -1:] - gamma).exp()[..., None]
        chunk_decay = gamma[..., -1].exp()  # [B, H, N]

    # UT transform: solve (I + A) [U' | W] = diag(beta) [V | diag(e^gamma) K] for every chunk.
    kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
    # Only the strict lower triangle of ``a`` is read (unitriangular): no tril needed.
    a = kk * (decay * bc[..., :, None])
    rhs = torch.cat([vc, k_dec], dim=-1) * bc[..., None]
    # Solved as X^T (I + A)^T = RHS^T (upper, from the right): the same X, in the faster layout on CPU.
    x = torch.linalg.solve_triangular(
        a.transpose(-1, -2), rhs.transpose(-1, -2), upper=True, left=False, unitriangular=True
    ).transpose(-1, -2)  # [U' | W]

    # State-independent parts, all chunks at once (one matmul against [U' | W] each).
    p = (qc @ kc.transpose(-1, -2)) * decay  # [B, H, N, C, C], zero above the diagonal
    o_intra, pw = (p @ x).split([V, K], dim=-1)  # P U' [B,H,N,C,V], P W [B,H,N,C,K]
    q_eff = qg - pw  # [B, H, N, C, K]
    write, kw = (kd.transpose(-1, -2) @ x).split([V, K], dim=-1)  # Kd^T U', Kd^T W
    eye = torch.eye(K, device=k.device)
    transition = (eye if chunk_decay is None else chunk_decay[..., None, None] * eye) - kw

    # The sequential part: one K x K by K x V matmul per chunk.
    # unbind (not indexing) keeps the backward a stack instead of one zero-fill per chunk.
    starts = []
    S = S.reshape(B * H, K, V)
    for m, w_n in zip(transition.flatten(0, 1).unbind(1), write.flatten(0, 1).unbind(1)):
        starts.append(S)
        S = torch.baddbmm(w_n, m, S)
    s_starts = torch.stack(starts, dim=1).view(B, H, -1, K, V)  # [B, H, N, K, V]
    S = S.view(B, H, K, V)

    o = o_intra + q_eff @ s_starts  # [B, H, N, C, V]
    o = o.reshape(B, H, -1, V)[:, :, :T].movedim(2, 1)
    return o.to(v.dtype), S
