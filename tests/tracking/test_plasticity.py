"""Plasticity diagnostics: zero-activation and tau-dormant units over a rolling window, feature effective
rank, weights, grads."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from lifelong.tracking.plasticity import (
    ActivityBuffer,
    dormancy_scores,
    feature_effective_rank,
    gradient_norm,
    weight_magnitude,
)


def test_unit_active_on_at_most_one_percent_of_the_window_is_dormant():
    feats = torch.zeros(1000, 4)
    feats[:, 0] = 1.0           # always active
    feats[:10, 1] = 1.0         # exactly 1%: dormant
    feats[:20, 2] = 1.0         # 2%: alive
    feats[:, 3] = -0.5          # never positive: dormant
    buf = ActivityBuffer(window=1000, threshold=0.01)
    buf.update(feats)
    assert buf.dormant_fraction() == pytest.approx(0.5)


def test_activity_window_forgets_samples_older_than_the_window():
    buf = ActivityBuffer(window=100, threshold=0.01)
    buf.update(torch.ones(100, 2))
    assert buf.dormant_fraction() == 0.0
    buf.update(torch.cat([torch.zeros(100, 1), torch.ones(100, 1)], 1))  # unit 0 silent for a full window
    assert buf.dormant_fraction() == pytest.approx(0.5)


def test_activity_buffer_round_trips_and_is_nan_before_data():
    buf = ActivityBuffer(window=10, threshold=0.01)
    assert math.isnan(buf.dormant_fraction())
    buf.update(torch.randn(7, 3))
    clone = ActivityBuffer(window=10, threshold=0.01)
    clone.load_state_dict(buf.state_dict())
    extra = torch.randn(6, 3)
    buf.update(extra)
    clone.update(extra)
    assert clone.dormant_fraction() == buf.dormant_fraction()


def test_activity_buffer_rejects_a_changed_width_and_bad_shapes():
    buf = ActivityBuffer(window=10, threshold=0.01)
    buf.update(torch.randn(5, 3))
    with pytest.raises(ValueError, match="one buffer per layer"):
        buf.update(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"\[N samples, D units\]"):
        buf.update(torch.randn(5))


def test_feature_effective_rank_counts_equally_used_directions():
    assert feature_effective_rank(torch.eye(6)) == pytest.approx(6.0, rel=1e-5)
    rank_one = torch.randn(20, 1) @ torch.randn(1, 8)
    assert feature_effective_rank(rank_one) == pytest.approx(1.0, rel=1e-3)


def test_weight_magnitude_is_mean_absolute_weight_and_grad_norm_the_global_l2():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -3.0]]))
        lin.bias.fill_(2.0)
    assert weight_magnitude(lin) == pytest.approx(2.0)
    assert gradient_norm(lin) == 0.0
    lin.weight.grad = torch.tensor([[3.0, 0.0]])
    lin.bias.grad = torch.tensor([4.0])
    assert gradient_norm(lin) == pytest.approx(5.0)


# ---- tau-dormant units (Sokar et al. 2023, eq. 1) ----------------------------------------------
# 4 samples x 4 units. Mean |h| per unit: u0 = 2.0, u1 = (0.1 + 0.1 + 0 + 0) / 4 = 0.05,
# u2 = |-4| ... = (4 + 4 + 4 + 4) / 4 = 4.0, u3 = 0. Layer mean = (2 + 0.05 + 4 + 0) / 4 = 1.5125.
# Scores s_i = mean_i / layer mean: 1.3223, 0.0331, 2.6446, 0.0.
HAND = torch.tensor([
    [2.0, 0.1, -4.0, 0.0],
    [2.0, 0.1, -4.0, 0.0],
    [2.0, 0.0, -4.0, 0.0],
    [2.0, 0.0, -4.0, 0.0],
])


def test_sokar_scores_on_a_hand_built_activation_matrix():
    np.testing.assert_allclose(dormancy_scores(HAND), [2.0 / 1.5125, 0.05 / 1.5125, 4.0 / 1.5125, 0.0], rtol=1e-6)


def test_tau_dormant_fraction_counts_units_whose_score_is_at_most_tau():
    buf = ActivityBuffer(window=10, threshold=0.01)
    buf.update(HAND)
    assert buf.tau_dormant_fraction(0.0) == pytest.approx(1 / 4)     # only u3 (exactly silent)
    assert buf.tau_dormant_fraction(0.025) == pytest.approx(1 / 4)   # u1 scores 0.033 > 0.025
    assert buf.tau_dormant_fraction(0.1) == pytest.approx(2 / 4)     # u1 and u3
    # zero-activation count (Dohare): active (> 0) on <= 1% of samples: u2 (always negative) and u3;
    # u2 is large in |h| so it is NOT tau-dormant: the two definitions differ
    assert buf.zero_activation_fraction() == pytest.approx(2 / 4)
    assert buf.dormant_fraction() == buf.zero_activation_fraction()


def test_tau_dormant_fraction_uses_only_the_samples_in_the_window():
    buf = ActivityBuffer(window=4, threshold=0.01)
    buf.update(torch.tensor([[1.0, 0.0]] * 4))   # unit 1 silent
    assert buf.tau_dormant_fraction(0.0) == pytest.approx(0.5)
    buf.update(torch.tensor([[1.0, 1.0]] * 4))   # a full window later both units fire equally
    assert buf.tau_dormant_fraction(0.0) == 0.0
    buf.update(torch.zeros(4, 2))                 # a silent layer: every unit is dormant
    assert buf.tau_dormant_fraction(0.0) == 1.0


def test_tau_dormant_fraction_survives_a_state_round_trip_and_old_states():
    buf = ActivityBuffer(window=10, threshold=0.01)
    assert math.isnan(buf.tau_dormant_fraction(0.1))
    buf.update(HAND)
    clone = ActivityBuffer(window=10, threshold=0.01)
    clone.load_state_dict(buf.state_dict())
    assert clone.tau_dormant_fraction(0.1) == buf.tau_dormant_fraction(0.1)
    old = {k: v for k, v in buf.state_dict().items() if k != "magnitude"}  # checkpoint before magnitudes
    clone.load_state_dict(old)
    assert clone.zero_activation_fraction() == buf.zero_activation_fraction()
    assert math.isnan(clone.tau_dormant_fraction(0.1))                   # nothing measurable yet
    clone.update(HAND)
    assert clone.tau_dormant_fraction(0.1) == pytest.approx(0.5)         # only the new samples count
    with pytest.raises(ValueError, match="non-negative"):
        clone.tau_dormant_fraction(-0.1)
