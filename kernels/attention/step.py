"""LoLA's acting step with fewer, cheaper ops: the same token as ``reference.lola_attn_step``.

The reference step is the readable ground truth; this one runs every env step of a LoLA agent. It
takes the same decisions from bit-identical recall errors and leaves the same state (the cache in
canonical order, the same folds into the linear state), and its output equals the reference's up to
float rounding. What differs is how the batch is laid out: every (lifetime, head) pair is one row of
a flattened ``[N = B * H, ...]`` tensor, so the victim, the new cache order and the pair to fold are
read with ``index_select`` on rows (one contiguous copy per selected row) instead of ``gather`` with
an index expanded over the feature dim, and the readout is three ``bmm`` instead of ``einsum``. Per step it also avoids what costs an op
without changing a value: the new window and the readout's keys are one ``cat`` (the window is a
view of the keys), slices are ``narrow``, constant index tensors are built once, and the exact and
linear parts are mixed as one ``[numerator | denominator]`` row.
``tests/kernels/test_attention.py`` checks it against the reference over long streams.
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention.lola_select import (
    _EMPTY_KEY, DEN_EPS, RECALL_EPS, fold, score_max, static_priority,
)
from lifelong.kernels.attention.states import LoLAState, resolve_scale
from lifelong.kernels.utils.feature_maps import elu_feature_map


#: constant index tensors of the acting step, by (kind, shape, device): built once, never written
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(key: tuple, make) -> torch.Tensor:
    value = _CONSTANTS.get(key)
    if value is None:
        with torch.inference_mode(False):  # a normal tensor: usable under no_grad and inference mode alike
            value = _CONSTANTS[key] = make()
    return value


def lola_attn_step_fast(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState, *, window: int, cache_size: int,
    gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
) -> tuple[torch.Tensor, LoLAState]:
    """One LoLA token (inputs already checked): q, k ``[B, H, K]``, v ``[B, H, V]``, gate ``[H]`` ->
    o ``[B, H, V]``, new state. See ``lola_select.py`` for the order of operations."""
    b, h, kd = q.shape
    vd = v.shape[-1]
    eta, lam = window, cache_size
    n, N = lam + 1, b * h
    scale = resolve_scale(scale, kd)
    out_dtype = q.dtype
    if out_dtype != torch.float32:  # (a no-op .float() still costs a dispatch per token)
        q, k, v = q.float(), k.float(), v.float()
    dev = q.device
    ones_bh1 = _constant(("ones", b, h, dev), lambda: torch.ones(b, h, 1, dtype=torch.bool, device=dev))

    # 1. the oldest pair of the window (c, born at count - window) leaves it; the new one enters below
    if eta > 0:
        c_k, c_v = state.window_k.narrow(2, 0, 1), state.window_v.narrow(2, 0, 1)
        c_valid = state.window_valid.narrow(1, 0, 1).unsqueeze(1).expand(b, h, 1)
    else:
        c_k, c_v, c_valid = k.unsqueeze(2), v.unsqueeze(2), ones_bh1

    # 2-3. c competes with the sparse cache; the victim folds into the linear state
    cand_k = torch.cat([state.cache_k, c_k], dim=2)  # [B, H, n, K]
    cand_v = torch.cat([state.cache_v, c_v], dim=2)
    cand_valid = torch.cat([state.cache_valid, c_valid], dim=2)
    cand_birth = torch.cat([state.cache_birth, (state.count - eta).view(b, 1, 1).expand(b, h, 1)], dim=2)
    cand_phi = elu_feature_map(cand_k)
    # recall errors exactly as lola_select.recall_error_norm computes them (same layout, same ops)
    SZ = torch.cat([state.S, state.z.unsqueeze(-1)], dim=-1).view(N, kd, vd + 1)
    out = torch.bmm(cand_phi.view(N, n, kd), SZ)
    pred = out.narrow(-1, 0, vd) / (out.narrow(-1, vd, 1) + RECALL_EPS)
    sre = torch.linalg.vector_norm(pred - cand_v.view(N, n, vd), dim=-1).view(b, h, n)
    score = sre if selection == "sre" else static_priority(selection, cand_birth, state.count)
    victim = torch.argmin(torch.where(cand_valid, score, float("-inf")), dim=-1, keepdim=True)  # [B, H, 1]
    # the new cache order: lola_select.canonical_order (valid slots by birth, empty ones, the victim last)
    slots = _constant(("arange", n, dev), lambda: torch.arange(n, device=dev))
    key = torch.where(cand_valid, cand_birth, _EMPTY_KEY).masked_fill_(slots == victim, _EMPTY_KEY + 1)
    order = torch.sort(key, dim=-1, stable=True).indices.narrow(-1, 0, lam)
    # rows of the flattened candidates: the victim's (folded) and the new cache's (kept)
    base = _constant(("base", b, h, n, dev), lambda: torch.arange(0, N * n, n, device=dev).view(b, h, 1))
    rows_k, rows_v, rows_phi = cand_k.view(-1, kd), cand_v.view(-1, vd), cand_phi.view(-1, kd)
    at = (victim + base).view(-1)
    S, z = fold(state.S, state.z, rows_phi.index_select(0, at).view(b, h, kd), rows_v.index_select(0, at).view(b, h, vd),
                torch.gather(cand_valid, 2, victim).squeeze(2))
    gvalid = torch.gather(cand_valid, 2, order)
    at = (order + base).view(-1)
    mask = gvalid.unsqueeze(-1)
    gk = rows_k.index_select(0, at).view(b, h, lam, kd).mul_(mask)
    gv = rows_v.index_select(0, at).view(b, h, lam, vd).mul_(mask)
    gsre = torch.gather(sre.pow(2), 2, order).mul_(gvalid)
    gbirth = torch.gather(cand_birth, 2, order).mul_(gvalid)

    # 4. read out: exact attention over W u G mixed with the linear state, one row per (b, h). The new
    # window (the window's newest eta - 1 pairs, then the new one) and the cache are one cat: W is a view.
    if eta > 0:
        keys = torch.cat([state.window_k.narrow(2, 1, eta - 1), k.unsqueeze(2), gk], dim=2)
        values = torch.cat([state.window_v.narrow(2, 1, eta - 1), v.unsqueeze(2), gv], dim=2)
        older = state.window_valid.narrow(1, 1, eta - 1).unsqueeze(1).expand(b, h, eta - 1)
        valid = torch.cat([older, ones_bh1, gvalid], dim=2)
        wk, wv, wvalid = keys.narrow(2, 0, eta), values.narrow(2, 0, eta), valid.select(1, 0).narrow(1, 0, eta)
    else:
        keys, values, valid = gk, gv, gvalid
        wk, wv, wvalid = state.window_k, state.window_v, state.window_valid
    L = eta + lam
    scores = torch.bmm(q.reshape(N, 1, kd), keys.reshape(N, L, kd).transpose(1, 2)).mul_(scale)
    scores = torch.where(valid.reshape(N, 1, L), scores, float("-inf"))
    m = score_max(scores)  # [N, 1]
    p = torch.exp(scores - m.unsqueeze(-1))
    phi_q = elu_feature_map(q).reshape(N, 1, kd)
    # [num | den] of both parts: (1 - g) (p V | sum p) + g e^{-m} (phi_q^T S | phi_q^T z), as lola_select.mix
    soft = torch.cat([torch.bmm(p, values.reshape(N, L, vd)), p.sum(-1, keepdim=True)], dim=-1)
    lin = torch.bmm(phi_q, torch.cat([S, z.unsqueeze(-1)], dim=-1).view(N, kd, vd + 1))
    g = gate.to(soft.dtype).view(1, h, 1, 1)
    nd = (soft.view(b, h, 1, vd + 1) * (1 - g)).add_(lin.view(b, h, 1, vd + 1) * (g * torch.exp(-m).view(b, h, 1, 1)))
    o = nd.narrow(-1, 0, vd) / nd.narrow(-1, vd, 1).add_(DEN_EPS)
    new_state = LoLAState(S, z, wk, wv, wvalid, gk, gv, gvalid, gsre, gbirth, state.count + 1)
    o = o.view(b, h, vd)
    return (o if out_dtype == torch.float32 else o.to(out_dtype)), new_state
