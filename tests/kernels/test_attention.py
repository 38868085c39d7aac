"""Attention family kernels: softmax (growing cache, or capped at max_cache), sliding window, LoLA.

Every chunk form is checked against its token-by-token reference, forward and every gradient
(including the initial cache's) at odd T with a partial last chunk; then the properties that define
each op: softmax equals torch's causal SDPA, capped softmax keeps the newest max_cache pairs and is a
sliding window of that width, a window >= T equals softmax, LoLA keeps the pairs the linear state
recalls worst and reduces to linear attention without window and cache.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.kernels.attention import (
    KVCache, LoLAState, WindowCache, empty_lola_state, lola_attn, lola_attn_reference, lola_attn_step,
    sliding_window_attn, sliding_window_attn_reference, softmax_attn, softmax_attn_reference, softmax_attn_step,
)
from lifelong.kernels.attention.lola_select import hash_uniform
from lifelong.kernels.utils.feature_maps import elu_feature_map
from helpers.tolerances import TOL_CHUNKED, TOL_RECURRENT, assert_close_rms

B, T, H, K, V = 2, 63, 3, 8, 8
CHUNK = 16


def qkv(t: int = T, seed: int = 0, requires_grad: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(B, t, H, d, generator=gen).requires_grad_(requires_grad) for d in (K, K, V)
    ]


def leaf_copy(state):
    """A copy of a state whose float tensors are fresh leaves requiring grad."""
    return type(state)(*[t.detach().clone().requires_grad_(t.is_floating_point()) for t in state])


def run_with_grads(op, state, **kwargs):
    """Output, final state and the gradients of a loss touching o and the final state."""
    q, k, v = qkv(requires_grad=True)
    state = leaf_copy(state)
    o, new = op(q, k, v, state, **kwargs)
    weight = torch.linspace(-1.0, 1.0, o.numel()).view(o.shape)
    loss = (o * weight).sum() + sum(t.pow(2).sum() for t in new if t.is_floating_point())
    loss.backward()
    grads = {"q": q.grad, "k": k.grad, "v": v.grad}
    grads.update({f"state.{name}": t.grad for name, t in zip(state._fields, state) if t.grad is not None})
    return o, new, grads


def assert_same_run(chunk_run, ref_run, tol_out: float = TOL_CHUNKED, tol_grad: float = TOL_CHUNKED) -> None:
    (o_c, s_c, g_c), (o_r, s_r, g_r) = chunk_run, ref_run
    assert_close_rms(o_c, o_r, tol_out, "o")
    for name, a, b in zip(s_r._fields, s_c, s_r):
        assert a.shape == b.shape, f"state.{name}: {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.is_floating_point():
            if b.numel():
                assert_close_rms(a, b, tol_out, f"state.{name}")
        else:
            assert torch.equal(a, b), f"state.{name} differs"
    assert g_c.keys() == g_r.keys()
    for name in g_r:
        assert g_c[name].shape == g_r[name].shape, f"grad {name}"
        if g_r[name].numel():
            assert_close_rms(g_c[name], g_r[name], tol_grad, f"grad {name}")


def warm_kv_cache() -> KVCache:
    q, k, v = qkv(t=7, seed=5)
    _, cache = softmax_attn_reference(q, k, v, None)
    valid = cache.valid.clone()
    valid[0, 1] = False  # an entry cleared by a reset
    return KVCache(cache.k, cache.v, valid)


# ---- softmax attention -----------------------------------------------------------------------------
def test_softmax_chunk_matches_reference_forward_and_gradients():
    cache = warm_kv_cache()
    assert_same_run(
        run_with_grads(softmax_attn, cache, chunk_size=CHUNK),
        run_with_grads(softmax_attn_reference, cache),
    )


def test_softmax_equals_torch_causal_sdpa_on_a_full_sequence():
    q, k, v = qkv()
    o, _ = softmax_attn(q, k, v, None, chunk_size=CHUNK)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    assert_close_rms(o, expected, TOL_RECURRENT, "softmax vs sdpa")


def test_softmax_cache_grows_by_the_tokens_seen():
    q, k, v = qkv(t=10)
    _, cache = softmax_attn(q, k, v, None)
    _, cache = softmax_attn(q, k, v, cache)
    assert cache.k.shape == (B, H, 20, K) and cache.v.shape == (B, H, 20, V) and cache.valid.all()


def test_softmax_ignores_invalid_cache_entries():
    cache = warm_kv_cache()
    q, k, v = qkv(t=9, seed=3)
    o, _ = softmax_attn(q, k, v, cache, chunk_size=4)
    keep = [i for i in range(cache.valid.shape[1]) if i != 1]  # lifetime 0 lost entry 1
    pruned = KVCache(cache.k[:1, :, keep], cache.v[:1, :, keep], cache.valid[:1, keep])
    o0, _ = softmax_attn(q[:1], k[:1], v[:1], pruned, chunk_size=4)
    assert_close_rms(o[:1], o0, TOL_RECURRENT, "invalid entry leaked")


# ---- softmax attention with a cap (max_cache) -------------------------------------------------------
@pytest.mark.parametrize("max_cache", [1, 5, 20, 70])
def test_capped_softmax_chunk_matches_reference_forward_and_gradients(max_cache):
    # the warm cache holds 7 entries: above caps 1 and 5 from the start, 20 is reached mid-sequence,
    # 70 = 7 + T never
    cache = warm_kv_cache()
    assert_same_run(
        run_with_grads(softmax_attn, cache, chunk_size=CHUNK, max_cache=max_cache),
        run_with_grads(softmax_attn_reference, cache, max_cache=max_cache),
    )


def test_capped_softmax_keeps_the_newest_pairs():
    q, k, v = qkv()
    _, full = softmax_attn(q, k, v, None, chunk_size=CHUNK)
    _, capped = softmax_attn(q, k, v, None, chunk_size=CHUNK, max_cache=10)
    assert capped.k.shape == (B, H, 10, K) and capped.v.shape == (B, H, 10, V) and capped.valid.shape == (B, 10)
    assert torch.equal(capped.k, full.k[:, :, -10:]) and torch.equal(capped.v, full.v[:, :, -10:])
    assert capped.k.is_contiguous() and capped.k.untyped_storage().nbytes() == capped.k.numel() * 4, (
        "the evicted pairs must not stay alive behind a view"
    )


def test_capped_softmax_step_evicts_the_oldest_pair_once_full():
    q, k, v = qkv(t=4)
    cache = None
    for t in range(4):
        _, cache = softmax_attn_step(q[:, t], k[:, t], v[:, t], cache, max_cache=3)
        assert cache.k.shape[2] == min(t + 1, 3)
    assert torch.equal(cache.k, k[:, 1:].transpose(1, 2)) and torch.equal(cache.v, v[:, 1:].transpose(1, 2))


def test_capped_softmax_is_a_sliding_window_of_the_cap():
    q, k, v = qkv()
    o_capped, capped = softmax_attn(q, k, v, None, chunk_size=CHUNK, max_cache=9)
    o_window, window = sliding_window_attn(q, k, v, None, window=9, chunk_size=CHUNK)
    assert_close_rms(o_capped, o_window, TOL_RECURRENT, "softmax(max_cache=9) vs window of 9")
    assert torch.equal(capped.k, window.k) and torch.equal(capped.valid, window.valid)


def test_a_cap_the_lifetime_never_reaches_changes_nothing():
    q, k, v = qkv()
    o_free, free = softmax_attn(q, k, v, warm_kv_cache(), chunk_size=CHUNK)
    o_capped, capped = softmax_attn(q, k, v, warm_kv_cache(), chunk_size=CHUNK, max_cache=7 + T)
    assert torch.equal(o_free, o_capped) and all(torch.equal(a, b) for a, b in zip(free, capped))


@pytest.mark.parametrize("max_cache", [0, -3, 2.5])
def test_softmax_rejects_a_cap_below_one_pair(max_cache):
    q, k, v = qkv(t=3)
    with pytest.raises(ValueError, match="max_cache"):
        softmax_attn(q, k, v, None, max_cache=max_cache)
    with pytest.raises(ValueError, match="max_cache"):
        softmax_attn_step(q[:, 0], k[:, 0], v[:, 0], None, max_cache=max_cache)


# ---- sliding window --------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [1, 5, 20])
def test_sliding_window_chunk_matches_reference_forward_and_gradients(window):
    q, k, v = qkv(t=9, seed=7)
    _, cache = sliding_window_attn_reference(q, k, v, None, window=window)
    assert_same_run(
        run_with_grads(sliding_window_attn, cache, window=window, chunk_size=CHUNK),
        run_with_grads(sliding_window_attn_reference, cache, window=window),
    )


def test_sliding_window_at_least_as_long_as_the_sequence_equals_softmax():
    q, k, v = qkv()
    o_window, _ = sliding_window_attn(q, k, v, None, window=T, chunk_size=CHUNK)
    o_full, _ = softmax_attn(q, k, v, None)
    assert_close_rms(o_window, o_full, TOL_RECURRENT, "window >= T vs softmax")


def _fla_naive_attention():
    """fla-core's torch reference ``fla/ops/attn/naive.py``, loaded alone: importing the ``fla``
    package pulls in every op (slow to import); this file needs only torch."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        pytest.skip("fla-core is not installed")
    path = Path(spec.origin).parent / "ops" / "attn" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("_fla_attn_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.naive_parallel_attn


@pytest.mark.parametrize("window", [1, 7, 30])
def test_sliding_window_equals_flash_linear_attention_naive_windowed_attention(window):
    naive_parallel_attn = _fla_naive_attention()
    q, k, v = qkv()
    o, _ = sliding_window_attn(q, k, v, None, window=window, chunk_size=CHUNK)
    expected, _ = naive_parallel_attn(q, k, v, window_size=window)
    assert_close_rms(o, expected, TOL_RECURRENT, "sliding window vs fla naive")


def test_sliding_window_of_one_returns_the_token_value():
    q, k, v = qkv(t=11)
    o, _ = sliding_window_attn(q, k, v, None, window=1)
    assert_close_rms(o, v, TOL_RECURRENT, "window 1")


def test_sliding_window_state_size_is_constant():
    q, k, v = qkv()
    _, short = sliding_window_attn(q[:, :3], k[:, :3], v[:, :3], None, window=8)
    _, long = sliding_window_attn(q, k, v, None, window=8)
    assert isinstance(long, WindowCache)
    assert [t.shape for t in short] == [t.shape for t in long]
    assert long.valid.all() and short.valid.sum() == 3 * B


def test_sliding_window_rejects_a_cache_of_another_size():
    q, k, v = qkv(t=4)
    _, cache = sliding_window_attn(q, k, v, None, window=8)
    with pytest.raises(ValueError, match="WindowCache"):
        sliding_window_attn(q, k, v, cache, window=4)


# ---- LoLA ------------------------------------------------------------------------------------------
def warm_lola_state(window: int, cache_size: int, selection: str, gate: torch.Tensor) -> LoLAState:
    q, k, v = qkv(t=13, seed=11)
    _, state = lola_attn_reference(q, k, v, None, window=window, cache_size=cache_size, gate=gate, selection=selection)
    return state


@pytest.mark.parametrize("selection", ["sre", "recency", "random"])
@pytest.mark.parametrize("window,cache_size", [(4, 3), (0, 5)])
def test_lola_chunk_matches_reference_forward_and_gradients(selection, window, cache_size):
    gate_leaf = torch.tensor([0.2, 0.5, 0.9])
    state = warm_lola_state(window, cache_size, selection, gate_leaf)
    runs = []
    for op, extra in ((lola_attn, {"chunk_size": CHUNK}), (lola_attn_reference, {})):
        gate = gate_leaf.clone().requires_grad_()
        o, new, grads = run_with_grads(
            op, state, window=window, cache_size=cache_size, gate=gate, selection=selection, **extra
        )
        grads["gate"] = gate.grad
        runs.append((o, new, grads))
    assert runs[1][2]["state.S"] is not None and runs[1][2]["state.cache_k"] is not None
    assert_same_run(*runs)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_lola_chunk_matches_reference_with_chunks_shorter_than_the_window(chunk_size):
    # a block's keys reach past the next block when window > chunk_size
    gate_leaf = torch.tensor([0.2, 0.5, 0.9])
    state = warm_lola_state(6, 3, "sre", gate_leaf)
    runs = []
    for op, extra in ((lola_attn, {"chunk_size": chunk_size}), (lola_attn_reference, {})):
        gate = gate_leaf.clone().requires_grad_()
        o, new, grads = run_with_grads(op, state, window=6, cache_size=3, gate=gate, **extra)
        grads["gate"] = gate.grad
        runs.append((o, new, grads))
    assert_same_run(*runs)


def test_lola_chunk_takes_the_step_loops_exact_decisions_over_a_long_stream():
    # full-width heads, many evictions: the chunk form's scan must reproduce the reference's recall
    # errors bit for bit (same cached pairs, same stored SRE), not merely close ones
    gen = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(2, 240, 2, 64, generator=gen) for _ in range(3))
    kwargs = dict(window=8, cache_size=8, gate=torch.tensor([0.3, 0.6]))
    _, ref = lola_attn_reference(q, k, v, None, **kwargs)
    _, chunked = lola_attn(q, k, v, None, chunk_size=32, **kwargs)
    assert ref.cache_valid.all()
    assert torch.equal(chunked.cache_birth, ref.cache_birth)
    assert torch.equal(chunked.cache_sre, ref.cache_sre)
    assert torch.equal(chunked.cache_k, ref.cache_k)


