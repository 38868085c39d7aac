"""Chunk-parallel torch forms of the attention family (the CPU training path).

Queries are processed in blocks of ``chunk_size`` tokens; inside a block everything is one masked
matmul, so the Python loop runs over T / chunk_size blocks, never over tokens (LoLA's discrete
cache decisions excepted, see :func:`lola_attn_chunk`). Shapes: q, k ``[B, T, H, K]``,
v ``[B, T, H, V]`` -> o ``[B, T, H, V]`` and the cache after the last token. fp32 inside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lifelong.kernels.attention.lola_select import (
    DEN_EPS, RECALL_EPS, augment, canonical_order, check_selection, gather_slots, score_max, static_priority,
)
from lifelong.kernels.attention.states import (
    KVCache, LoLAState, WindowCache, check_max_cache, empty_kv_cache, empty_lola_state, empty_window_cache,
    keep_newest, resolve_scale,
)
from lifelong.kernels.utils.checks import (
    check_chunk_size, check_lola_inputs, check_softmax_attn_inputs, check_window_attn_inputs,
)
from lifelong.kernels.utils.feature_maps import elu_feature_map


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
    scale: float | None = None, chunk_size: int = 64, max_cache: int | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """Causal softmax attention of every new token over [cache | new tokens up to itself].

    With ``max_cache`` = C a token sees only the newest C entries, itself included (the oldest are
    evicted, as by :func:`~lifelong.kernels.attention.reference.softmax_attn_step`): a band of width C
    over [cache | new tokens]. The returned cache is the old one with the T new pairs appended (N
    grows by T), cut to its newest C entries.
    """
    check_softmax_attn_inputs(q, k, v, state)
    check_chunk_size(chunk_size)
    check_max_cache(max_cache)
    b, t_len, h = q.shape[:3]
    if state is None:
        state = empty_kv_cache(b, h, k.shape[-1], v.shape[-1], q.device)
    scale = resolve_scale(scale, q.shape[-1])
    qh, kh, vh = _heads_first(q, k, v)
    n = state.k.shape[2]
    keys = torch.cat([state.k, kh], dim=2)
    values = torch.cat([state.v, vh], dim=2)
    valid = torch.cat([state.valid, torch.ones(b, t_len, dtype=torch.bool, device=q.device)], dim=1)
    outputs = []
    for s in range(0, t_len, chunk_size):
        e = min(s + chunk_size, t_len)
        lo = 0 if max_cache is None else max(n + s - max_cache + 1, 0)  # the block's oldest visible key
        pos = torch.arange(lo, n + e, device=q.device)
        query_pos = (n + torch.arange(s, e, device=q.device))[:, None]
        band = pos[None, :] <= query_pos  # [C, n + e - lo]
        if max_cache is not None:
            band = band & (pos[None, :] > query_pos - max_cache)
        mask = band[None, None] & valid[:, None, None, lo : n + e]
        outputs.append(
            _masked_softmax_block(qh[:, :, s:e], keys[:, :, lo : n + e], values[:, :, lo : n + e], mask, scale)
        )
    o = torch.cat(outputs, dim=2) if outputs else vh
    new_state = KVCache(*(x.contiguous() for x in keep_newest(KVCache(keys, values, valid), max_cache)))
    return o.transpose(1, 2).to(q.dtype), new_state


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
    check_window_attn_inputs(q, k, v, state, window)
    check_chunk_size(chunk_size)
    b, t_len, h = q.shape[:3]
    if state is None:
        state = empty_window_cache(b, h, k.shape[-1], v.shape[-1], window, q.device)
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
def _decision_rows(
    phi_k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, prio: torch.Tensor | None
) -> torch.Tensor:
    """The scan's view of candidate pairs: phi_k ``[N, n, K]``, v ``[N, n, V]``, valid ``[N, n]``,
    prio ``[N, n]`` (None for ``sre``) -> rows ``[N, n, K + 2V + 2]`` = [phi(k) | v | 1 | -v | key].

    Invalid pairs get phi = 0 and -v = 0 (so folding them adds exact zeros and their recall error is
    finite); key is the additive mask of ``sre`` (0 or -inf) or the masked static priority.
    """
    valid_f = valid.to(phi_k.dtype)[..., None]
    neg_v = torch.where(valid[..., None], -v, torch.zeros_like(v))
    key = torch.where(valid, torch.zeros_like(valid_f[..., 0]) if prio is None else prio, float("-inf"))
    return torch.cat([phi_k * valid_f, v, torch.ones_like(valid_f), neg_v, key[..., None]], dim=-1)


def _lola_decisions(
    cand: torch.Tensor, init: torch.Tensor, SZ: torch.Tensor, key_dim: int, value_dim: int, use_sre: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential cache decisions of T tokens, without gradient, on flattened heads (N = B * H).

    cand ``[N, T, F]``: the row (:func:`_decision_rows`) of the pair leaving the window at each token;
    init ``[N, lambda, F]``: the cache before the first token; SZ = [S | z] ``[N, K, V + 1]`` (updated
    in place). The candidates live in lambda + 1 slots (slot lambda starts free); the victim's slot
    takes the next candidate (no shifting). Every token runs a fixed handful of ops on preallocated
    buffers (in inference mode); they repeat ``recall_error_norm`` and ``fold`` of the reference step op
    for op (same shapes, same roundings), so both take bit-identical decisions.
    Returns the victim slot of every token ``[T, N]`` and sqrt(SRE) of the slots at the last token
    ``[N, lambda + 1]``.
    """
    kd, vd = key_dim, value_dim
    nh, t_len, width = cand.shape
    lam = init.shape[1]
    n_slots = lam + 1
    dev = cand.device
    # the outputs live outside inference mode: autograd saves them (as gather indices) later
    victims = torch.empty(t_len, nh, dtype=torch.long, device=dev)
    last_norm = torch.empty(nh, n_slots, device=dev)
    with torch.inference_mode():
        slots = torch.zeros(nh, n_slots, width, device=dev)
        slots[:, :lam] = init
        flat_slots = slots.view(nh * n_slots, width)
        s_neg_v, s_key = slots[..., kd + vd + 1 : kd + 2 * vd + 1], slots[..., -1]
        s_phi = slots[..., :kd].contiguous()  # the matmul operand, laid out as in the reference step
        flat_phi = s_phi.view(nh * n_slots, kd)
        base = torch.arange(nh, device=dev) * n_slots
        flat = base + lam  # the free slot of each head, flattened
        out = torch.empty(nh, n_slots, vd + 1, device=dev)
        out_v, out_z = out[..., :vd], out[..., vd:]
        den = torch.empty(nh, n_slots, 1, device=dev)
        diff = torch.empty(nh, n_slots, vd, device=dev)
        norm = torch.empty(nh, n_slots, device=dev)
        score = torch.empty(nh, n_slots, device=dev)
        outer = torch.empty(nh, kd, vd + 1, device=dev)
        row = torch.empty(nh, width, device=dev)  # the victim's row
        row_phi, row_vz = row[:, :kd, None], row[:, None, kd : kd + vd + 1]
        eps = torch.tensor(RECALL_EPS, device=dev)  # the float32 value a Python scalar add would use
        cand_rows, victim_rows = cand.unbind(1), victims.unbind(0)
        cand_phi_rows = cand[..., :kd].contiguous().unbind(1)

        def recall_error_norm_() -> None:  # recall_error_norm of lola_select, into `norm`
            torch.bmm(s_phi, SZ, out=out)
            torch.add(out_z, eps, out=den)
            torch.addcdiv(s_neg_v, out_v, den, out=diff)  # pred - v, the same rounding
            torch.linalg.vector_norm(diff, dim=-1, out=norm)

        for t in range(t_len):
            flat_slots.index_copy_(0, flat, cand_rows[t])
            flat_phi.index_copy_(0, flat, cand_phi_rows[t])
            if use_sre:
                recall_error_norm_()
                torch.add(norm, s_key, out=score)  # sqrt(SRE) where valid, -inf where not
                torch.argmin(score, dim=-1, out=victim_rows[t])
            else:
                if t == t_len - 1:
                    recall_error_norm_()
                torch.argmin(s_key, dim=-1, out=victim_rows[t])
            torch.add(base, victim_rows[t], out=flat)
            torch.index_select(flat_slots, 0, flat, out=row)  # the victim (phi = 0 if invalid): fold it
            torch.mul(row_phi, row_vz, out=outer)
            SZ.add_(outer)
        last_norm.copy_(norm)
    return victims, last_norm


