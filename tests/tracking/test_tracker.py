"""The tracker: TensorBoard tags and hparams read back with tbparse, summary.json, online figures,
checkpoint round trip."""
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2

from lifelong.tracking.tracker import Tracker, apply_reference_runs

from tracker_settings import tracker_config

HP = {"mixer": "gated_deltanet", "d_model": 32, "num_layers": 2, "stream": "smoke", "seed": 0, "ppo": {"lr": 3e-4}}
SCHEDULE = [("A", 1), ("B", 1), ("A", 2)]
# Probe at the end of each block: R rows (A, B); worked answers in test_summary_json_holds_r_and_the_final_figures
ROWS = [{"A": 0.9, "B": 0.2}, {"A": 0.4, "B": 0.8}, {"A": 0.95, "B": 0.3}]
EPISODES_PER_BLOCK = 12


def _success(block: int, e: int) -> float:
    """Block 2 (A revisited) starts worse: its first 10 episodes succeed 4 times."""
    return float(e >= 6) if block == 2 else float(e >= 2)


def drive(tracker: Tracker, blocks=range(3), start_step: int = 0) -> int:
    """A scripted lifetime: per block a switch, episodes, diagnostics, then the block-end probe."""
    step = start_step
    if start_step == 0:
        tracker.log_probe(0, {"A": 0.1, "B": 0.1})
    for bi in blocks:
        task, visit = SCHEDULE[bi]
        tracker.log_task_switch(step, task, visit, bi)
        tracker.log_task_switch(step, task, visit, bi)  # another lifetime reports the same switch
        for e in range(EPISODES_PER_BLOCK):
            step += 10
            s = _success(bi, e)
            tracker.log_episode(step, task, 0.5 * s + 0.01 * e, 10, s, e + 1)
            if tracker.should_probe(step):
                other = "B" if task == "A" else "A"  # only the other task's episodes follow a switch
                tracker.log_probe(step, {task: {"success": 0.5, "return": 0.4, "steps": 30, "episode_returns": [9.0, 9.0]},
                                         other: {"success": 0.5, "return": 0.4, "steps": 30, "episode_returns": [0.1, 0.3]}})
        tracker.log_scalars(step, {"charts/sps": 1234.0, "losses/policy": -0.01})
        tracker.log_memory(step, {"layer0": {"state_norm": 1.5, "state_erank": 3.0}})
        feats = torch.relu(torch.randn(64, 16))
        tracker.log_plasticity(step, {"layer0": feats}, nn.Linear(4, 4), grad_norm=0.7)
        tracker.log_probe(step, {**ROWS[bi]}, block_end=bi)
    return step


@pytest.fixture
def finished(tmp_path: Path):
    settings = tracker_config(probe_every=50, adaptation_k=3, revisit_window=10)
    tracker = Tracker.from_config(tmp_path / "run", ["A", "B"], HP, settings)
    drive(tracker)
    return tracker, tracker.finalize(), tmp_path / "run"


def test_tensorboard_holds_every_section7_tag_with_finite_values(finished):
    _, _, run_dir = finished
    df = SummaryReader(str(run_dir), extra_columns={"dir_name"}).scalars
    tags = set(df.tag)
    expected = {
        "task/A/return", "task/A/success", "task/A/length", "task/B/success", "eval/A/success", "eval/B/success",
        "cl/acc", "cl/forgetting/A", "cl/forgetting/B", "cl/bwt", "cl/fwt", "cl/learning_accuracy", "cl/retention",
        "adaptation/episode_1", "adaptation/episode_3", "adaptation_frozen/episode_2", "forgetting/revisit/A",
        "plasticity/dormant_frac/layer0", "plasticity/erank/layer0", "plasticity/weight_norm",
        "plasticity/grad_norm", "memory/layer0/state_norm", "memory/layer0/state_erank", "charts/sps",
        "losses/policy", "charts/task_id", "charts/task_switch", "charts/probe_env_steps",
    }
    assert expected <= tags, expected - tags
    assert np.isfinite(df.value).all()
    assert (df.dir_name == "").all(), "every event must go to the run's own directory (no sub-runs)"
    switches = df[(df.tag == "charts/task_switch") & (df.value == 1.0)].step.tolist()
    assert switches == [0, 120, 240]