def test_lola_without_window_and_cache_is_linear_attention():
    from lifelong.kernels.gated_linear.reference import LinearAttnState, linear_attn_reference

    q, k, v = qkv()
    state = empty_lola_state(B, H, K, V, 0, 0)
    S0 = torch.rand(B, H, K, V)
    z0 = torch.rand(B, H, K) + 1.0
    state = state._replace(S=S0, z=z0)
    o, new = lola_attn(q, k, v, state, window=0, cache_size=0, gate=torch.tensor([0.1, 0.5, 0.7]))
    o_lin, lin = linear_attn_reference(elu_feature_map(q), elu_feature_map(k), v, LinearAttnState(S0, z0))
    assert_close_rms(o, o_lin, TOL_RECURRENT, "LoLA(0, 0) vs linear attention")
    assert_close_rms(new.S, lin.S, TOL_RECURRENT, "S")
    assert_close_rms(new.z, lin.z, TOL_RECURRENT, "z")


def test_lola_recency_with_zero_gate_is_a_sliding_window_of_window_plus_cache():
    q, k, v = qkv()
    o, _ = lola_attn(q, k, v, None, window=5, cache_size=4, gate=0.0, selection="recency", chunk_size=CHUNK)
    o_window, _ = sliding_window_attn(q, k, v, None, window=9)
    assert_close_rms(o, o_window, TOL_RECURRENT, "recency LoLA vs window 9")


