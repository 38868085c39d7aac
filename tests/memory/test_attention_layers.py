"""The attention-family mixers as layers: softmax (growing cache, capped at max_cache), sliding window, LoLA.

The generic contract (step == forward, splits, resets, gradients) is in test_contract.py; these
tests pin what is specific to each layer.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from lifelong.kernels.attention import KVCache
from lifelong.kernels.gated_linear.reference import linear_attn_reference
from lifelong.kernels.utils.feature_maps import elu_feature_map as feature_map
from lifelong.memory_layers.lola import LoLA
from lifelong.memory_layers.registry import build_backbone, build_mixer, load_memory_config
from lifelong.memory_layers.sliding_window import SlidingWindowAttention
from lifelong.memory_layers.softmax_attention import CacheCapWarning, SoftmaxAttention
from lifelong.memory_layers.state import state_nbytes

from helpers.tolerances import TOL_RECURRENT, assert_close_rms

D, HEADS = 32, 4


def tokens(t: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, t, D, generator=torch.Generator().manual_seed(seed))


def copy_projections(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


def test_configs_build_the_three_layers_with_their_defaults():
    softmax = build_mixer(load_memory_config("softmax"), D)
    window = build_mixer(load_memory_config("sliding_window"), D)
    lola = build_mixer(load_memory_config("lola"), D)
    assert isinstance(softmax, SoftmaxAttention) and not softmax.parametric
    assert isinstance(window, SlidingWindowAttention) and window.parametric and window.window == 64
    assert isinstance(lola, LoLA) and lola.parametric and (lola.window, lola.cache_size) == (16, 16)
    assert lola.selection == "sre" and softmax.num_heads == window.num_heads == lola.num_heads == 4
    assert softmax.max_cache == 4096  # bounded by default; memory.max_cache=null lifts the cap


# ---- softmax ---------------------------------------------------------------------------------------
def test_softmax_cache_grows_with_every_token():
    layer = SoftmaxAttention(D, HEADS)
    with torch.no_grad():
        _, state = layer(tokens(7), layer.init_state(2, "cpu"))
        _, state = layer.step(tokens(1)[:, 0], state)
    assert state.k.shape[2] == 8 and state.valid.all()
    assert layer.state_metrics(state)["cache_tokens"] == 8.0


def test_softmax_without_a_cap_keeps_every_pair():
    cfg = load_memory_config("softmax")
    cfg.max_cache = None  # memory.max_cache=null: the unbounded nonparametric reference
    layer = build_mixer(cfg, D)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", CacheCapWarning)
        _, state = layer(tokens(300), layer.init_state(2, "cpu"))
    assert layer.max_cache is None and state.k.shape[2] == 300


def test_softmax_at_its_cap_evicts_the_oldest_pairs_and_warns_once():
    layer = SoftmaxAttention(D, HEADS, max_cache=10)
    x = tokens(40)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, state = layer(x[:, :9], layer.init_state(2, "cpu"))
        assert not caught, "no warning below the cap"
        for t in range(9, 20):  # reaches the cap at token 10, then evicts
            _, state = layer.step(x[:, t], state)
        _, state = layer(x[:, 20:], state)
        newest_keys = layer.split_heads(layer.k_proj(x[:, -10:])).transpose(1, 2)  # [B, H, 10, K]
    assert state.k.shape[2] == 10 and torch.allclose(state.k, newest_keys)
    assert len(caught) == 1 and caught[0].category is CacheCapWarning
    message = str(caught[0].message)
    assert "max_cache=10" in message and "memory.max_cache=null" in message and "\n" not in message


def test_softmax_state_metrics_report_cached_tokens_and_their_bytes():
    layer = SoftmaxAttention(D, HEADS, max_cache=12)
    per_token = 2 * (HEADS * 2 * (D // HEADS) * 4 + 1)  # 2 lifetimes x (fp32 k and v of every head + valid)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheCapWarning)
        _, state = layer(tokens(5), layer.init_state(2, "cpu"))
        few = layer.state_metrics(state)
        _, state = layer(tokens(40, seed=1), state)
        full = layer.state_metrics(state)
    assert (few["cache_tokens"], few["state_bytes"]) == (5.0, 5.0 * per_token)
    assert (full["cache_tokens"], full["state_bytes"]) == (12.0, 12.0 * per_token)


def test_softmax_cache_size_reaches_the_tracker_for_every_layer():
    # the tracker logs each entry of Backbone.state_metrics as memory/<layer>/<metric>
    cfg = load_memory_config("softmax")
    cfg.max_cache = 6
    backbone = build_backbone(cfg, D, num_layers=2, mlp_ratio=2.0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheCapWarning)
        _, state = backbone(tokens(9), backbone.init_state(2, "cpu"))
    metrics = backbone.state_metrics(state)
    assert {layer: m["cache_tokens"] for layer, m in metrics.items()} == {"layer0": 6.0, "layer1": 6.0}
    assert all(m["state_bytes"] > 0 for m in metrics.values())


def test_softmax_reset_invalidates_rows_and_drops_entries_nobody_sees():
    layer = SoftmaxAttention(D, HEADS)
    with torch.no_grad():
        _, state = layer(tokens(5), layer.init_state(2, "cpu"))
    one = layer.reset_state(state, torch.tensor([True, False]))
    assert isinstance(one, KVCache) and one.k.shape[2] == 5
    assert not one.valid[0].any() and one.valid[1].all()
    both = layer.reset_state(one, torch.tensor([False, True]))
    assert both.k.shape[2] == 0 and both.valid.shape == (2, 0)


# ---- sliding window --------------------------------------------------------------------------------
def test_sliding_window_layer_with_a_long_window_equals_softmax_layer():
    window = SlidingWindowAttention(D, HEADS, window=40, chunk_size=8)
    softmax = SoftmaxAttention(D, HEADS)
    copy_projections(window, softmax)
    x = tokens(33)
    with torch.no_grad():
        y_w, _ = window(x, window.init_state(2, "cpu"))
        y_s, _ = softmax(x, softmax.init_state(2, "cpu"))
    assert_close_rms(y_w, y_s, TOL_RECURRENT, "window >= T vs softmax")


def test_sliding_window_layer_state_bytes_do_not_grow():
    layer = SlidingWindowAttention(D, HEADS, window=8)
    with torch.no_grad():
        _, short = layer(tokens(3), layer.init_state(2, "cpu"))
        _, long = layer(tokens(50), layer.init_state(2, "cpu"))
    assert state_nbytes(short) == state_nbytes(long)
    assert layer.state_metrics(short)["window_occupancy"] == pytest.approx(3 / 8)
    assert layer.state_metrics(long)["window_occupancy"] == 1.0


# ---- LoLA ------------------------------------------------------------------------------------------
def test_lola_metrics_report_cache_occupancy_and_mean_recall_error():
    layer = LoLA(D, HEADS, window=4, cache_size=6)
    with torch.no_grad():
        _, state = layer(tokens(7), layer.init_state(2, "cpu"))  # 3 pairs left the window
        metrics = layer.state_metrics(state)
        assert metrics["cache_occupancy"] == pytest.approx(3 / 6)
        expected_sre = state.cache_sre[state.cache_valid].mean()
        assert metrics["mean_sre"] == pytest.approx(float(expected_sre)) and metrics["mean_sre"] > 0
        _, state = layer(tokens(20, seed=1), state)
    assert layer.state_metrics(state)["cache_occupancy"] == 1.0


def test_lola_layer_without_window_and_cache_is_linear_attention():
    layer = LoLA(D, HEADS, window=0, cache_size=0)
    x = tokens(21)
    with torch.no_grad():
        y, _ = layer(x, layer.init_state(2, "cpu"))
        q, k, v = layer._project(x)
        o, _ = linear_attn_reference(feature_map(q), feature_map(k), v, None)
    assert_close_rms(y, layer.o_proj(o.flatten(-2)), TOL_RECURRENT, "LoLA(0, 0) layer vs linear attention")


def test_lola_gate_learns_through_the_chunked_forward():
    layer = LoLA(D, HEADS, window=3, cache_size=2, chunk_size=8)
    y, _ = layer(tokens(19), layer.init_state(2, "cpu"))
    y.pow(2).mean().backward()
    assert layer.gate_logit.grad is not None and layer.gate_logit.grad.abs().sum() > 0


@pytest.mark.parametrize("selection", ["sre", "recency", "random"])
@pytest.mark.parametrize("window,cache_size", [(2, 3), (0, 4), (3, 0), (0, 0)])
def test_lola_variants_step_loop_split_and_reset_agree_with_forward(selection, window, cache_size):
    # the generic contract runs the default config only; the ablation variants must hold it too
    layer = LoLA(D, HEADS, window=window, cache_size=cache_size, selection=selection, chunk_size=4)
    x = tokens(23)
    reset = torch.zeros(2, 23, dtype=torch.bool)
    reset[0, 9] = True
    with torch.no_grad():
        _, warm = layer(tokens(9, seed=3), layer.init_state(2, "cpu"))
        y, s = layer(x, warm)
        state, ys = warm, []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
        y_a, s_a = layer(x[:, :11], warm)
        y_b, s_b = layer(x[:, 11:], s_a)
        y_reset, _ = layer(x, warm, reset)
        y_fresh, _ = layer(x[:1, 9:], layer.init_state(1, "cpu"))
    assert_close_rms(torch.stack(ys, 1), y, TOL_RECURRENT, "step loop vs forward")
    assert_close_rms(torch.cat([y_a, y_b], 1), y, TOL_RECURRENT, "two pieces vs whole")
    assert_close_rms(y_reset[:1, 9:], y_fresh, TOL_RECURRENT, "reset vs fresh state")
    for final in (state, s_b):
        assert torch.equal(final.cache_valid, s.cache_valid) and torch.equal(final.cache_birth, s.cache_birth)
        if cache_size:
            assert_close_rms(final.cache_k, s.cache_k, TOL_RECURRENT, "cache keys")
        assert_close_rms(final.S, s.S, TOL_RECURRENT, "linear state")


def test_lola_rejects_unknown_selection():
    with pytest.raises(ValueError, match="choose one of"):
        LoLA(D, HEADS, selection="lru")
