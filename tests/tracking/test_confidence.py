"""Confidence intervals: two-stage bootstrap for probe entries and the figures of R, t intervals over seeds.

A probe entry is [B lifetimes, E episodes]; R[k, j] is its mean (tracking/confidence.py).
"""
import math
import time

import numpy as np
import pytest

from lifelong.tracking import metrics as M
from lifelong.tracking.confidence import cl_metrics_ci, entry_ci, mean_ci_over_seeds, student_t_quantile

FIGURES = ("acc", "forgetting", "forgetting_cw", "bwt", "fwt", "learning_accuracy", "retention")


def bernoulli_entries(R, B, E, seed):
    """[K][N] entries whose success rate is R[k, j] per lifetime (None where R is NaN)."""
    rng = np.random.default_rng(seed)
    return [[None if math.isnan(p) else (rng.random((B, E)) < p).astype(float) for p in row] for row in R]


def mean_matrix(entries):
    return np.array([[math.nan if e is None else e.mean() for e in row] for row in entries])


R3 = np.array([[0.8, 0.1, 0.0], [0.6, 0.9, 0.2], [0.5, 0.7, 1.0]])


# ---- one entry ---------------------------------------------------------------------------------
def test_entry_ci_contains_the_mean_and_is_deterministic_by_seed():
    x = (np.random.default_rng(0).random((4, 32)) < 0.6).astype(float)
    low, high = entry_ci(x, rng=7)
    assert low <= x.mean() <= high and low < high
    assert entry_ci(x, rng=7) == (low, high)
    assert entry_ci(x, rng=np.random.default_rng(7)) == (low, high)
    assert entry_ci(x, rng=8) != (low, high)


def test_entry_ci_of_a_constant_entry_has_zero_width():
    low, high = entry_ci(np.full((3, 10), 0.25), rng=0)
    assert low == high == pytest.approx(0.25)


def test_entry_ci_with_one_lifetime_resamples_episodes_like_a_binomial():
    x = np.zeros((1, 400))
    x[0, :200] = 1.0  # p = 0.5, E = 400: normal-approximation half-width 1.96 * sqrt(0.25 / 400) = 0.049
    low, high = entry_ci(x, n_boot=4000, rng=0)
    assert (high - low) / 2 == pytest.approx(0.049, abs=0.006)


def test_entry_ci_keeps_the_variance_between_lifetimes():
    # lifetime 0 always succeeds, lifetime 1 never: episode-only resampling would give a zero-width
    # interval; drawing lifetimes gives means 0, 0.5 or 1
    x = np.array([[1.0] * 50, [0.0] * 50])
    assert entry_ci(x, rng=0) == (0.0, 1.0)


def test_entry_ci_shrinks_with_more_episodes():
    rng = np.random.default_rng(1)
    widths = []
    for E in (16, 1024):
        x = (rng.random((1, E)) < 0.5).astype(float)
        low, high = entry_ci(x, rng=0)
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # width ~ 1/sqrt(E): 8x fewer in theory


