"""Chunk-parallel torch forms of the attention family (the CPU training path).

Queries are processed in blocks of ``chunk_size`` tokens; inside a block everything is one masked
matmul, so the Python loop runs over T / chunk_size blocks, never over tokens (LoLA's discrete
cache decisions excepted, see :func:`lola_attn_chunk`). Shapes: q, k ``[B, T, H, K]``,
v ``[B, T, H, V]`` -> o ``[B, T, H, V]`` and the cache after the last token. fp32 inside.
"""
from __future__ import annotations

import torch

from kernels.attention.lola_select import (
    augment, candidate_scores, canonical_order, check_selection, feature_map, gather_slots, mix,
    score_max, static_priority,
)
from kernels.attention.states import (
    KVCache, LoLAState, WindowCache, check_cache, check_lola_state, check_qkv, empty_kv_cache,
    empty_lola_state, empty_window_cache, resolve_scale,
)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _heads_first(*xs: torch.Tensor) -> list[torch.Tensor]:
    """``[B, T, H, D]`` -> ``[B, H, T, D]`` fp32."""
    return [x.float().transpose(1, 2) for x in xs]


def _masked_softmax_block(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """q ``[B, H, C, K]``, keys ``[B, H, L, K]``, values ``[B, H, L, V]``, mask broadcastable to
    ``[B, H, C, L]`` (every row has a True) -> ``[B, H, C, V]``."""
    scores = (q @ keys.transpose(-1, -2)) * scale
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return weights @ values


# ---- softmax attention -----------------------------------------------------------------------------
def softmax_attn_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache | None, *,
    scale: float | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, KVCache]:
    """Causal softmax attention of every new token over [cache | new tokens up to itself].

    The returned cache is the old one with the T new pairs appended (N grows by T).
    """
    check_qkv(q, k, v)
    _check_chunk_size(chunk_size)
    b, t_len, h = q.shape[:3]
    if state is None:
        state = empty_kv_cache(b, h, k.shape[-1], v.shape[-1], q.device)
    check_cache("KVCache", *state, k, v)
    scale = resolve_scale(scale, q.shape[-1])
    qh, kh, vh = _heads_first(q, k, v)
    n = state.k.shape[2]
    keys = torch.cat([state.k, kh], dim=2)
    values = torch.cat([state.v, vh], dim=2)
    valid = torch.cat([state.valid, torch.ones(b, t_len, dtype=torch.bool, device=q.device)], dim=1)
    outputs = []
    for s in range(0, t_len, chunk_size):
        e = min(s + chunk_size, t_len)
        pos = torch.arange(n + e, device=q.device)
        causal = pos[None, :] <= (n + torch.arange(s, e, device=q.device))[:, None]  # [C, N + e]
        mask = causal[None, None] & valid[:, None, None, : n + e]
        outputs.append(_masked_softmax_block(qh[:, :, s:e], keys[:, :, : n + e], values[:, :, : n + e], mask, scale))
    o = torch.cat(outputs, dim=2) if outputs else vh
    return o.transpose(1, 2).to(q.dtype), KVCache(keys, values, valid)


# ---- sliding-window attention ----------------------------------------------------------------------
def _band_mask(c: int, window: int, device: torch.device) -> torch.Tensor:
    """Query i of a block sees local key j of the block's key slice iff i <= j <= i + window - 1:
    ``[C, C + window - 1]``."""
    i = torch.arange(c, device=device)[:, None]
    j = torch.arange(c + window - 1, device=device)[None, :]
    return (j >= i) & (j <= i + window - 1)


