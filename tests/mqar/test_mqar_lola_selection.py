"""LoLA's three cache-selection rules (the MQAR ablation): on one hand-built sequence each keeps a
known pair, and all three hold the same number of pairs (equal cache size, equal state bytes)."""
from __future__ import annotations

import pytest
import torch

from lifelong.kernels.attention import lola_attn
from lifelong.kernels.attention.lola_select import hash_uniform
from lifelong.memory_layers.lola import LoLA
from lifelong.memory_layers.state import state_nbytes

T, K, V = 16, 4, 4  # the random rule keeps birth 12, recency birth 14


def hand_built(needle: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys; every value is u = (1, ..., 1) except the needle's, -u. The linear state then
    predicts about u for any key, so the needle has by far the highest self-recall error."""
    k = torch.randn(1, T, 1, K, generator=torch.Generator().manual_seed(7))
    v = torch.ones(1, T, 1, V)
    v[0, needle, 0] = -1.0
    return k, v


def expected_picks() -> dict[str, int]:
    """window = 1, cache = 1: pairs born 0..T-2 have left the window, the cache keeps the one with the
    highest keep-priority among them."""
    random_pick = int(torch.argmax(hash_uniform(torch.arange(T - 1).view(1, 1, -1), 1)[0, 0]))
    needle = next(t for t in range(2, T - 2) if t != random_pick)  # not first out: the state must hold a pair
    return {"sre": needle, "recency": T - 2, "random": random_pick}


@pytest.mark.parametrize("selection", ["sre", "recency", "random"])
def test_each_selection_rule_keeps_its_known_pair(selection):
    picks = expected_picks()
    assert len(set(picks.values())) == 3, "the hand-built sequence must tell the three rules apart"
    k, v = hand_built(picks["sre"])
    _, state = lola_attn(k, k, v, None, window=1, cache_size=1, gate=0.5, selection=selection, chunk_size=5)
    assert bool(state.cache_valid.all()) and bool(state.window_valid.all())
    assert int(state.cache_birth[0, 0, 0]) == picks[selection]
    assert torch.equal(state.cache_k[0, 0, 0], k[0, picks[selection], 0])
    assert torch.equal(state.cache_v[0, 0, 0], v[0, picks[selection], 0])
    # every other pair that left the window was folded into the linear state: z = sum of their phi(k)
    folded = [t for t in range(T - 1) if t != picks[selection]]
    phi = torch.nn.functional.elu(k[0, folded, 0]) + 1
    torch.testing.assert_close(state.z[0, 0], phi.sum(0), rtol=1e-5, atol=1e-5)


def test_the_three_rules_hold_the_same_cache_and_state_bytes():
    layers = {s: LoLA(32, 4, window=8, cache_size=8, selection=s) for s in ("sre", "random", "recency")}
    x = torch.randn(2, 40, 32)
    sizes = set()
    for selection, layer in layers.items():
        _, state = layer(x, layer.init_state(2, "cpu"))
        assert state.cache_k.shape == (2, 4, 8, 8) and bool(state.cache_valid.all()), selection
        sizes.add(state_nbytes(state))
    assert len(sizes) == 1
