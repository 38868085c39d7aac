"""Every continual-learning figure on hand-built matrices, with the answer worked out by hand.

Rows of R are probes at the end of each block (0-based), columns are tasks; F is the final row.
See tracking/metrics.py and docs/metrics.md for the formulas and their sources.
"""
import math

import numpy as np
import pytest

from lifelong.tracking import metrics as M

nan = math.nan

# ---- classic GEM setting: task k learned in block k, no revisits ------------------------------
#               task 0  task 1  task 2
R3 = np.array([
    [0.8,    0.1,    0.0],   # end of block 0 (task 0 trained)
    [0.6,    0.9,    0.2],   # end of block 1 (task 1 trained)
    [0.5,    0.7,    1.0],   # end of block 2 (task 2 trained) = final row F
])
B3 = [0.1, 0.1, 0.1]         # untrained agent


def test_gem_three_tasks_acc_bwt_fwt_by_hand():
    out = M.cl_metrics(R3, None, B3)
    # ACC = (1/T) sum_i R[T, i] = (0.5 + 0.7 + 1.0) / 3 = 2.2 / 3
    assert out["acc"] == pytest.approx(2.2 / 3)
    # BWT = 1/(T-1) sum_{i<T} R[T, i] - R[i, i] = ((0.5 - 0.8) + (0.7 - 0.9)) / 2 = (-0.3 - 0.2) / 2 = -0.25
    assert out["bwt"] == pytest.approx(-0.25)
    # FWT = 1/(T-1) sum_{i>=2} R[i-1, i] - b_i = ((R[0,1] - 0.1) + (R[1,2] - 0.1)) / 2 = (0.0 + 0.1) / 2 = 0.05
    assert out["fwt"] == pytest.approx(0.05)


def test_gem_three_tasks_forgetting_learning_accuracy_retention_by_hand():
    out = M.cl_metrics(R3, None, B3)
    # Chaudhry f_j = max_{l<F} R[l, j] - R[F, j]: task 0: 0.8 - 0.5 = 0.3; task 1: 0.9 - 0.7 = 0.2;
    # task 2 is the last task (j < k fails): undefined
    np.testing.assert_allclose(out["forgetting_per_task"], [0.3, 0.2, nan])
    assert out["forgetting"] == pytest.approx(0.25)           # (0.3 + 0.2) / 2
    assert out["retention"] == pytest.approx(0.75)            # 1 - 0.25
    # Continual World F_j = R[end of j's block, j] - R[F, j]: 0.8 - 0.5, 0.9 - 0.7, last task 0
    np.testing.assert_allclose(out["forgetting_cw_per_task"], [0.3, 0.2, 0.0])
    assert out["forgetting_cw"] == pytest.approx(0.25)        # averaged over tasks 0, 1 like Chaudhry's
    # LA = mean diagonal = (0.8 + 0.9 + 1.0) / 3
    assert out["learning_accuracy"] == pytest.approx(0.9)


def test_chaudhry_max_runs_over_every_row_since_learning_not_only_the_end_of_the_block():
    R = np.array([
        [0.6, 0.0, 0.0],
        [0.9, 0.8, 0.0],   # task 0 peaks after block 1 (backward transfer), then drops
        [0.4, 0.8, 0.9],
    ])
    f = M.forgetting_chaudhry(R)
    assert f[0] == pytest.approx(0.9 - 0.4)                               # best past, not R[0, 0]
    assert M.forgetting_continual_world(R)[0] == pytest.approx(0.6 - 0.4)  # end of its block


# ---- revisits: A B A B --------------------------------------------------------------------------
#                  A     B
RABAB = np.array([
    [0.8,  0.1],   # block 0 trains A (first(A) = 0)
    [0.5,  0.7],   # block 1 trains B (first(B) = 1)
    [0.7,  0.4],   # block 2 trains A again (last(A) = 2)
    [0.6,  0.9],   # block 3 trains B again (last(B) = 3) = final row; B is the final block's task
])
BT_ABAB = [0, 1, 0, 1]
B_ABAB = [0.0, 0.05]


def test_revisits_abab_every_figure_by_hand():
    out = M.cl_metrics(RABAB, BT_ABAB, B_ABAB)
    # ACC over the final row: (0.6 + 0.9) / 2
    assert out["acc"] == pytest.approx(0.75)
    # B is trained in the final block: it is left out of forgetting, retention and BWT (J_old = {A})
    # Chaudhry f_A = max(R[0..2, A]) - R[3, A] = max(0.8, 0.5, 0.7) - 0.6 = 0.2
    np.testing.assert_allclose(out["forgetting_per_task"], [0.2, nan])
    assert out["forgetting"] == pytest.approx(0.2)
    assert out["retention"] == pytest.approx(0.8)
    # CW F_A = R[last(A) = 2, A] - R[3, A] = 0.7 - 0.6 = 0.1; F_B = 0 (final block's task)
    np.testing.assert_allclose(out["forgetting_cw_per_task"], [0.1, 0.0])
    assert out["forgetting_cw"] == pytest.approx(0.1)
    # BWT reads R_ii after A's FIRST block: R[3, A] - R[0, A] = 0.6 - 0.8 = -0.2
    assert out["bwt"] == pytest.approx(-0.2)
    # FWT: only B is first trained after block 0: R[first(B) - 1 = 0, B] - b_B = 0.1 - 0.05
    assert out["fwt"] == pytest.approx(0.05)
    # LA over every block's own task: (R[0,A] + R[1,B] + R[2,A] + R[3,B]) / 4 = (0.8 + 0.7 + 0.7 + 0.9) / 4
    assert out["learning_accuracy"] == pytest.approx(3.1 / 4)