def sliding_window_attn_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowCache | None, *, window: int,
    scale: float | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, WindowCache]:
    """Softmax over the last ``window`` pairs (the token itself included), via a banded mask over
    [window cache | new tokens]. The returned cache holds the last ``window`` pairs."""
    check_qkv(q, k, v)
    _check_chunk_size(chunk_size)
    if window < 1:
        raise ValueError(f"window must be >= 1 (the token itself), got {window}")
    b, t_len, h = q.shape[:3]
    if state is None:
        state = empty_window_cache(b, h, k.shape[-1], v.shape[-1], window, q.device)
    check_cache("WindowCache", *state, k, v, size=window)
    scale = resolve_scale(scale, q.shape[-1])
    qh, kh, vh = _heads_first(q, k, v)
    # token t (0-based among the new ones) sees positions t+1 .. t+window of seq = [cache | new]
    seq_k = torch.cat([state.k, kh], dim=2)
    seq_v = torch.cat([state.v, vh], dim=2)
    seq_valid = torch.cat([state.valid, torch.ones(b, t_len, dtype=torch.bool, device=q.device)], dim=1)
    outputs = []
    for s in range(0, t_len, chunk_size):
        e = min(s + chunk_size, t_len)
        lo, hi = s + 1, e + window  # key slice of the block
        mask = _band_mask(e - s, window, q.device)[None, None] & seq_valid[:, None, None, lo:hi]
        outputs.append(_masked_softmax_block(qh[:, :, s:e], seq_k[:, :, lo:hi], seq_v[:, :, lo:hi], mask, scale))
    o = torch.cat(outputs, dim=2) if outputs else vh
    new_state = WindowCache(seq_k[:, :, t_len:], seq_v[:, :, t_len:], seq_valid[:, t_len:])
    return o.transpose(1, 2).to(q.dtype), new_state