def test_hparams_are_written_into_the_run_with_the_final_metrics(finished):
    _, summary, run_dir = finished
    reader = SummaryReader(str(run_dir), extra_columns={"dir_name"})
    hp = dict(zip(reader.hparams.tag, reader.hparams.value))
    assert hp["mixer"] == "gated_deltanet" and hp["stream"] == "smoke" and hp["ppo.lr"] == pytest.approx(3e-4)
    assert (reader.hparams.dir_name == "").all()
    final = reader.scalars[reader.scalars.step == summary["steps"]]
    acc = final[final.tag == "cl/acc"].value.iloc[-1]
    assert acc == pytest.approx(summary["cl"]["acc"])


def test_custom_scalars_layout_overlays_every_task_with_switch_markers(finished):
    _, _, run_dir = finished
    layouts = []
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    layout = layout_pb2.Layout()
                    layout.ParseFromString(value.tensor.string_val[0])
                    layouts.append(layout)
    assert layouts
    charts = {c.title: list(c.multiline.tag) for cat in layouts[0].category for c in cat.chart}
    assert charts["success"] == ["task/A/success", "task/B/success", "charts/task_switch"]
    assert "task/B/return" in charts["return"]


def test_summary_json_holds_r_and_the_final_figures(finished):
    _, summary, run_dir = finished
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["R"] == [[0.9, 0.2], [0.4, 0.8], [0.95, 0.3]]
    assert on_disk["R_block_tasks"] == ["A", "B", "A"]
    assert on_disk["hparams"]["mixer"] == "gated_deltanet"
    m = on_disk["cl"]
    assert m["acc"] == pytest.approx((0.95 + 0.3) / 2)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.95) + (0.8 - 0.3)) / 2)
    assert m["bwt"] == pytest.approx(((0.95 - 0.9) + (0.3 - 0.8)) / 2)
    assert m["fwt"] == pytest.approx(0.2 - 0.1)
    assert m["learning_accuracy"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert m["retention"] == pytest.approx(1 - m["forgetting"])
    assert m["forward_transfer_cw"] is None  # no reference runs: undefined, written as null
    assert on_disk["tasks"]["B"]["forgetting_cw"] == pytest.approx(0.5)
    assert summary["cl"]["acc"] == m["acc"]
    assert [b["task"] for b in on_disk["blocks"]] == ["A", "B", "A"]
    assert on_disk["probe_env_steps"] == 2 * 30 * 7  # two tasks probed at steps 50, 100, ..., 350


def test_revisit_forgetting_is_end_of_previous_visit_minus_start_of_this_one(finished):
    _, summary, _ = finished
    # A's first block ends with 10 successes in its last 10 episodes; the revisit starts 4 / 10.
    assert summary["revisits"] == [{"task": "A", "visit": 2, "block": 2, "step": 240 + 100, "value": pytest.approx(0.6)}]


def test_in_context_adaptation_averages_the_kth_episode_return_over_switches(finished):
    _, summary, _ = finished
    # blocks after a switch: B (episode e succeeds from e=2) and A revisit (from e=6); k = 1..3 -> e = 0..2
    expected = [np.mean([0.5 * _s + 0.01 * e for _s in (float(e >= 2), 0.0)]) for e in range(3)]
    assert summary["adaptation"]["online"] == pytest.approx(expected)
    assert summary["adaptation"]["frozen"][:2] == pytest.approx([0.1, 0.3])


def test_every_tracker_setting_comes_from_the_tracker_section_of_the_config(tmp_path):
    settings = tracker_config(probe_every=7, adaptation_k=2, revisit_window=3, episode_log_every=11,
                              dormant_window=13, dormant_threshold=0.05, curve_points=16)
    t = Tracker.from_config(tmp_path, ["A"], HP, settings)
    assert (t.probe_every, t.adaptation_k, t.revisit_window, t.episode_log_every, t.curve_points) == (7, 2, 3, 11, 16)
    t.log_plasticity(0, {"layer0": torch.ones(20, 4)}, None, None)
    buffer = t._activity["layer0"]
    assert (buffer.window, buffer.threshold) == (13, 0.05)


def test_a_tracker_config_missing_a_setting_names_it(tmp_path):
    settings = {k: v for k, v in tracker_config().items() if k != "revisit_window"}
    with pytest.raises(ValueError, match=r"lacks \['revisit_window'\].*configs/config.yaml"):
        Tracker.from_config(tmp_path, ["A"], HP, settings)


def test_probe_schedule_fires_at_multiples_of_probe_every(tmp_path):
    t = Tracker.from_config(tmp_path, ["A"], HP, tracker_config(probe_every=100))
    assert t.should_probe(0)
    t.log_probe(0, {"A": 0.0})
    assert not t.should_probe(99) and t.should_probe(104)
    t.log_probe(104, {"A": 0.0})
    assert not t.should_probe(199) and t.should_probe(200)
    assert not Tracker.from_config(tmp_path / "off", ["A"], HP, tracker_config(probe_every=0)).should_probe(0)


def test_an_old_task_episode_finishing_after_the_switch_stays_in_its_own_block(tmp_path):
    t = Tracker.from_config(tmp_path, ["A", "B"], HP, tracker_config(probe_every=0))
    t.log_task_switch(0, "A", 1, 0)
    t.log_episode(5, "A", 1.0, 5, 1.0, 1)
    t.log_task_switch(10, "B", 1, 1)
    t.log_episode(12, "A", 1.0, 7, 1.0, 2)  # a lagging lifetime
    t.log_episode(15, "B", 0.0, 5, 0.0, 1)
    blocks = t.summary()["blocks"]
    assert [(b["task"], b["episodes"], b["success"]) for b in blocks] == [("A", 2, 1.0), ("B", 1, 0.0)]


def test_bad_calls_name_the_fix(tmp_path):
    t = Tracker.from_config(tmp_path, ["A", "B"], HP, tracker_config(probe_every=10))
    with pytest.raises(ValueError, match="task_names"):
        t.log_episode(1, "C", 0.0, 1, 0.0, 1)
    with pytest.raises(ValueError, match="starting at 1"):
        t.log_episode(1, "A", 0.0, 1, 0.0, 0)
    with pytest.raises(ValueError, match="log_task_switch"):
        t.log_probe(5, {"A": 0.5}, block_end=3)
    with pytest.raises(ValueError, match="unique"):
        Tracker.from_config(tmp_path, ["A", "A"], HP, tracker_config(probe_every=10))


def test_state_dict_round_trip_reproduces_the_uninterrupted_summary(tmp_path):
    torch.manual_seed(0)
    full = Tracker.from_config(tmp_path / "full", ["A", "B"], HP, tracker_config(probe_every=50))
    drive(full)
    expected = full.finalize()

    torch.manual_seed(0)
    first = Tracker.from_config(tmp_path / "resumed", ["A", "B"], HP, tracker_config(probe_every=50))
    step = drive(first, blocks=range(2))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    rng = torch.get_rng_state()  # the lifetime checkpoints its RNG too
    drive(first, blocks=[2], start_step=step)  # a killed process wrote past the checkpoint
    first.tb.flush()
    buffer.seek(0)
    second = Tracker.from_config(tmp_path / "resumed", ["A", "B"], HP, tracker_config(probe_every=50))
    second.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(rng)
    drive(second, blocks=[2], start_step=step)
    resumed = second.finalize()
    assert json.dumps(resumed, sort_keys=True, default=str) == json.dumps(expected, sort_keys=True, default=str)
    # TensorBoard drops what the killed process logged after the checkpoint: no duplicated steps.
    def logged(run: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(tmp_path / run), purge_orphaned_data=True).Reload()
        return [(e.step, e.value) for e in acc.Scalars("task/A/success")]

    assert logged("resumed") == logged("full")


def _reference_runs(run_dir: Path) -> None:
    """Single-task reference runs with flat success curves: AUC_ref(A) = 0, AUC_ref(B) = 0.25."""
    for task, succ in (("A", 0.0), ("B", 0.25)):
        ref = Tracker.from_config(run_dir / "reference" / task, [task], {"mixer": "x"},
                                  tracker_config(probe_every=0))
        ref.log_task_switch(0, task, 1, 0)
        for e in range(20):
            ref.log_episode(10 * (e + 1), task, succ, 10, succ, e + 1)
        ref.finalize()


def _check_transfer(summary: dict) -> None:
    fts = []
    for task, auc_ref in (("A", 0.0), ("B", 0.25)):
        assert summary["transfer"][task]["auc_reference"] == pytest.approx(auc_ref)
        auc = summary["transfer"][task]["auc"]
        assert 0.0 < auc < 1.0
        fts.append((auc - auc_ref) / (1 - auc_ref))
        assert summary["tasks"][task]["forward_transfer_cw"] == pytest.approx(fts[-1])
    assert summary["cl"]["forward_transfer_cw"] == pytest.approx(np.mean(fts))


def test_reference_runs_found_at_finalize_give_continual_world_forward_transfer(tmp_path):
    run_dir = tmp_path / "run"
    _reference_runs(run_dir)
    tracker = Tracker.from_config(run_dir, ["A", "B"], HP, tracker_config(probe_every=0))
    drive(tracker)
    _check_transfer(tracker.finalize())


def test_reference_runs_finished_after_the_run_are_applied_to_its_summary(tmp_path):
    run_dir = tmp_path / "run"
    tracker = Tracker.from_config(run_dir, ["A", "B"], HP, tracker_config(probe_every=0))
    drive(tracker)
    assert math.isnan(tracker.finalize()["cl"]["forward_transfer_cw"])  # no reference yet
    _reference_runs(run_dir)
    _check_transfer(apply_reference_runs(run_dir))
    _check_transfer(json.loads((run_dir / "summary.json").read_text()))
    scalars = SummaryReader(str(run_dir), extra_columns={"dir_name"}).scalars
    assert "cl/forward_transfer_cw" in set(scalars[scalars.dir_name == ""].tag)


def test_one_task_run_reports_undefined_transfer_as_null(tmp_path):
    t = Tracker.from_config(tmp_path, ["A"], HP, tracker_config(probe_every=0))
    t.log_probe(0, {"A": 0.0})
    t.log_task_switch(0, "A", 1, 0)
    t.log_episode(10, "A", 1.0, 10, 1.0, 1)
    t.log_probe(10, {"A": 1.0}, block_end=0)
    t.finalize()
    m = json.loads((tmp_path / "summary.json").read_text())["cl"]
    assert m["acc"] == 1.0 and m["learning_accuracy"] == 1.0
    assert m["bwt"] is None and m["fwt"] is None and m["forgetting"] is None
    assert not math.isnan(m["forgetting_cw"])


def test_episode_curves_are_logged_as_means_over_windows_and_at_switches(tmp_path):
    t = Tracker.from_config(tmp_path, ["A", "B"], HP, tracker_config(probe_every=0, episode_log_every=50))
    t.log_task_switch(0, "A", 1, 0)
    for i, success in enumerate([0, 0, 1, 1, 1, 1, 0]):  # steps 10..70: a window closes at 50
        t.log_episode(10 * (i + 1), "A", success, 10 + i, success, i + 1)
    t.log_task_switch(75, "B", 1, 1)  # the switch closes the open window
    t.finalize()
    df = SummaryReader(str(tmp_path)).scalars
    success = df[df.tag == "task/A/success"][["step", "value"]].values.tolist()
    assert success == [[50, pytest.approx(3 / 5)], [75, pytest.approx(1 / 2)]]
    length = df[df.tag == "task/A/length"].value.tolist()
    assert length == pytest.approx([12.0, 15.5])
