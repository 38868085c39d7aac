"""Every continual-learning figure on hand-built matrices with answers worked out by hand."""
import math

import numpy as np
import pytest

from lifelong.tracking import metrics as M

# Classic GEM setting: task k learned in block k. Worked answers in each test.
R3 = np.array([
    [0.8, 0.1, 0.0],
    [0.6, 0.9, 0.2],
    [0.5, 0.7, 1.0],
])
B3 = [0.1, 0.1, 0.1]

# A B A: A is revisited in the final block, B is never revisited.
RABA = np.array([
    [0.9, 0.2],
    [0.4, 0.8],
    [0.95, 0.3],
])
BT_ABA = [0, 1, 0]


def test_acc_is_the_mean_of_the_final_row():
    assert M.average_accuracy(R3) == pytest.approx((0.5 + 0.7 + 1.0) / 3)


def test_chaudhry_forgetting_is_best_past_minus_final_and_undefined_for_the_last_task():
    f = M.forgetting_chaudhry(R3)
    assert f[0] == pytest.approx(0.8 - 0.5)
    assert f[1] == pytest.approx(0.9 - 0.7)
    assert math.isnan(f[2])


def test_chaudhry_forgetting_ignores_rows_before_the_task_was_learned():
    R = np.array([[0.9, 0.95], [0.9, 0.6], [0.9, 0.5]])  # task 1 looked good before it was trained
    assert M.forgetting_chaudhry(R, [0, 1, 0])[1] == pytest.approx(0.6 - 0.5)  # not 0.95 - 0.5


def test_continual_world_forgetting_is_end_of_block_minus_end_of_run_and_zero_for_the_last_task():
    f = M.forgetting_continual_world(R3)
    np.testing.assert_allclose(f, [0.3, 0.2, 0.0])


def test_bwt_follows_the_gem_formula():
    assert M.backward_transfer(R3) == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)


def test_fwt_follows_the_gem_formula_against_the_baseline():
    assert M.forward_transfer(R3, B3) == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)


def test_learning_accuracy_is_the_mean_diagonal_and_retention_one_minus_mean_forgetting():
    assert M.learning_accuracy(R3) == pytest.approx(0.9)
    assert M.retention(M.forgetting_chaudhry(R3)) == pytest.approx(1 - 0.25)


def test_revisited_schedule_uses_first_block_for_bwt_and_most_recent_block_for_cw_forgetting():
    assert M.average_accuracy(RABA, BT_ABA) == pytest.approx((0.95 + 0.3) / 2)
    np.testing.assert_allclose(M.forgetting_chaudhry(RABA, BT_ABA), [0.9 - 0.95, 0.8 - 0.3])
    np.testing.assert_allclose(M.forgetting_continual_world(RABA, BT_ABA), [0.0, 0.8 - 0.3])
    assert M.backward_transfer(RABA, BT_ABA) == pytest.approx(((0.95 - 0.9) + (0.3 - 0.8)) / 2)
    assert M.forward_transfer(RABA, [0.1, 0.1], BT_ABA) == pytest.approx(0.2 - 0.1)
    assert M.learning_accuracy(RABA, BT_ABA) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_one_task_leaves_forgetting_bwt_and_fwt_undefined():
    R = np.array([[0.7]])
    out = M.cl_metrics(R, None, [0.0])
    assert out["acc"] == pytest.approx(0.7)
    assert out["learning_accuracy"] == pytest.approx(0.7)
    for name in ("forgetting", "bwt", "fwt", "retention"):
        assert math.isnan(out[name]), name
    assert out["forgetting_cw"] == 0.0  # Continual World: the last task forgets nothing by definition


def test_a_task_never_trained_is_left_out_of_every_average():
    R = np.array([[0.8, 0.3, 0.9], [0.6, 0.9, 0.9]])  # column 2 probed as "next task", never trained
    assert M.average_accuracy(R, [0, 1]) == pytest.approx((0.6 + 0.9) / 2)
    assert math.isnan(M.forgetting_chaudhry(R, [0, 1])[2])
    assert math.isnan(M.forgetting_continual_world(R, [0, 1])[2])


def test_missing_entries_are_skipped_not_treated_as_zero():
    R = np.array([[0.8, np.nan], [np.nan, 0.9], [0.5, 0.7]])
    assert M.forgetting_chaudhry(R, [0, 1, 1])[0] == pytest.approx(0.3)
    assert math.isnan(M.forward_transfer(R, [0.0, 0.0], [0, 1, 1]))  # R[0, 1] was not measured


def test_fwt_without_a_baseline_is_nan_in_cl_metrics():
    assert math.isnan(M.cl_metrics(R3)["fwt"])


def test_bad_shapes_name_the_fix():
    with pytest.raises(ValueError, match="block_tasks"):
        M.average_accuracy(RABA)
    with pytest.raises(ValueError, match="one entry per row"):
        M.average_accuracy(RABA, [0, 1])
    with pytest.raises(ValueError, match="task columns"):
        M.average_accuracy(RABA, [0, 1, 2])
    with pytest.raises(ValueError, match="baseline"):
        M.forward_transfer(R3, [0.1])


def test_normalized_auc_of_constant_and_ramp_curves():
    steps = np.arange(0, 100)
    assert M.normalized_auc(steps, np.full(100, 0.5), 0, 100) == pytest.approx(0.5)
    ramp = M.normalized_auc(steps, steps / 100.0, 0, 100, n_bins=10)
    assert ramp == pytest.approx(np.mean([np.mean(np.arange(10 * i, 10 * i + 10) / 100) for i in range(10)]))


def test_normalized_auc_holds_the_last_value_over_empty_bins_and_ignores_points_outside():
    # one point at 0.0 in the first bin, one at 1.0 in the third of four; bins: 0, 0, 1, 1
    assert M.normalized_auc([0, 50, 500], [0.0, 1.0, 0.3], 0, 100, n_bins=4) == pytest.approx(0.5)
    assert math.isnan(M.normalized_auc([200], [1.0], 0, 100))
    with pytest.raises(ValueError, match="end > start"):
        M.normalized_auc([0], [1.0], 5, 5)


def test_continual_world_forward_transfer_and_its_undefined_cases():
    assert M.forward_transfer_cw(0.6, 0.2) == pytest.approx((0.6 - 0.2) / (1 - 0.2))
    assert M.forward_transfer_cw(0.2, 0.6) == pytest.approx(-1.0)
    assert math.isnan(M.forward_transfer_cw(0.6, 1.0))
    assert math.isnan(M.forward_transfer_cw(math.nan, 0.2))