# ---- LoLA ------------------------------------------------------------------------------------------
def _lola_scan(
    pool_phi_k: torch.Tensor, pool_v: torch.Tensor, pool_valid: torch.Tensor, pool_prio: torch.Tensor | None,
    SZ: torch.Tensor, window: int, cache_size: int, t_len: int, selection: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sequential cache decisions of T tokens, without gradient, on flattened heads (N = B * H).

    The pool holds every pair the T tokens can touch: [window (eta) | cache (lambda) | new (T)],
    pool_phi_k ``[N, P, K]``, pool_v ``[N, P, V]``, pool_valid ``[N, P]``, pool_prio ``[N, P]`` (the
    static priority, None for ``sre``), SZ = [S | z] ``[N, K, V + 1]``. The candidates live in
    lambda + 1 slots; the victim's slot takes the next pair leaving the window (no shifting).
    Returns, per token: the slots' pool indices ``[T, N, lambda + 1]``, their validity
    ``[T, N, lambda + 1]``, the victim slot ``[T, N]``; and sqrt(SRE) of the slots at the last token.
    """
    eta, lam = window, cache_size
    nh, _, kd = pool_phi_k.shape
    vd = pool_v.shape[-1]
    dev = pool_phi_k.device
    with torch.no_grad():
        pool_vz = torch.cat([pool_v, torch.ones_like(pool_v[..., :1])], dim=-1)
        s_phi = torch.zeros(nh, lam + 1, kd, device=dev)
        s_vz = torch.zeros(nh, lam + 1, vd + 1, device=dev)
        s_valid = torch.zeros(nh, lam + 1, dtype=torch.bool, device=dev)
        s_idx = torch.zeros(nh, lam + 1, dtype=torch.long, device=dev)
        s_phi[:, :lam] = pool_phi_k[:, eta : eta + lam]
        s_vz[:, :lam] = pool_vz[:, eta : eta + lam]
        s_valid[:, :lam] = pool_valid[:, eta : eta + lam]
        s_idx[:, :lam] = torch.arange(eta, eta + lam, device=dev)
        s_prio = None
        if pool_prio is not None:
            s_prio = torch.zeros(nh, lam + 1, device=dev)
            s_prio[:, :lam] = pool_prio[:, eta : eta + lam]
        rows = torch.arange(nh, device=dev)
        free = torch.full((nh,), lam, dtype=torch.long, device=dev)
        rec_idx = torch.empty(t_len, nh, lam + 1, dtype=torch.long, device=dev)
        rec_valid = torch.empty(t_len, nh, lam + 1, dtype=torch.bool, device=dev)
        rec_victim = torch.empty(t_len, nh, dtype=torch.long, device=dev)
        sre = None
        for t in range(t_len):
            c = t if t < eta else lam + t  # pool index of the pair leaving the window
            s_phi[rows, free] = pool_phi_k[:, c]
            s_vz[rows, free] = pool_vz[:, c]
            s_valid[rows, free] = pool_valid[:, c]
            s_idx[rows, free] = c
            if s_prio is not None:
                s_prio[rows, free] = pool_prio[:, c]
            score, sre = candidate_scores(selection, s_phi, s_vz, SZ, s_prio, s_valid, need_sre=t == t_len - 1)
            victim = torch.argmin(score, dim=-1)
            f_phi = s_phi[rows, victim] * s_valid[rows, victim][:, None]
            SZ = SZ + f_phi[:, :, None] * s_vz[rows, victim][:, None, :]
            rec_idx[t] = s_idx
            rec_valid[t] = s_valid
            rec_victim[t] = victim
            free = victim
    return rec_idx, rec_valid, rec_victim, sre


def lola_attn_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, LoLAState]:
    """LoLA over a sequence with exactly the per-token semantics of the reference loop.

    Two passes. (1) A no-grad scan over tokens takes the discrete decisions (which pair is folded,
    which pairs are cached after each token): about twenty small ops per token on detached copies.
    The decisions cannot be parallelised exactly (each SRE depends on the previous folds), but they
    carry no gradient. (2) A chunk-parallel pass computes every output and the new state from those
    decisions with gradients: per block of ``chunk_size`` queries, banded attention over the window,
    gathered attention over each token's cache slots, and causal linear attention over the folded
    pairs. gate ``[H]`` in [0, 1]. Returns o ``[B, T, H, V]`` and the state after the last token.
    """
    check_qkv(q, k, v)
    check_selection(selection)
    _check_chunk_size(chunk_size)
    b, t_len, h = q.shape[:3]
    kd, vd = k.shape[-1], v.shape[-1]
    eta, lam = window, cache_size
    if state is None:
        state = empty_lola_state(b, h, kd, vd, eta, lam, q.device)
    check_lola_state(state, k, v, eta, lam)
    if t_len == 0:
        return v.new_zeros(v.shape), state
    scale = resolve_scale(scale, kd)
    qh, kh, vh = _heads_first(q, k, v)
    dev = q.device
    nh, n_slots = b * h, lam + 1
    ones = torch.ones(b, h, t_len, dtype=torch.bool, device=dev)
    count = state.count

    pool_k = torch.cat([state.window_k, state.cache_k, kh], dim=2)  # [B, H, P, K]
    pool_v = torch.cat([state.window_v, state.cache_v, vh], dim=2)
    pool_valid = torch.cat([state.window_valid[:, None].expand(b, h, eta), state.cache_valid, ones], dim=2)
    steps = torch.arange(t_len, device=dev)
    window_birth = (count[:, None] - eta + torch.arange(eta, device=dev))[:, None].expand(b, h, eta)
    pool_birth = torch.cat([window_birth, state.cache_birth, (count[:, None] + steps)[:, None].expand(b, h, t_len)], 2)
    pool_phi_k = feature_map(pool_k)
    prio = static_priority(selection, pool_birth, count)
    n_pool = pool_k.shape[2]

    rec_idx, rec_valid, rec_victim, sre = _lola_scan(
        pool_phi_k.detach().reshape(nh, n_pool, kd), pool_v.detach().reshape(nh, n_pool, vd),
        pool_valid.reshape(nh, n_pool), None if prio is None else prio.reshape(nh, n_pool),
        augment(state.S, state.z).detach().reshape(nh, kd, vd + 1), eta, lam, t_len, selection,
    )
    # per token t: cache slots [B, H, T, lam + 1] (the victim slot excluded), folded pair [B, H, T]
    slot_idx = rec_idx.view(t_len, b, h, n_slots).permute(1, 2, 0, 3)
    victim = rec_victim.view(t_len, b, h).permute(1, 2, 0)
    is_victim = torch.arange(n_slots, device=dev) == victim[..., None]
    slot_valid = rec_valid.view(t_len, b, h, n_slots).permute(1, 2, 0, 3)
    fold_idx = torch.gather(slot_idx, 3, victim[..., None])[..., 0]
    fold_w = torch.gather(slot_valid, 3, victim[..., None])[..., 0].to(pool_phi_k.dtype)
    slot_valid = slot_valid & ~is_victim

    # window sequence [window cache | new]: token t sees positions t+1 .. t+eta
    seq_k = torch.cat([state.window_k, kh], dim=2)
    seq_v = torch.cat([state.window_v, vh], dim=2)
    seq_valid = torch.cat([state.window_valid, ones[:, 0]], dim=1)
    S, z = state.S, state.z
    outputs = []
    for s in range(0, t_len, chunk_size):
        e = min(s + chunk_size, t_len)
        c = e - s
        qb = qh[:, :, s:e]
        phi_q = feature_map(qb)
        # exact part: banded scores over the window, gathered scores over the cache slots
        idx = slot_idx[:, :, s:e].reshape(b, h, c * n_slots)
        ck = gather_slots(pool_k, idx).view(b, h, c, n_slots, kd)
        cv = gather_slots(pool_v, idx).view(b, h, c, n_slots, vd)
        cache_scores = (torch.einsum("bhck,bhclk->bhcl", qb, ck) * scale).masked_fill(
            ~slot_valid[:, :, s:e], float("-inf")
        )
        if eta > 0:
            lo, hi = s + 1, e + eta
            mask = _band_mask(c, eta, dev)[None, None] & seq_valid[:, None, None, lo:hi]
            win_scores = ((qb @ seq_k[:, :, lo:hi].transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf"))
            m = score_max(torch.cat([win_scores, cache_scores], dim=-1))
            p_win = torch.exp(win_scores - m[..., None])
            p_cache = torch.exp(cache_scores - m[..., None])
            num_soft = p_win @ seq_v[:, :, lo:hi] + torch.einsum("bhcl,bhclv->bhcv", p_cache, cv)
            den_soft = p_win.sum(-1) + p_cache.sum(-1)
        else:
            m = score_max(cache_scores)
            p_cache = torch.exp(cache_scores - m[..., None])
            num_soft = torch.einsum("bhcl,bhclv->bhcv", p_cache, cv)
            den_soft = p_cache.sum(-1)
        # linear part: causal linear attention over the pairs folded at tokens s..e-1 (own one included)
        fk = gather_slots(pool_phi_k, fold_idx[:, :, s:e]) * fold_w[:, :, s:e, None]
        fv = gather_slots(pool_v, fold_idx[:, :, s:e])
        attn = (phi_q @ fk.transpose(-1, -2)).tril()
        lin_num = phi_q @ S + attn @ fv
        lin_den = (phi_q * z[:, :, None]).sum(-1) + attn.sum(-1)
        S = S + fk.transpose(-1, -2) @ fv
        z = z + fk.sum(2)
        outputs.append(mix(num_soft, den_soft, m, lin_num, lin_den, gate))
    o = torch.cat(outputs, dim=2).transpose(1, 2).to(q.dtype)

    # final cache: the slots after the last token but the victim's, in canonical order
    last_idx, last_valid = slot_idx[:, :, -1], slot_valid[:, :, -1]
    last_birth = torch.gather(pool_birth, 2, last_idx)
    order = canonical_order(last_valid, last_birth, is_victim[:, :, -1])[..., :lam]
    final_idx = torch.gather(last_idx, 2, order)
    gvalid = torch.gather(last_valid, 2, order)
    new_state = LoLAState(
        S=S, z=z,
        window_k=seq_k[:, :, t_len:], window_v=seq_v[:, :, t_len:], window_valid=seq_valid[:, t_len:],
        cache_k=gather_slots(pool_k, final_idx) * gvalid[..., None],
        cache_v=gather_slots(pool_v, final_idx) * gvalid[..., None],
        cache_valid=gvalid,
        cache_sre=torch.gather(sre.view(b, h, n_slots).pow(2), 2, order) * gvalid,
        cache_birth=torch.gather(last_birth, 2, order) * gvalid,
        count=count + t_len,
    )
    return o, new_state
