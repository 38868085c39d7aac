"""The MQAR generator: structure of every sequence, the power law of the query gaps, disjoint splits."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.mqar.data import IGNORE, MQARSettingError, MQARSpec, generate, make_splits

SPEC = MQARSpec(vocab_size=64, seq_len=48, num_pairs=6, power_a=0.2)


def data(spec=SPEC, n=2000, seed=0):
    return generate(spec, n, np.random.default_rng(seed))


def test_pairs_are_unique_within_a_sequence_and_come_from_their_halves_of_the_vocabulary():
    d = data()
    p = SPEC.num_pairs
    keys, values = d.inputs[:, 0:2 * p:2], d.inputs[:, 1:2 * p:2]
    assert d.inputs.shape == (2000, SPEC.seq_len) and d.inputs.dtype == np.int64
    assert all(len(set(row)) == p for row in keys), "keys repeat within a sequence"
    assert all(len(set(row)) == p for row in values), "values repeat within a sequence"
    assert keys.min() >= 1 and keys.max() < SPEC.vocab_size // 2
    assert values.min() >= SPEC.vocab_size // 2 and values.max() < SPEC.vocab_size
    assert d.inputs.min() >= 0 and d.inputs.max() < SPEC.vocab_size


def test_every_query_asks_an_earlier_key_and_its_target_is_that_keys_value():
    d = data()
    p = SPEC.num_pairs
    for row in range(len(d)):
        x, y = d.inputs[row], d.targets[row]
        queries = np.flatnonzero(y != IGNORE)
        assert len(queries) == p, "each key is queried exactly once"
        assert sorted(x[queries]) == sorted(x[0:2 * p:2]), "the queries ask the sequence's keys"
        for q in queries:
            assert q >= 2 * p and (q - 2 * p) % 2 == 0, "queries sit on the even offsets after the context"
            earlier = np.flatnonzero(x[:q] == x[q])
            assert len(earlier) == 1, "the key appears once before its query (filler never repeats a key)"
            j = int(earlier[0])
            assert j < 2 * p and j % 2 == 0 and x[j + 1] == y[q], "the target is the value stored after the key"
        np.testing.assert_array_equal(d.query_pos[row], 2 * p + 2 * ((d.query_pos[row] - 2 * p) // 2))
        np.testing.assert_array_equal(x[d.query_pos[row]], x[d.key_pos[row]])
        np.testing.assert_array_equal(y[d.query_pos[row]], x[d.key_pos[row] + 1])


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data():
    a, b, c = data(seed=3), data(seed=3), data(seed=4)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)


def _slots(spec: MQARSpec, n: int, seed: int) -> np.ndarray:
    d = generate(spec, n, np.random.default_rng(seed))
    return (d.query_pos[:, 0] - spec.context_len) // 2  # the first drawn slot follows p exactly


def _mle_exponent(slots: np.ndarray, num_slots: int) -> float:
    grid = np.linspace(0.01, 2.0, 400)
    logs = np.log(np.arange(1, num_slots + 1, dtype=float))
    counts = np.bincount(slots, minlength=num_slots)
    ll = [(a - 1) * (counts * logs).sum() - counts.sum() * np.log(np.exp((a - 1) * logs).sum()) for a in grid]
    return float(grid[int(np.argmax(ll))])


@pytest.mark.parametrize("power_a", [0.3, 1.0])
@pytest.mark.parametrize("num_pairs", [1, 4])
def test_query_gaps_follow_the_power_law_of_the_exponent(power_a, num_pairs):
    spec = MQARSpec(vocab_size=64, seq_len=2 * num_pairs + 32, num_pairs=num_pairs, power_a=power_a)
    n = 20000
    slots = _slots(spec, n, seed=11)
    expected = spec.slot_probs() * n
    observed = np.bincount(slots, minlength=spec.num_slots)
    assert spec.num_slots == 16
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 37.70, f"chi-square {chi2:.1f} over 15 degrees of freedom (p < 0.001 beyond 37.70)"
    assert _mle_exponent(slots, spec.num_slots) == pytest.approx(power_a, abs=0.05)
    other = MQARSpec(spec.vocab_size, spec.seq_len, num_pairs, power_a=1.6 - power_a).slot_probs() * n
    assert float(((observed - other) ** 2 / other).sum()) > 200.0, "the test must tell the exponents apart"


def test_every_drawn_slot_is_distinct_and_small_exponents_favour_short_gaps():
    spec = MQARSpec(vocab_size=64, seq_len=64, num_pairs=8, power_a=0.01)
    d = generate(spec, 3000, np.random.default_rng(0))
    assert all(len(set(row)) == spec.num_pairs for row in d.query_pos)
    first_slot = (d.query_pos[:, 0] - spec.context_len) // 2
    assert np.mean(first_slot == 0) > 0.25, "power_a=0.01: the first slot is the most likely by far"


def test_train_and_test_are_disjoint_even_when_collisions_are_likely():
    # 3 keys, 4 values, 2 slots, 2 filler positions of 6 tokens: 5,184 distinct sequences
    spec = MQARSpec(vocab_size=8, seq_len=8, num_pairs=2, power_a=1.0)
    train, test = make_splits(spec, 3000, 500, seed=5)
    train_rows = {r.tobytes() for r in train.inputs}
    test_rows = [r.tobytes() for r in test.inputs]
    assert len(test) == 500 and len(train) == 3000
    assert not train_rows.intersection(test_rows)
    assert len(set(test_rows)) == len(test_rows)
    again_train, again_test = make_splits(spec, 3000, 500, seed=5)
    np.testing.assert_array_equal(again_test.inputs, test.inputs)
    np.testing.assert_array_equal(again_train.inputs, train.inputs)


def test_a_task_with_too_few_distinct_sequences_for_the_test_set_is_a_one_line_error():
    spec = MQARSpec(vocab_size=6, seq_len=8, num_pairs=2, power_a=1.0)  # 384 distinct sequences
    with pytest.raises(MQARSettingError, match="could not draw 100 test sequences") as info:
        make_splits(spec, 2000, 100, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec,match", [
    (MQARSpec(256, 16, 5), "num_pairs=5 is too many for seq_len=16.*seq_len >= 20"),
    (MQARSpec(16, 64, 8), "num_pairs=8 is too many for vocab_size=16.*vocab_size >= 18"),
    (MQARSpec(256, 64, 0), "num_pairs=0 must be an integer >= 1"),
    (MQARSpec(256, 64, 4, power_a=0.0), "power_a=0.0 must be a number > 0"),
])
def test_impossible_settings_are_refused_in_one_line(spec, match):
    with pytest.raises(MQARSettingError, match=match) as info:
        spec.check()
    assert "\n" not in str(info.value)