def test_relearning_in_the_final_block_is_not_negative_forgetting_and_retention_stays_at_most_one():
    # A B A: A is relearned in the final block (0.5 -> 1.0), B is kept perfectly (0.9 -> 0.9).
    R = np.array([
        [0.5, 0.1],
        [0.5, 0.9],
        [1.0, 0.9],
    ])
    out = M.cl_metrics(R, [0, 1, 0])
    # before the fix A entered as 0.5 - 1.0 = -0.5 and retention was 1 - (-0.5 + 0) / 2 = 1.25
    assert math.isnan(out["forgetting_per_task"][0])
    assert out["forgetting"] == pytest.approx(0.0)   # only B: 0.9 - 0.9
    assert out["retention"] == pytest.approx(1.0)
    assert out["retention"] <= 1.0
    assert out["bwt"] == pytest.approx(0.0)          # only B: R[2, B] - R[1, B]
    assert out["forgetting_cw_per_task"][0] == 0.0   # CW: the final block's task forgets nothing


def test_continual_world_forgetting_of_the_final_task_is_zero_even_if_unmeasured():
    R = np.array([[0.9, 0.2], [0.4, np.nan]])  # the final probe missed task 1
    assert M.forgetting_continual_world(R)[1] == 0.0


def test_both_forgetting_means_average_the_same_tasks():
    for R, bt in ((R3, None), (RABAB, BT_ABAB)):
        out = M.cl_metrics(R, bt)
        ch = np.isfinite(out["forgetting_per_task"])
        cw = np.array(out["forgetting_cw_per_task"])
        cw_mean_over_same_tasks = cw[ch].mean()
        assert out["forgetting_cw"] == pytest.approx(cw_mean_over_same_tasks)


def test_chaudhry_forgetting_ignores_rows_before_the_task_was_learned():
    R = np.array([[0.9, 0.95], [0.9, 0.6], [0.5, 0.5]])  # task 1 looked good before it was trained
    assert M.forgetting_chaudhry(R, [0, 1, 0])[1] == pytest.approx(0.6 - 0.5)  # not 0.95 - 0.5


# ---- partial final block and missing entries ---------------------------------------------------
def test_partial_final_row_drops_unmeasured_tasks_instead_of_reading_zero():
    R = np.array([
        [0.8, 0.1, 0.0],
        [0.6, 0.9, 0.2],
        [0.4, nan, 0.7],   # the final probe did not measure task 1
    ])
    out = M.cl_metrics(R, None, [0.0, 0.0, 0.0])
    assert out["acc"] == pytest.approx((0.4 + 0.7) / 2)          # task 1 drops out of ACC
    np.testing.assert_allclose(out["forgetting_per_task"], [0.8 - 0.4, nan, nan])
    assert out["forgetting"] == pytest.approx(0.4)
    assert out["forgetting_cw"] == pytest.approx(0.4)
    assert out["bwt"] == pytest.approx(0.4 - 0.8)                 # task 1 term undefined, skipped
    assert out["fwt"] == pytest.approx(((0.1 - 0) + (0.2 - 0)) / 2)
    assert out["learning_accuracy"] == pytest.approx((0.8 + 0.9 + 0.7) / 3)


def test_missing_entries_are_skipped_not_treated_as_zero():
    R = np.array([[0.8, np.nan], [np.nan, 0.9], [0.5, 0.7]])
    assert M.forgetting_chaudhry(R, [0, 1, 1])[0] == pytest.approx(0.3)
    assert math.isnan(M.forward_transfer(R, [0.0, 0.0], [0, 1, 1]))  # R[0, 1] was not measured


def test_a_task_never_trained_is_left_out_of_every_average():
    R = np.array([[0.8, 0.3, 0.9], [0.6, 0.9, 0.9]])  # column 2 probed as "next task", never trained
    out = M.cl_metrics(R, [0, 1], [0.0, 0.0, 0.0])
    assert out["acc"] == pytest.approx((0.6 + 0.9) / 2)
    assert math.isnan(out["forgetting_per_task"][2])
    assert math.isnan(out["forgetting_cw_per_task"][2])
    assert out["fwt"] == pytest.approx(0.3)  # only task 1: R[0, 1] - 0