def _sre(k: torch.Tensor, v: torch.Tensor, S: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The test's own SRE of one pair per head: k ``[B, H, K]`` -> ``[B, H]``."""
    phi = F.elu(k) + 1
    pred = torch.einsum("bhk,bhkv->bhv", phi, S) / ((phi * z).sum(-1, keepdim=True) + 1e-6)
    return (pred - v).pow(2).sum(-1)


def test_lola_keeps_the_pair_with_the_highest_self_recall_error():
    # no window, one cache slot: every token, the cached pair and the new one compete and the one the
    # linear state (before this token) recalls worst must be the one left in the cache
    q, k, v = qkv(t=40, seed=2)
    state = empty_lola_state(B, H, K, V, 0, 1)
    for t in range(k.shape[1]):
        new_pair = (k[:, t], v[:, t])
        o, after = lola_attn_step(q[:, t], k[:, t], v[:, t], state, window=0, cache_size=1, gate=0.5)
        if bool(state.cache_valid.all()):
            old = (state.cache_k[:, :, 0], state.cache_v[:, :, 0])
            new_wins = _sre(*new_pair, state.S, state.z) > _sre(*old, state.S, state.z)
            expected_k = torch.where(new_wins[..., None], new_pair[0], old[0])
            assert torch.equal(after.cache_k[:, :, 0], expected_k), f"token {t}"
            folded_k = torch.where(new_wins[..., None], old[0], new_pair[0])
            assert_close_rms(after.z - state.z, elu_feature_map(folded_k), TOL_RECURRENT, "the loser is folded")
        else:
            assert torch.equal(after.cache_k[:, :, 0], k[:, t]), "an empty slot takes the pair"
            assert torch.equal(after.z, state.z), "nothing is folded while the cache has room"
        state = after


@pytest.mark.parametrize("selection,needle_kept", [("sre", True), ("recency", False)])
def test_lola_sre_keeps_a_surprising_value_that_recency_drops(selection, needle_kept):
    # every value is u except one "needle" -u: the linear state predicts u for any key, so the needle
    # has the highest self-recall error and stays cached; recency forgets it after cache_size tokens
    gen = torch.Generator().manual_seed(4)
    t_len, needle_at = 48, 10
    k = torch.randn(1, t_len, 1, K, generator=gen)
    u = torch.ones(V)
    v = u.expand(1, t_len, 1, V).clone()
    v[0, needle_at, 0] = -u
    _, state = lola_attn(k, k, v, None, window=2, cache_size=3, gate=0.5, selection=selection, chunk_size=CHUNK)
    cached = state.cache_v[0, 0][state.cache_valid[0, 0]]
    assert bool((cached == -u).all(-1).any()) == needle_kept
    if needle_kept:
        assert float(state.cache_sre.max()) == pytest.approx(4.0 * V, rel=1e-3)


def test_lola_state_size_is_constant_and_the_cache_fills():
    q, k, v = qkv()
    _, short = lola_attn(q[:, :3], k[:, :3], v[:, :3], None, window=4, cache_size=6, gate=0.5)
    _, long = lola_attn(q, k, v, None, window=4, cache_size=6, gate=0.5)
    assert [t.shape for t in short] == [t.shape for t in long]
    assert [t.dtype for t in short] == [t.dtype for t in long]
    assert not short.cache_valid.any() and long.cache_valid.all() and long.window_valid.all()
    assert torch.equal(long.count, torch.full((B,), T))


def test_lola_random_selection_keeps_a_uniform_sample_of_the_history():
    # fixed pseudo-random priorities per pair: the cache is a uniform sample of every pair that left
    # the window (mean birth near the middle of the stream), where recency keeps the last ones
    q, k, v = qkv(t=400)
    kwargs = dict(window=2, cache_size=8, gate=0.5, chunk_size=100)
    _, rand = lola_attn(q, k, v, None, selection="random", **kwargs)
    _, again = lola_attn(q, k, v, None, selection="random", **kwargs)
    _, recent = lola_attn(q, k, v, None, selection="recency", **kwargs)
    assert torch.equal(rand.cache_k, again.cache_k), "the draw must be reproducible"
    assert rand.cache_valid.all()
    assert abs(float(rand.cache_birth.float().mean()) - 200.0) < 60.0
    assert torch.equal(recent.cache_birth, torch.arange(390, 398).expand(B, H, 8))


def test_hash_uniform_is_spread_over_the_unit_interval():
    birth = torch.arange(4000).view(1, 1, -1).expand(1, 2, 4000)
    u = hash_uniform(birth, 2)
    assert u.shape == (1, 2, 4000) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.01
    assert not torch.equal(u[:, 0], u[:, 1]), "heads draw independently"


def test_lola_rejects_a_state_built_for_other_sizes_and_unknown_selections():
    q, k, v = qkv(t=4)
    state = empty_lola_state(B, H, K, V, 4, 3)
    with pytest.raises(ValueError, match="empty_lola_state"):
        lola_attn(q, k, v, state, window=4, cache_size=2)
    with pytest.raises(ValueError, match="choose one of"):
        lola_attn(q, k, v, state, window=4, cache_size=3, selection="oldest")
    with pytest.raises(ValueError, match="gate"):
        lola_attn(q, k, v, state, window=4, cache_size=3, gate=torch.ones(H + 1))


@pytest.mark.slow
def test_lola_long_stream_stays_finite():
    gen = torch.Generator().manual_seed(9)
    state = None
    for _ in range(50):  # 50 x 2000 = 1e5 tokens
        q, k, v = (3 * torch.randn(1, 2000, 2, 8, generator=gen) for _ in range(3))
        o, state = lola_attn(q, k, v, state, window=4, cache_size=4, gate=0.5)
        assert torch.isfinite(o).all()
    assert all(torch.isfinite(t).all() for t in state if t.is_floating_point())
