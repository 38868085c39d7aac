"""Ground truth of the attention family: one token at a time, fp32, plain torch.

``*_step`` ops take one token (q, k ``[B, H, K]``, v ``[B, H, V]``) and a cache, and return
(o ``[B, H, V]``, new cache); ``*_reference`` ops loop a step over T (q, k ``[B, T, H, K]``).
No positional encoding is applied: a lifetime is unbounded, so absolute positions are meaningless;
order reaches the mixer through the inputs (and, for sliding window and LoLA, through eviction).
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention.lola_select import (
    augment, candidate_scores, canonical_order, check_selection, fold, gather_slots, mix, score_max,
    static_priority,
)
from lifelong.kernels.attention.states import (
    KVCache, LoLAState, WindowCache, check_max_cache, empty_kv_cache, empty_lola_state, empty_window_cache,
    keep_newest, resolve_scale,
)
from lifelong.kernels.utils.checks import check_lola_inputs, check_softmax_attn_inputs, check_window_attn_inputs
from lifelong.kernels.utils.feature_maps import elu_feature_map


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax of one query over valid entries: q ``[B, H, K]``, k ``[B, H, N, K]``, v ``[B, H, N, V]``,
    valid ``[B, N]`` or ``[B, H, N]`` -> ``[B, H, V]``."""
    scores = torch.einsum("bhk,bhnk->bhn", q, k) * scale
    mask = valid[:, None, :] if valid.dim() == 2 else valid
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhn,bhnv->bhv", weights, v)