# ---- one task: undefined figures are NaN, never 0 -----------------------------------------------
@pytest.mark.parametrize("R, bt", [(np.array([[0.7]]), None), (np.array([[0.2], [0.5], [0.7]]), [0, 0, 0])])
def test_one_task_leaves_forgetting_bwt_fwt_and_retention_undefined(R, bt):
    out = M.cl_metrics(R, bt, [0.0])
    assert out["acc"] == pytest.approx(0.7)
    assert out["learning_accuracy"] == pytest.approx(R[:, 0].mean())
    for name in ("forgetting", "forgetting_cw", "bwt", "fwt", "retention"):
        assert math.isnan(out[name]), name
    assert out["forgetting_cw_per_task"] == [0.0]  # CW's per-task value for the final task
    assert math.isnan(out["forgetting_per_task"][0])


def test_fwt_without_a_baseline_is_nan_and_cl_metrics_keeps_its_keys():
    out = M.cl_metrics(R3)
    assert math.isnan(out["fwt"])
    assert set(out) == {"acc", "forgetting", "forgetting_cw", "bwt", "fwt", "learning_accuracy", "retention",
                        "forgetting_per_task", "forgetting_cw_per_task"}


def test_public_functions_agree_with_cl_metrics():
    out = M.cl_metrics(RABAB, BT_ABAB, B_ABAB)
    assert M.average_accuracy(RABAB, BT_ABAB) == out["acc"]
    assert M.backward_transfer(RABAB, BT_ABAB) == out["bwt"]
    assert M.forward_transfer(RABAB, B_ABAB, BT_ABAB) == out["fwt"]
    assert M.learning_accuracy(RABAB, BT_ABAB) == out["learning_accuracy"]
    assert M.retention(M.forgetting_chaudhry(RABAB, BT_ABAB)) == pytest.approx(out["retention"])


def test_bad_shapes_name_the_fix():
    with pytest.raises(ValueError, match="block_tasks"):
        M.average_accuracy(RABAB)
    with pytest.raises(ValueError, match="one entry per row"):
        M.average_accuracy(RABAB, [0, 1])
    with pytest.raises(ValueError, match="task columns"):
        M.average_accuracy(RABAB, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="baseline"):
        M.forward_transfer(R3, [0.1])


# ---- AUC of the evaluated success curve, Continual World forward transfer ----------------------
def test_evaluated_auc_is_the_trapezoid_over_probe_points_on_normalised_time():
    # probes at steps 0, 10, 30, 40 with success 0.2, 0.4, 0.6, 1.0 over the block [0, 40]:
    # trapezoids (0.2+0.4)/2*10 = 3, (0.4+0.6)/2*20 = 10, (0.6+1.0)/2*10 = 8 -> 21 / 40 = 0.525
    assert M.evaluated_auc([0, 10, 30, 40], [0.2, 0.4, 0.6, 1.0], 0, 40) == pytest.approx(0.525)
    # order does not matter; points outside the span are ignored
    assert M.evaluated_auc([40, -5, 30, 0, 10, 90], [1.0, 0.0, 0.6, 0.2, 0.4, 0.0], 0, 40) == pytest.approx(0.525)


def test_evaluated_auc_holds_the_end_values_and_undefined_without_points():
    # points at 10 and 30 only, span [0, 40]: 0.4 held over [0, 10] = 4, trapezoid (0.4+0.6)/2*20 = 10,
    # 0.6 held over [30, 40] = 6 -> 20 / 40 = 0.5
    assert M.evaluated_auc([10, 30], [0.4, 0.6], 0, 40) == pytest.approx(0.5)
    assert M.evaluated_auc([20], [0.3], 0, 40) == pytest.approx(0.3)
    assert M.evaluated_auc([0, 0, 40], [0.0, 1.0, 0.5], 0, 40) == pytest.approx(0.5)  # duplicates averaged
    assert math.isnan(M.evaluated_auc([50], [1.0], 0, 40))
    with pytest.raises(ValueError, match="end > start"):
        M.evaluated_auc([0], [1.0], 5, 5)


def test_continual_world_forward_transfer_and_its_undefined_cases():
    auc = M.evaluated_auc([0, 10], [0.2, 1.0], 0, 10)        # 0.6
    auc_ref = M.evaluated_auc([0, 10], [0.0, 0.4], 0, 10)    # 0.2
    assert M.forward_transfer_cw(auc, auc_ref) == pytest.approx((0.6 - 0.2) / (1 - 0.2))
    assert M.forward_transfer_cw(0.2, 0.6) == pytest.approx(-1.0)
    assert math.isnan(M.forward_transfer_cw(0.6, 1.0))
    assert math.isnan(M.forward_transfer_cw(math.nan, 0.2))


def test_normalized_auc_of_training_episodes_still_works_for_the_tracker():
    steps = np.arange(0, 100)
    assert M.normalized_auc(steps, np.full(100, 0.5), 0, 100) == pytest.approx(0.5)
    # one point at 0.0 in the first bin, one at 1.0 in the third of four; bins: 0, 0, 1, 1
    assert M.normalized_auc([0, 50, 500], [0.0, 1.0, 0.3], 0, 100, n_bins=4) == pytest.approx(0.5)
    assert math.isnan(M.normalized_auc([200], [1.0], 0, 100))