def _slot_stamps(victims: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Which candidate each slot holds: victims ``[T, N]`` -> stamps ``[T, N, lambda + 1]``, the token
    whose candidate the slot holds at token t (after that token's insertion), -1 for the initial cache."""
    t_len, nh = victims.shape
    dev = victims.device
    free = torch.cat([torch.full((1, nh), n_slots - 1, dtype=torch.long, device=dev), victims[:-1]])
    steps = torch.arange(t_len, device=dev)[:, None, None]
    hit = free[..., None] == torch.arange(n_slots, device=dev)
    return torch.where(hit, steps, -1).cummax(dim=0).values


def lola_attn_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor, selection: str = "sre", scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, LoLAState]:
    """LoLA over a sequence with exactly the per-token semantics of the reference loop.

    Two passes. (1) A no-grad scan over tokens takes the discrete decisions (which pair is folded at
    each token): about ten small in-place ops per token on detached copies. The decisions cannot be
    parallelised exactly (each SRE depends on the previous folds), but they carry no gradient.
    (2) One batched pass over all blocks of ``chunk_size`` queries computes every output and the new
    state from those decisions, with gradients. Block n (tokens s..e-1) reads the keys
    [its lambda + 1 slots at the block start | sequence positions s .. e - 1 + eta] (the window and
    every pair that leaves it during the block); per query, a mask says which keys are in its window
    or cache (softmax part) and which were folded inside the block (causal linear part); the linear
    state at each block start is a cumulative sum of the blocks' folds. gate ``[H]`` in [0, 1].
    Returns o ``[B, T, H, V]`` and the state after the last token.
    """
    check_lola_inputs(q, k, v, state, window, cache_size)
    check_selection(selection)
    check_chunk_size(chunk_size)
    b, t_len, h = q.shape[:3]
    kd, vd = k.shape[-1], v.shape[-1]
    eta, lam = window, cache_size
    if state is None:
        state = empty_lola_state(b, h, kd, vd, eta, lam, q.device)
    if t_len == 0:
        return v.new_zeros(v.shape), state
    scale = resolve_scale(scale, kd)
    qh, kh, vh = _heads_first(q, k, v)
    dev = q.device
    nh, n_slots = b * h, lam + 1
    count = state.count

    # sequence = [window cache | new]: position p leaves the window at token p (born count - eta + p);
    # ext = [initial cache | sequence] indexes every pair a slot can hold
    seq_k = torch.cat([state.window_k, kh], dim=2)  # [B, H, eta + T, K]
    seq_v = torch.cat([state.window_v, vh], dim=2)
    seq_valid = torch.cat([state.window_valid, torch.ones(b, t_len, dtype=torch.bool, device=dev)], dim=1)
    seq_birth = count[:, None] - eta + torch.arange(eta + t_len, device=dev)
    ext_k = torch.cat([state.cache_k, seq_k], dim=2)  # [B, H, lam + eta + T, K]
    ext_v = torch.cat([state.cache_v, seq_v], dim=2)
    ext_valid = torch.cat([state.cache_valid, seq_valid[:, None].expand(b, h, eta + t_len)], dim=2)
    ext_birth = torch.cat([state.cache_birth, seq_birth[:, None].expand(b, h, eta + t_len)], dim=2)

    # (1) decisions
    n_cand = lam + t_len
    with torch.no_grad():
        prio = static_priority(selection, ext_birth[:, :, :n_cand], count)
        rows = _decision_rows(
            elu_feature_map(ext_k[:, :, :n_cand].detach()).reshape(nh, n_cand, kd),
            ext_v[:, :, :n_cand].detach().reshape(nh, n_cand, vd), ext_valid[:, :, :n_cand].reshape(nh, n_cand),
            None if prio is None else prio.reshape(nh, n_cand),
        )
        SZ = augment(state.S, state.z).detach().reshape(nh, kd, vd + 1).clone()
        victims, sre = _lola_decisions(rows[:, lam:], rows[:, :lam], SZ, kd, vd, selection == "sre")
        stamps = _slot_stamps(victims, n_slots).view(t_len, b, h, n_slots).permute(1, 2, 0, 3)  # [B, H, T, S]
        victim = victims.view(t_len, b, h).permute(1, 2, 0)  # [B, H, T]
        slot_ext = torch.where(stamps >= 0, stamps + lam, torch.arange(n_slots, device=dev))
        slot_valid = torch.gather(ext_valid, 2, slot_ext.reshape(b, h, -1)).view(b, h, t_len, n_slots)
        is_victim = torch.arange(n_slots, device=dev) == victim[..., None]
        in_cache = slot_valid & ~is_victim

        # block geometry: C queries per block, keys [S start slots | C + eta sequence positions]
        c = min(chunk_size, t_len)
        n_blocks = -(-t_len // c)
        pad = n_blocks * c - t_len
        n_keys = n_slots + c + eta
        start = (torch.arange(t_len, device=dev) // c * c)[:, None]  # [T, 1]
        col = torch.where(stamps >= start, stamps - start + n_slots, torch.arange(n_slots, device=dev))
        m_cache = torch.zeros(b, h, t_len + pad, n_keys, dtype=torch.bool, device=dev)
        m_cache[:, :, :t_len].scatter_(3, col, in_cache)
        fold_col = torch.gather(col, 3, victim[..., None])
        fold_w = torch.gather(slot_valid, 3, victim[..., None]).float()
        m_lin = torch.zeros(b, h, t_len + pad, n_keys, device=dev)
        m_lin[:, :, :t_len].scatter_(3, fold_col, fold_w)
        m_lin = m_lin.view(b, h, n_blocks, c, n_keys).cumsum(3)  # key folded at or before the query
        # window: query i of a block sees sequence positions i + 1 .. i + eta of the block's slice
        i = torch.arange(c, device=dev)[:, None]
        j = torch.arange(c + eta, device=dev)[None, :]
        band = (j > i) & (j <= i + eta)
        seq_valid_blocks = torch.cat([seq_valid, seq_valid.new_zeros(b, pad)], dim=1).unfold(1, c + eta, c)
        win = band & seq_valid_blocks[:, None, :, None, :]  # [B, 1, n_blocks, C, C + eta]
        m_soft = m_cache.view(b, h, n_blocks, c, n_keys)
        m_soft = torch.cat([m_soft[..., :n_slots], m_soft[..., n_slots:] | win], dim=-1)
        # slots at each block start: after token s - 1 (the initial cache for the first block)
        first = torch.arange(n_slots, device=dev).expand(b, h, 1, n_slots)
        start_ext = torch.cat([first, slot_ext[:, :, c - 1 : (n_blocks - 1) * c : c]], dim=2)
        start_ext = start_ext.reshape(b, h, n_blocks * n_slots)

    # (2) outputs, with gradients, every block at once
    def block_keys(ext: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[B, H, n_blocks, n_keys, D]: each block's start slots, then its sequence slice."""
        d = seq.shape[-1]
        start_x = gather_slots(ext, start_ext).view(b, h, n_blocks, n_slots, d)
        if eta <= c:  # the slice is the block itself and the head of the next one: views, no unfold
            seq_x = F.pad(seq, (0, 0, 0, c - eta + pad)).view(b, h, n_blocks + 1, c, d)
            return torch.cat([start_x, seq_x[:, :, :-1], seq_x[:, :, 1:, :eta]], dim=3)
        seq_x = F.pad(seq, (0, 0, 0, pad)).unfold(2, c + eta, c).transpose(-1, -2)
        return torch.cat([start_x, seq_x], dim=3)

    phi_seq = elu_feature_map(seq_k)
    keys, values = block_keys(ext_k, seq_k), block_keys(ext_v, seq_v)
    phi_keys = block_keys(torch.cat([elu_feature_map(state.cache_k), phi_seq], dim=2), phi_seq)
    qb = F.pad(qh, (0, 0, 0, pad)).view(b, h, n_blocks, c, kd)
    scores = ((qb * scale) @ keys.transpose(-1, -2)).masked_fill(~m_soft, float("-inf"))
    m = score_max(scores)  # [B, H, n_blocks, C]
    phi_q = elu_feature_map(qb)
    folded = phi_keys * m_lin[..., -1, :, None]  # the keys folded inside each block
    S_cum = torch.cumsum(torch.cat([state.S[:, :, None], folded.transpose(-1, -2) @ values], dim=2), dim=2)
    z_cum = torch.cumsum(torch.cat([state.z[:, :, None], folded.sum(3)], dim=2), dim=2)
    # mix (lola_select.mix) with both parts' weights on the block keys summed before one matmul
    g = gate.view(1, -1, 1, 1).to(qb.dtype)
    w_lin = g * torch.exp(-m)
    weights = (1 - g)[..., None] * torch.exp(scores - m[..., None]) + w_lin[..., None] * (
        (phi_q @ phi_keys.transpose(-1, -2)) * m_lin
    )
    num = weights @ values + w_lin[..., None] * (phi_q @ S_cum[:, :, :-1])
    den = weights.sum(-1) + w_lin * (phi_q @ z_cum[:, :, :-1, :, None])[..., 0] + DEN_EPS
    o = (num / den[..., None]).view(b, h, n_blocks * c, vd)[:, :, :t_len]
    o = o.transpose(1, 2).to(q.dtype)

    # final cache: the slots after the last token but the victim's, in canonical order
    last_ext, last_valid = slot_ext[:, :, -1], in_cache[:, :, -1]
    last_birth = torch.gather(ext_birth, 2, last_ext)
    order = canonical_order(last_valid, last_birth, is_victim[:, :, -1])[..., :lam]
    final_ext = torch.gather(last_ext, 2, order)
    gvalid = torch.gather(last_valid, 2, order)
    new_state = LoLAState(
        S=S_cum[:, :, -1], z=z_cum[:, :, -1],
        window_k=seq_k[:, :, t_len:], window_v=seq_v[:, :, t_len:], window_valid=seq_valid[:, t_len:],
        cache_k=gather_slots(ext_k, final_ext) * gvalid[..., None],
        cache_v=gather_slots(ext_v, final_ext) * gvalid[..., None],
        cache_valid=gvalid,
        cache_sre=torch.gather(sre.view(b, h, n_slots).pow(2), 2, order) * gvalid,
        cache_birth=torch.gather(last_birth, 2, order) * gvalid,
        count=count + t_len,
    )
    return o, new_state