def _append(cache_k: torch.Tensor, cache_v: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Append one pair k ``[B, H, K]``, v ``[B, H, V]`` at the end of a cache (valid ``[B, N]``)."""
    ones = torch.ones(valid.shape[0], 1, dtype=torch.bool, device=valid.device)
    return (
        torch.cat([cache_k, k.float()[:, :, None]], dim=2),
        torch.cat([cache_v, v.float()[:, :, None]], dim=2),
        torch.cat([valid, ones], dim=1),
    )


# ---- softmax attention -----------------------------------------------------------------------------
def softmax_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache | None, *, scale: float | None = None,
    max_cache: int | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """Append (k, v) to the cache, evict the oldest entries beyond ``max_cache`` (None: none), then
    attend over every valid entry left. o ``[B, H, V]``; the cache holds min(N + 1, max_cache) entries."""
    check_softmax_attn_inputs(q, k, v, state, single_token=True)
    check_max_cache(max_cache)
    if state is None:
        state = empty_kv_cache(q.shape[0], q.shape[1], k.shape[-1], v.shape[-1], q.device)
    if max_cache is not None:
        state = keep_newest(state, max_cache - 1)  # views: the append below copies what stays
    ck, cv, valid = _append(*state, k, v)
    o = _attend(q.float(), ck, cv, valid, resolve_scale(scale, q.shape[-1]))
    return o.to(q.dtype), KVCache(ck, cv, valid)


def softmax_attn_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache | None, *, scale: float | None = None,
    max_cache: int | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """Causal softmax attention over [cache | new tokens], a loop of :func:`softmax_attn_step` over T.
    o ``[B, T, H, V]``."""
    check_softmax_attn_inputs(q, k, v, state)
    check_max_cache(max_cache)
    if state is None:
        state = empty_kv_cache(q.shape[0], q.shape[2], k.shape[-1], v.shape[-1], q.device)
    outputs = []
    for t in range(q.shape[1]):
        o, state = softmax_attn_step(q[:, t], k[:, t], v[:, t], state, scale=scale, max_cache=max_cache)
        outputs.append(o)
    if not outputs:  # no token: the cache is only trimmed to max_cache
        state = KVCache(*(x.contiguous() for x in keep_newest(state, max_cache)))
    return (torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)), state


# ---- sliding-window attention ----------------------------------------------------------------------
def sliding_window_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowCache | None, *, window: int,
    scale: float | None = None,
) -> tuple[torch.Tensor, WindowCache]:
    """Shift (k, v) into the window of the last ``window`` pairs (the token itself included) and
    attend over its valid entries. o ``[B, H, V]``."""
    check_window_attn_inputs(q, k, v, state, window, single_token=True)
    if state is None:
        state = empty_window_cache(q.shape[0], q.shape[1], k.shape[-1], v.shape[-1], window, q.device)
    ck, cv, valid = _append(*state, k, v)
    ck, cv, valid = ck[:, :, 1:], cv[:, :, 1:], valid[:, 1:]
    o = _attend(q.float(), ck, cv, valid, resolve_scale(scale, q.shape[-1]))
    return o.to(q.dtype), WindowCache(ck, cv, valid)


def sliding_window_attn_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowCache | None, *, window: int,
    scale: float | None = None,
) -> tuple[torch.Tensor, WindowCache]:
    """Softmax over the last ``window`` pairs, a loop over T. o ``[B, T, H, V]``."""
    check_window_attn_inputs(q, k, v, state, window)
    if state is None:
        state = empty_window_cache(q.shape[0], q.shape[2], k.shape[-1], v.shape[-1], window, q.device)
    outputs = []
    for t in range(q.shape[1]):
        o, state = sliding_window_attn_step(q[:, t], k[:, t], v[:, t], state, window=window, scale=scale)
        outputs.append(o)
    return (torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)), state


# ---- LoLA ------------------------------------------------------------------------------------------
def lola_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
) -> tuple[torch.Tensor, LoLAState]:
    """One LoLA token (see ``kernels/attention/lola_select.py`` for the order of operations).

    q, k ``[B, H, K]``, v ``[B, H, V]``, gate ``[H]`` in [0, 1] -> o ``[B, H, V]``, new state.
    """
    check_lola_inputs(q, k, v, state, window, cache_size, single_token=True)
    check_selection(selection)
    b, h = q.shape[:2]
    if state is None:
        state = empty_lola_state(b, h, k.shape[-1], v.shape[-1], window, cache_size, q.device)
    scale = resolve_scale(scale, q.shape[-1])
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    n = cache_size + 1

    # 1. the new pair enters the window; the oldest one (c, born at count - window) leaves it
    wk, wv, wvalid = _append(state.window_k, state.window_v, state.window_valid, k, v)
    c_k, c_v, c_valid = wk[:, :, 0], wv[:, :, 0], wvalid[:, 0]
    wk, wv, wvalid = wk[:, :, 1:], wv[:, :, 1:], wvalid[:, 1:]
    c_birth = (state.count - window)[:, None, None].expand(b, h, 1)

    # 2-3. c competes with the sparse cache; the victim folds into the linear state
    cand_k = torch.cat([state.cache_k, c_k[:, :, None]], dim=2)
    cand_v = torch.cat([state.cache_v, c_v[:, :, None]], dim=2)
    cand_valid = torch.cat([state.cache_valid, c_valid[:, None, None].expand(b, h, 1)], dim=2)
    cand_birth = torch.cat([state.cache_birth, c_birth], dim=2)
    cand_phi_k = elu_feature_map(cand_k)
    with torch.no_grad():
        prio = static_priority(selection, cand_birth, state.count)
        vz = torch.cat([cand_v, torch.ones_like(cand_v[..., :1])], dim=-1)
        score, sre = candidate_scores(
            selection, cand_phi_k.detach().reshape(b * h, n, -1), vz.detach().reshape(b * h, n, -1),
            augment(state.S, state.z).detach().reshape(b * h, k.shape[-1], v.shape[-1] + 1),
            None if prio is None else prio.reshape(b * h, n), cand_valid.reshape(b * h, n), need_sre=True,
        )
        victim = torch.argmin(score, dim=-1).view(b, h)
        drop = torch.arange(n, device=q.device) == victim[..., None]
        order = canonical_order(cand_valid, cand_birth, drop)[..., :cache_size]
    f_valid = torch.gather(cand_valid, 2, victim[..., None])[..., 0]
    S, z = fold(state.S, state.z, gather_slots(cand_phi_k, victim), gather_slots(cand_v, victim), f_valid)
    gvalid = torch.gather(cand_valid, 2, order)
    gk = gather_slots(cand_k, order) * gvalid[..., None]
    gv = gather_slots(cand_v, order) * gvalid[..., None]
    gsre = torch.gather(sre.view(b, h, n).pow(2), 2, order) * gvalid
    gbirth = torch.gather(cand_birth, 2, order) * gvalid

    # 4. read out: exact attention over W u G mixed with the linear state
    keys = torch.cat([wk, gk], dim=2)
    values = torch.cat([wv, gv], dim=2)
    valid = torch.cat([wvalid[:, None, :].expand(b, h, window), gvalid], dim=2)
    scores = torch.einsum("bhk,bhnk->bhn", q, keys).mul(scale).masked_fill(~valid, float("-inf"))
    m = score_max(scores)
    p = torch.exp(scores - m[..., None])
    phi_q = elu_feature_map(q)
    o = mix(
        torch.einsum("bhn,bhnv->bhv", p, values), p.sum(-1), m,
        torch.einsum("bhk,bhkv->bhv", phi_q, S), (phi_q * z).sum(-1), gate,
    )
    new_state = LoLAState(S, z, wk, wv, wvalid, gk, gv, gvalid, gsre, gbirth, state.count + 1)
    return o.to(out_dtype), new_state


def lola_attn_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
) -> tuple[torch.Tensor, LoLAState]:
    """LoLA over a sequence, a loop of :func:`lola_attn_step`. o ``[B, T, H, V]``."""
    check_lola_inputs(q, k, v, state, window, cache_size)
    if state is None:
        state = empty_lola_state(q.shape[0], q.shape[2], k.shape[-1], v.shape[-1], window, cache_size, q.device)
    outputs = []
    for t in range(q.shape[1]):
        o, state = lola_attn_step(
            q[:, t], k[:, t], v[:, t], state, window=window, cache_size=cache_size, gate=gate,
            selection=selection, scale=scale,
        )
        outputs.append(o)
    return (torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)), state