def test_entry_ci_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B lifetimes, E episodes\]"):
        entry_ci(np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        entry_ci(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="level"):
        entry_ci(np.zeros((1, 3)), level=95)


# ---- figures of R -----------------------------------------------------------------------------
def test_cl_metrics_ci_contains_the_point_estimate_of_every_figure():
    entries = bernoulli_entries(R3, B=6, E=64, seed=0)
    base = [(np.random.default_rng(j).random((6, 64)) < 0.1).astype(float) for j in range(3)]
    point = M.cl_metrics(mean_matrix(entries), None, [b.mean() for b in base])
    ci = cl_metrics_ci(entries, None, base, n_boot=1000, seed=0)
    assert set(ci) == set(FIGURES)
    for name in FIGURES:
        low, high = ci[name]
        assert low <= point[name] <= high, (name, low, point[name], high)
        assert low < high, name


def test_cl_metrics_ci_is_deterministic_by_seed():
    entries = bernoulli_entries(R3, B=4, E=16, seed=1)
    assert cl_metrics_ci(entries, n_boot=200, seed=3) == cl_metrics_ci(entries, n_boot=200, seed=3)
    assert cl_metrics_ci(entries, n_boot=200, seed=3) != cl_metrics_ci(entries, n_boot=200, seed=4)


def test_cl_metrics_ci_of_constant_entries_has_zero_width():
    entries = [[None if math.isnan(p) else np.full((3, 5), p) for p in row] for row in R3]
    point = M.cl_metrics(R3)
    ci = cl_metrics_ci(entries, n_boot=200, seed=0)
    for name in ("acc", "forgetting", "forgetting_cw", "bwt", "learning_accuracy", "retention"):
        assert ci[name][0] == pytest.approx(point[name]) and ci[name][1] == pytest.approx(point[name]), name


def test_cl_metrics_ci_shrinks_with_more_episodes():
    narrow = cl_metrics_ci(bernoulli_entries(R3, B=1, E=1024, seed=2), n_boot=500, seed=0)
    wide = cl_metrics_ci(bernoulli_entries(R3, B=1, E=16, seed=2), n_boot=500, seed=0)
    for name in ("acc", "forgetting", "bwt", "learning_accuracy"):
        assert narrow[name][1] - narrow[name][0] < (wide[name][1] - wide[name][0]) / 2, name


def test_cl_metrics_ci_draws_the_same_lifetimes_for_every_entry():
    # Lifetime 0 is perfect on task 0 at every probe, lifetime 1 always fails it: each lifetime's own
    # BWT term R[F, 0] - R[0, 0] is 0. With one set of lifetime indices per replicate, BWT is exactly 0
    # in every replicate; independent draws per entry would spread it over [-1, 1].
    good, bad = [1.0] * 20, [0.0] * 20
    task0 = np.array([good, bad])
    task1 = np.full((2, 20), 0.5)
    entries = [[task0, None], [task0, task1]]
    ci = cl_metrics_ci(entries, [0, 1], n_boot=500, seed=0)
    assert ci["bwt"] == (0.0, 0.0)
    assert ci["acc"][0] < ci["acc"][1]  # the entries themselves do vary


def test_cl_metrics_ci_gives_nan_for_undefined_figures():
    entries = [[np.full((2, 4), 1.0)]]  # one task, one block: forgetting, BWT, FWT undefined
    ci = cl_metrics_ci(entries, n_boot=50, seed=0)
    for name in ("forgetting", "forgetting_cw", "bwt", "fwt", "retention"):
        assert all(math.isnan(v) for v in ci[name]), name
    assert ci["acc"] == (1.0, 1.0)


def test_cl_metrics_ci_handles_revisits_and_unmeasured_entries():
    R = np.array([[0.8, 0.1], [0.5, 0.7], [0.7, 0.4], [0.6, np.nan]])
    entries = bernoulli_entries(R, B=4, E=32, seed=5)
    point = M.cl_metrics(mean_matrix(entries), [0, 1, 0, 1])
    ci = cl_metrics_ci(entries, [0, 1, 0, 1], n_boot=500, seed=0)
    for name in ("acc", "forgetting", "forgetting_cw", "bwt", "learning_accuracy", "retention"):
        assert ci[name][0] <= point[name] <= ci[name][1], name


def test_cl_metrics_ci_is_fast_enough_for_a_real_run():
    rng = np.random.default_rng(0)
    K, N, B, E = 15, 5, 8, 8
    block_tasks = [k % N for k in range(K)]
    entries = [[(rng.random((B, E)) < 0.5).astype(float) for _ in range(N)] for _ in range(K)]
    base = [(rng.random((B, E)) < 0.1).astype(float) for _ in range(N)]
    start = time.perf_counter()
    cl_metrics_ci(entries, block_tasks, base, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 1.0


def test_cl_metrics_ci_rejects_lifetime_counts_that_differ():
    with pytest.raises(ValueError, match="same B lifetimes"):
        cl_metrics_ci([[np.zeros((2, 4)), np.zeros((3, 4))]], [0])
    with pytest.raises(ValueError, match=r"\[K\]\[N\]"):
        cl_metrics_ci([[np.zeros((2, 4))], []], [0, 0])


# ---- across seeds -----------------------------------------------------------------------------
@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 10, 2.228),
    (0.975, 30, 2.042), (0.95, 10, 1.812), (0.995, 5, 4.032), (0.975, 5000, 1.9606),
])
def test_student_t_quantile_matches_the_tables(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=6e-4)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, abs=6e-4)


def test_mean_ci_over_seeds_is_the_student_t_interval():
    # [1, 2, 3]: mean 2, sd 1, half-width t_{0.975, 2} * 1 / sqrt(3) = 4.303 / 1.732 = 2.484
    mean, low, high = mean_ci_over_seeds([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (low, high) == (pytest.approx(2 - 2.484, abs=1e-3), pytest.approx(2 + 2.484, abs=1e-3))


def test_mean_ci_over_seeds_with_one_seed_or_undefined_values():
    assert mean_ci_over_seeds([0.7])[0] == 0.7
    assert all(math.isnan(v) for v in mean_ci_over_seeds([0.7])[1:])
    assert mean_ci_over_seeds([1.0, math.nan, 3.0])[0] == 2.0  # an undefined seed is dropped
    assert all(math.isnan(v) for v in mean_ci_over_seeds([]))
