"""LoLA's acting step with fewer, cheaper ops: the same token as ``reference.lola_attn_step``.

The reference step is the readable ground truth; this one runs every env step of a LoLA agent. It
takes the same decisions from bit-identical recall errors and leaves the same state (the cache in
canonical order, the same folds into the linear state), and its output equals the reference's up to
float rounding. What differs is how the batch is laid out: every (lifetime, head) pair is one row of
a flattened ``[N = B * H, ...]`` tensor, so the victim, the new cache order and the pair to fold are
read with ``index_select`` on rows (one contiguous copy per selected row) instead of ``gather`` with
an index expanded over the feature dim, and the readout is three ``bmm`` instead of ``einsum``.
``tests/kernels/test_attention.py`` checks it against the reference over long streams.
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention.lola_select import (
    RECALL_EPS, canonical_order, fold, mix, score_max, static_priority,
)
from lifelong.kernels.attention.states import LoLAState, resolve_scale
from lifelong.kernels.utils.feature_maps import elu_feature_map


def lola_attn_step_fast(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState, *, window: int, cache_size: int,
    gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
) -> tuple[torch.Tensor, LoLAState]:
    """One LoLA token (inputs already checked): q, k ``[B, H, K]``, v ``[B, H, V]``, gate ``[H]`` ->
    o ``[B, H, V]``, new state. See ``lola_select.py`` for the order of operations."""
    b, h, kd = q.shape
    vd = v.shape[-1]
    eta, lam = window, cache_size
    n = lam + 1
    scale = resolve_scale(scale, kd)
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    dev = q.device

    # 1. the new pair enters the window; the oldest one (c, born at count - window) leaves it
    if eta > 0:
        c_k, c_v, c_valid = state.window_k[:, :, :1], state.window_v[:, :, :1], state.window_valid[:, :1]
        wk = torch.cat([state.window_k[:, :, 1:], k[:, :, None]], dim=2)
        wv = torch.cat([state.window_v[:, :, 1:], v[:, :, None]], dim=2)
        wvalid = torch.cat([state.window_valid[:, 1:], torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
    else:
        c_k, c_v, c_valid = k[:, :, None], v[:, :, None], torch.ones(b, 1, dtype=torch.bool, device=dev)
        wk, wv, wvalid = state.window_k, state.window_v, state.window_valid

    # 2-3. c competes with the sparse cache; the victim folds into the linear state
    cand_k = torch.cat([state.cache_k, c_k], dim=2)  # [B, H, n, K]
    cand_v = torch.cat([state.cache_v, c_v], dim=2)
    cand_valid = torch.cat([state.cache_valid, c_valid[:, None].expand(b, h, 1)], dim=2)
    cand_birth = torch.cat([state.cache_birth, (state.count - eta).view(b, 1, 1).expand(b, h, 1)], dim=2)
    cand_phi = elu_feature_map(cand_k)
    # recall errors exactly as lola_select.recall_error_norm computes them (same layout, same ops)
    SZ = torch.cat([state.S, state.z[..., None]], dim=-1).view(b * h, kd, vd + 1)
    out = cand_phi.view(b * h, n, kd) @ SZ
    pred = out[..., :-1] / (out[..., -1:] + RECALL_EPS)
    sre = torch.linalg.vector_norm(pred - cand_v.view(b * h, n, vd), dim=-1).view(b, h, n)
    score = sre if selection == "sre" else static_priority(selection, cand_birth, state.count)
    victim = torch.argmin(torch.where(cand_valid, score, float("-inf")), dim=-1, keepdim=True)  # [B, H, 1]
    order = canonical_order(cand_valid, cand_birth, torch.arange(n, device=dev) == victim)[..., :lam]
    # rows of the flattened candidates: the victim's (folded) and the new cache's (kept)
    base = torch.arange(0, b * h * n, n, device=dev).view(b, h, 1)
    rows_k, rows_v, rows_phi = cand_k.view(-1, kd), cand_v.view(-1, vd), cand_phi.view(-1, kd)
    at = (victim + base).view(-1)
    S, z = fold(state.S, state.z, rows_phi.index_select(0, at).view(b, h, kd), rows_v.index_select(0, at).view(b, h, vd),
                torch.gather(cand_valid, 2, victim)[..., 0])
    gvalid = torch.gather(cand_valid, 2, order)
    at = (order + base).view(-1)
    mask = gvalid[..., None]
    gk = rows_k.index_select(0, at).view(b, h, lam, kd).mul_(mask)
    gv = rows_v.index_select(0, at).view(b, h, lam, vd).mul_(mask)
    gsre = torch.gather(sre.pow(2), 2, order).mul_(gvalid)
    gbirth = torch.gather(cand_birth, 2, order).mul_(gvalid)

    # 4. read out: exact attention over W u G mixed with the linear state, one row per (b, h)
    keys = torch.cat([wk, gk], dim=2).view(b * h, eta + lam, kd)
    values = torch.cat([wv, gv], dim=2).view(b * h, eta + lam, vd)
    valid = torch.cat([wvalid[:, None, :].expand(b, h, eta), gvalid], dim=2).view(b * h, 1, eta + lam)
    scores = (q.reshape(b * h, 1, kd) @ keys.transpose(1, 2)).mul_(scale).masked_fill_(~valid, float("-inf"))
    m = score_max(scores)  # [N, 1]
    p = torch.exp(scores - m[..., None])
    phi_q = elu_feature_map(q).reshape(b * h, 1, kd)
    lin = phi_q @ torch.cat([S, z[..., None]], dim=-1).view(b * h, kd, vd + 1)  # [phi_q^T S | phi_q^T z]
    o = mix((p @ values).view(b, h, vd), p.sum(-1).view(b, h), m.view(b, h), lin[:, 0, :vd].view(b, h, vd),
            lin[:, 0, vd].view(b, h), gate)
    new_state = LoLAState(S, z, wk, wv, wvalid, gk, gv, gvalid, gsre, gbirth, state.count + 1)
    return o.to(out_dtype), new_state
