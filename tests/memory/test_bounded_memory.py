"""Bounded memory: every mixer's state bytes stay constant or bounded over a lifetime.

Every config in ``configs/memory/`` runs STEPS tokens through ``step``, more than any token-indexed
size in play (softmax's cap CAP, the sliding window's 64 pairs, LoLA's window + cache of 32):
- parametric mixers hold exactly their ``init_state`` bytes at every token;
- attention-family states hold at most their capacity of key/value pairs: softmax attention its
  ``max_cache``, sliding window its ``window``, LoLA its ``window + cache_size``;
- softmax attention's bytes reach its cap's and stay there; without a cap (``memory.max_cache=null``)
  they grow by one pair per token: the nonparametric reference, shown to grow.
"""
from __future__ import annotations

import pytest
import torch

from lifelong.kernels.attention import KVCache, LoLAState, WindowCache
from lifelong.memory_layers.lola import LoLA
from lifelong.memory_layers.protocol import MemoryMixer
from lifelong.memory_layers.registry import available_mixers, build_mixer, load_memory_config
from lifelong.memory_layers.sliding_window import SlidingWindowAttention
from lifelong.memory_layers.softmax_attention import SoftmaxAttention
from lifelong.memory_layers.state import State, state_nbytes

D_MODEL, HEADS, BATCH = 16, 2, 2
CAP = 48
STEPS = 160

pytestmark = pytest.mark.filterwarnings("ignore::lifelong.memory_layers.softmax_attention.CacheCapWarning")


def make_mixer(name: str, **overrides) -> MemoryMixer:
    cfg = load_memory_config(name)
    cfg.num_heads = HEADS
    if name == "softmax":
        cfg.max_cache = CAP
    for key, value in overrides.items():
        cfg[key] = value
    torch.manual_seed(0)
    return build_mixer(cfg, D_MODEL).eval()


def pair_bytes(mixer: MemoryMixer) -> int:
    """Bytes of one cached key/value pair for the whole batch: fp32 k and v of every head, one valid flag."""
    return BATCH * (mixer.num_heads * 2 * mixer.head_dim * 4 + 1)


def cached_pairs(state: State) -> int:
    """Key/value pairs an attention-family state holds (the length of its token-indexed axes)."""
    if isinstance(state, LoLAState):
        return state.window_k.shape[2] + state.cache_k.shape[2]
    assert isinstance(state, (KVCache, WindowCache))
    return state.k.shape[2]


def pair_capacity(mixer: MemoryMixer) -> int | None:
    """The most pairs the mixer may cache (None: it caches no pairs)."""
    if isinstance(mixer, SoftmaxAttention):
        return mixer.max_cache
    if isinstance(mixer, SlidingWindowAttention):
        return mixer.window
    if isinstance(mixer, LoLA):
        return mixer.window + mixer.cache_size
    return None


def run_steps(mixer: MemoryMixer, steps: int = STEPS) -> list[State]:
    """The state after each of ``steps`` random tokens fed through ``step``."""
    x = torch.randn(steps, BATCH, D_MODEL, generator=torch.Generator().manual_seed(1))
    state, states = mixer.init_state(BATCH, "cpu"), []
    with torch.inference_mode():
        for t in range(steps):
            _, state = mixer.step(x[t], state)
            states.append(state)
    return states


def test_the_lifetime_outlasts_every_capacity():
    capacities = [pair_capacity(make_mixer(name)) for name in available_mixers()]
    assert STEPS > max(c for c in capacities if c is not None)


@pytest.mark.parametrize("name", available_mixers())
def test_state_bytes_stay_constant_or_bounded_over_a_lifetime(name):
    mixer = make_mixer(name)
    init_bytes = state_nbytes(mixer.init_state(BATCH, "cpu"))
    capacity = pair_capacity(mixer)
    states = run_steps(mixer)
    sizes = [state_nbytes(s) for s in states]
    if mixer.parametric:
        assert sizes == [init_bytes] * STEPS, f"{name}: state bytes changed over the lifetime"
    else:
        bound = init_bytes + capacity * pair_bytes(mixer)
        assert max(sizes) <= bound, f"{name}: {max(sizes)} state bytes above its cap's {bound}"
        assert sizes[capacity - 1:] == [bound] * (STEPS - capacity + 1), f"{name}: does not stay at its cap"
    if capacity is not None:
        assert all(cached_pairs(s) <= capacity for s in states), f"{name}: more pairs than its capacity"


def test_sliding_window_state_is_its_window_of_pairs():
    mixer = make_mixer("sliding_window")
    assert state_nbytes(run_steps(mixer, 3)[-1]) == mixer.window * pair_bytes(mixer)


def test_softmax_without_a_cap_grows_by_one_pair_per_token():
    mixer = make_mixer("softmax", max_cache=None)
    sizes = [state_nbytes(s) for s in run_steps(mixer)]
    assert sizes == [(t + 1) * pair_bytes(mixer) for t in range(STEPS)]
    assert sizes[-1] > CAP * pair_bytes(mixer)
