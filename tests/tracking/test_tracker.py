"""The tracker: TensorBoard tags (run-level and per-task runs) and hparams read back with tbparse,
summary.json and probes.json with R and its confidence intervals, online figures, blocks placed by
the ledger, checkpoint round trip."""
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

from lifelong.tracking.blocks import BlockLedger
from lifelong.tracking.confidence import entry_ci
from lifelong.tracking.tracker import Tracker, apply_reference_runs, draws_probe_figure

from tracker_settings import TEST_BOOTSTRAP, make_tracker, tracker_config

HP = {"mixer": "gated_deltanet", "d_model": 32, "num_layers": 2, "stream": "smoke", "seed": 0, "ppo": {"lr": 3e-4}}
RUN_INFO = {"seed": 0, "memory": "gated_deltanet", "stream": "smoke", "config_key": "abc123", "config": {"num_envs": 2}}
LIFETIMES = 2
SCHEDULE = [("A", 60), ("B", 60), ("A", 60)]  # tokens per lifetime: block k is env steps [120 k, 120 (k + 1)]
VISITS = [1, 1, 2]
# Probe at the end of each block: R rows (A, B); worked answers in test_summary_json_holds_r_and_the_final_figures
ROWS = [{"A": 0.9, "B": 0.2}, {"A": 0.4, "B": 0.8}, {"A": 0.95, "B": 0.3}]
BASELINE = 0.1
EPISODES = 10  # probe episodes per lifetime
EPISODES_PER_BLOCK = 12


def success_matrix(p: float, lifetimes: int = LIFETIMES, episodes: int = EPISODES) -> list[list[float]]:
    """``[lifetimes][episodes]`` of 0/1 whose mean is exactly ``p`` (round(p n) successes)."""
    n = lifetimes * episodes
    wins = round(p * n)
    flat = np.array([1.0] * wins + [0.0] * (n - wins))
    return flat[np.argsort(np.arange(n) % lifetimes, kind="stable")].reshape(lifetimes, episodes).tolist()


def probe_result(p: float, steps: int = 0, returns=None, lifetimes: int = LIFETIMES) -> dict:
    """A ``probe_task`` result of success ``p`` (every episode kept)."""
    matrix = success_matrix(p, lifetimes)
    out = {"success": p, "return": 0.5 * p, "steps": steps, "success_matrix": matrix,
           "return_matrix": (0.5 * np.asarray(matrix)).tolist()}
    if returns is not None:
        out["episode_returns"] = returns
    return out


def _success(block: int, e: int) -> float:
    """Block 2 (A revisited) starts worse: its first 10 episodes succeed 4 times."""
    return float(e >= 6) if block == 2 else float(e >= 2)


def drive(tracker: Tracker, blocks=range(3), start_step: int = 0) -> int:
    """A scripted lifetime of 2 lifetimes: per block both report the switch, then episodes (each with
    its block), periodic probes, diagnostics, then the probe at the block's end (row k of R)."""
    step = start_step
    if start_step == 0:
        tracker.log_probe(0, {"A": probe_result(BASELINE), "B": probe_result(BASELINE)})
    for bi in blocks:
        task = SCHEDULE[bi][0]
        for _ in range(LIFETIMES):  # every lifetime reports the block start; the first one starts it
            tracker.log_task_switch(step, task, VISITS[bi], bi)
        for e in range(EPISODES_PER_BLOCK):
            step += 10
            s = _success(bi, e)
            tracker.log_episode(step, task, 0.5 * s + 0.01 * e, 10, s, e + 1, bi)
            if tracker.should_probe(step):
                other = "B" if task == "A" else "A"  # only the other task's episodes follow a switch
                tracker.log_probe(step, {task: probe_result(0.5, 30, [9.0, 9.0]), other: probe_result(0.5, 30, [0.1, 0.3])})
        tracker.log_scalars(step, {"charts/sps": 1234.0, "losses/policy": -0.01})
        tracker.log_memory(step, {"layer0": {"state_norm": 1.5, "state_erank": 3.0}})
        feats = torch.relu(torch.randn(64, 16))
        tracker.log_plasticity(step, {"layer0": feats}, nn.Linear(4, 4), grad_norm=0.7)
        assert step == tracker.ledger.end(bi)
        tracker.log_probe(step, {t: probe_result(v) for t, v in ROWS[bi].items()}, block_end=bi)
    return step


def new_tracker(run_dir: Path, **overrides) -> Tracker:
    settings = {"probe_every": 50, "adaptation_k": 3, "revisit_window": 10, **overrides}
    return make_tracker(run_dir, ["A", "B"], SCHEDULE, LIFETIMES, HP, RUN_INFO, **settings)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tracker") / "run"
    torch.manual_seed(0)
    tracker = new_tracker(run_dir)
    drive(tracker)
    return tracker, tracker.finalize(), run_dir


def scalars(run_dir: Path):
    return SummaryReader(str(run_dir), extra_columns={"dir_name"}).scalars


# ---- TensorBoard ---------------------------------------------------------------------------------
def test_the_main_run_holds_the_run_level_tags_with_finite_values(finished):
    _, _, run_dir = finished
    df = scalars(run_dir)
    assert np.isfinite(df.value).all()
    main = df[df.dir_name == ""]
    expected = {
        "cl/acc", "cl/forgetting", "cl/forgetting_cw", "cl/bwt", "cl/fwt", "cl/learning_accuracy", "cl/retention",
        "adaptation/episode_1", "adaptation/episode_3", "adaptation_frozen/episode_2",
        "plasticity/dormant_tau/layer0", "plasticity/zero_activation_frac/layer0", "plasticity/erank/layer0",
        "plasticity/weight_norm", "plasticity/grad_norm", "memory/layer0/state_norm", "memory/layer0/state_erank",
        "charts/sps", "losses/policy", "charts/task_id", "charts/block", "charts/probe_env_steps",
    }
    assert expected <= set(main.tag), expected - set(main.tag)
    assert "charts/task_switch" not in set(df.tag)  # the 0/1 spike is gone: charts/block steps instead
    assert not any(tag.startswith(("probe/", "train/")) for tag in main.tag)  # per-task curves live in task runs
    blocks = main[main.tag == "charts/block"]
    assert blocks.step.tolist() == [0, 120, 240] and blocks.value.tolist() == [0, 1, 2]  # the ledger's block starts
    assert main[main.tag == "charts/task_id"].value.tolist() == [0, 1, 0]


def test_each_task_has_its_own_run_under_shared_tags(finished):
    _, summary, run_dir = finished
    df = scalars(run_dir)
    assert set(df.dir_name) == {"", "tasks/A", "tasks/B"}
    per_task = {"probe/success", "probe/return", "train/success", "train/return", "train/length"}
    for task in ("A", "B"):
        assert per_task <= set(df[df.dir_name == f"tasks/{task}"].tag), task
    a = df[df.dir_name == "tasks/A"]
    assert a[a.tag == "forgetting/revisit"].value.tolist() == [pytest.approx(0.6)]
    b = df[df.dir_name == "tasks/B"]
    # at each block end, the forgetting of the tasks not trained in that block: A forgot 0.9 -> 0.4 by
    # the end of block 1; at the end A is the final block's task (undefined: never written), B forgot 0.8 -> 0.3
    assert a[a.tag == "cl/forgetting"][["step", "value"]].values.tolist() == [[240, pytest.approx(0.5)]]
    assert b[b.tag == "cl/forgetting"][["step", "value"]].values.tolist() == [[360, pytest.approx(0.5)]] * 2
    assert summary["tasks"]["B"]["forgetting"] == pytest.approx(0.5) and math.isnan(summary["tasks"]["A"]["forgetting"])
    probe_steps = a[a.tag == "probe/success"].step.tolist()
    assert probe_steps == sorted(summary["probe_curves"]["A"]["step"])  # baseline, periodic and row probes


def test_the_probe_curve_figure_is_redrawn_at_every_block_end(finished):
    _, _, run_dir = finished
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert "probes/success_over_lifetime" in acc.Tags()["images"]
    assert [image.step for image in acc.Images("probes/success_over_lifetime")] == [120, 240, 360]


def test_the_probe_curve_figure_thins_out_over_a_long_lifetime():
    drawn = [b for b in range(1, 251) if draws_probe_figure(b, base=8)]
    assert drawn[:16] == list(range(1, 16)) + [16]                 # every block end while young
    assert [b for b in drawn if 16 <= b < 64] == [*range(16, 32, 2), *range(32, 64, 4)]
    assert drawn[-3:] == [208, 224, 240] and len(drawn) == 15 + 8 * 4  # 250 block ends: 47 images


def test_hparams_are_written_into_the_run_with_the_final_metrics(finished):
    _, summary, run_dir = finished
    reader = SummaryReader(str(run_dir), extra_columns={"dir_name"})
    hp = dict(zip(reader.hparams.tag, reader.hparams.value))
    assert hp["mixer"] == "gated_deltanet" and hp["stream"] == "smoke" and hp["ppo.lr"] == pytest.approx(3e-4)
    assert (reader.hparams.dir_name == "").all()
    final = reader.scalars[(reader.scalars.step == summary["steps"]) & (reader.scalars.dir_name == "")]
    acc = final[final.tag == "cl/acc"].value.iloc[-1]
    assert acc == pytest.approx(summary["cl"]["acc"])


def test_custom_scalars_layout_charts_the_task_runs_and_the_blocks(finished):
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
    assert charts["probe success"] == ["probe/success"] and charts["training success"] == ["train/success"]
    assert charts["block"] == ["charts/block", "charts/task_id"]
    assert charts["dormant units (Sokar tau-dormant)"] == [r"plasticity/dormant_tau/.*"]


# ---- summary.json and probes.json -------------------------------------------------------------
def test_summary_json_holds_r_and_the_final_figures(finished):
    tracker, summary, run_dir = finished
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["R"] == [[0.9, 0.2], [0.4, 0.8], [0.95, 0.3]]
    assert on_disk["R_block_tasks"] == ["A", "B", "A"] and on_disk["R_blocks"] == [0, 1, 2]
    assert on_disk["R_steps"] == [tracker.ledger.end(k) for k in range(3)] == [120, 240, 360]
    assert on_disk["R_episodes"] == [[LIFETIMES * EPISODES] * 2] * 3
    assert on_disk["hparams"]["mixer"] == "gated_deltanet"
    assert {k: on_disk[k] for k in RUN_INFO} == RUN_INFO  # what `lifelong compare` groups runs by
    m = on_disk["cl"]
    # J_old = the trained tasks other than the final block's task (A): just B (docs/metrics.md)
    assert m["acc"] == pytest.approx((0.95 + 0.3) / 2)
    assert m["forgetting"] == pytest.approx(0.8 - 0.3)  # max over B's rows from its first block, minus final
    assert m["bwt"] == pytest.approx(0.3 - 0.8)  # B: final minus just after its first block
    assert m["fwt"] == pytest.approx(0.2 - BASELINE)  # B: the row before its first block minus b_B
    assert m["learning_accuracy"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert m["retention"] == pytest.approx(1 - m["forgetting"])
    assert m["forgetting_cw"] == pytest.approx(0.8 - 0.3)
    assert m["forward_transfer_cw"] is None  # no reference runs: undefined, written as null
    assert on_disk["tasks"]["B"]["forgetting_cw"] == pytest.approx(0.5) and on_disk["tasks"]["A"]["forgetting_cw"] == 0.0
    assert on_disk["tasks"]["A"]["forgetting"] is None
    assert on_disk["baseline"] == [BASELINE, BASELINE]
    assert summary["cl"]["acc"] == m["acc"]
    assert [b["task"] for b in on_disk["blocks"]] == ["A", "B", "A"]
    assert [(b["start"], b["end"]) for b in on_disk["blocks"]] == [(0, 120), (120, 240), (240, 360)]
    assert on_disk["probe_env_steps"] == 2 * 30 * 7  # two tasks probed at steps 50, 100, ..., 350


def test_every_entry_of_r_has_its_bootstrap_interval_and_r_ci_brackets_r(finished):
    _, summary, run_dir = finished
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for k, (row, cis) in enumerate(zip(on_disk["R"], on_disk["R_ci"])):
        for j, (value, (low, high)) in enumerate(zip(row, cis)):
            assert low <= value <= high and low < high, (k, j)
            # the two-stage bootstrap of that entry's [lifetimes][episodes] matrix, seeded by the probe's step
            expected = entry_ci(np.array(success_matrix(value)), n_boot=TEST_BOOTSTRAP,
                                rng=np.random.default_rng(on_disk["R_steps"][k]))
            assert (low, high) == pytest.approx(expected)
    assert on_disk["cl_ci_note"] is None
    for name, (low, high) in on_disk["cl_ci"].items():
        value = on_disk["cl"][name]
        assert low <= value + 1e-12 and value - 1e-12 <= high, name


def test_probes_json_holds_every_probe_with_its_per_episode_matrices(finished):
    _, summary, run_dir = finished
    probes = json.loads((run_dir / "probes.json").read_text())
    assert probes["task_names"] == ["A", "B"]
    steps = [(p["step"], p["block_end"]) for p in probes["probes"]]
    assert steps == [(0, None), (50, None), (100, None), (120, 0), (150, None), (200, None), (240, 1),
                     (250, None), (300, None), (350, None), (360, 2)]
    for probe in probes["probes"]:
        for entry in probe["tasks"].values():
            assert np.shape(entry["success_matrix"]) == np.shape(entry["return_matrix"]) == (LIFETIMES, EPISODES)
            assert entry["mean"] == pytest.approx(np.mean(entry["success_matrix"]))
            assert entry["low"] <= entry["mean"] <= entry["high"] and entry["episodes"] == LIFETIMES * EPISODES
    rows = [p for p in probes["probes"] if p["block_end"] is not None]
    assert [[p["tasks"][t]["success_matrix"] for t in ("A", "B")] for p in rows] == [
        [success_matrix(row[t]) for t in ("A", "B")] for row in ROWS]
    assert [[p["tasks"][t]["mean"] for t in ("A", "B")] for p in rows] == summary["R"]


def test_revisit_forgetting_is_end_of_previous_visit_minus_start_of_this_one(finished):
    _, summary, _ = finished
    # A's first block ends with 10 successes in its last 10 episodes; the revisit starts 4 / 10.
    assert summary["revisits"] == [{"task": "A", "visit": 2, "block": 2, "step": 240 + 100, "value": pytest.approx(0.6)}]


def test_in_context_adaptation_averages_the_kth_episode_return_over_switches(finished):
    _, summary, _ = finished
    # blocks after a switch: B (episode e succeeds from e=2) and A revisit (from e=6); k = 1..3 -> e = 0..2
    expected = [np.mean([0.5 * _s + 0.01 * e for _s in (float(e >= 2), 0.0)]) for e in range(3)]
    assert summary["adaptation"]["online"] == pytest.approx(expected)
    # the later half of the two switches is the A revisit alone: no success in its first 3 episodes
    assert summary["adaptation"]["online_later_half"] == pytest.approx([0.0, 0.01, 0.02])
    assert summary["adaptation"]["frozen"][:2] == pytest.approx([0.1, 0.3])


# ---- settings and the protocol ----------------------------------------------------------------
def test_every_tracker_setting_comes_from_the_tracker_section_of_the_config(tmp_path):
    settings = tracker_config(probe_every=7, probe_episodes=9, curve_probe_episodes=5, adaptation_k=2, revisit_window=3,
                              episode_log_every=11, dormant_window=13, dormant_threshold=0.05, dormant_tau=0.6,
                              curve_points=16, bootstrap_samples=300)
    t = Tracker.from_config(tmp_path, ["A"], HP, settings, BlockLedger.of([("A", 10)], 1))
    assert (t.probe_every, t.probe_episodes, t.curve_probe_episodes, t.adaptation_k, t.revisit_window,
            t.episode_log_every, t.curve_points, t.bootstrap_samples) == (7, 9, 5, 2, 3, 11, 16, 300)
    feats = torch.ones(20, 4)
    feats[:, 0] = 0.0  # one unit never active
    feats[:, 1] = 0.3  # active, with a small mean |activation|: score 0.3 / mean(0, 0.3, 1, 1) = 0.52 <= tau 0.6
    t.log_plasticity(0, {"layer0": feats}, None, None)
    buffer = t._activity["layer0"]
    assert (buffer.window, buffer.threshold) == (13, 0.05)
    assert t._last["plasticity/zero_activation_frac/layer0"] == buffer.zero_activation_fraction() == 0.25
    assert t._last["plasticity/dormant_tau/layer0"] == buffer.tau_dormant_fraction(0.6) == 0.5


def test_a_tracker_config_missing_a_setting_names_it(tmp_path):
    settings = {k: v for k, v in tracker_config().items() if k != "revisit_window"}
    with pytest.raises(ValueError, match=r"lacks \['revisit_window'\].*configs/config.yaml"):
        Tracker.from_config(tmp_path, ["A"], HP, settings, BlockLedger.of([("A", 10)], 1))


def test_probe_schedule_fires_at_multiples_of_probe_every(tmp_path):
    t = make_tracker(tmp_path, ["A"], [("A", 1000)], probe_every=100)
    assert t.should_probe(0)
    t.log_probe(0, {"A": 0.0})
    assert not t.should_probe(99) and t.should_probe(104)
    t.log_probe(104, {"A": 0.0})
    assert not t.should_probe(199) and t.should_probe(200)
    assert not make_tracker(tmp_path / "off", ["A"], [("A", 1000)], probe_every=0).should_probe(0)


def test_the_probe_plan_covers_the_tasks_each_probe_needs(tmp_path):
    t = make_tracker(tmp_path, ["A", "B", "C"], [("A", 10), ("B", 10), ("A", 10), ("C", 10)], 2,
                     probe_episodes=8, curve_probe_episodes=4)
    assert t.probe_plan(None, 0) == (["A", "B", "C"], 8)  # the baseline b_j: every task
    assert t.probe_plan(None, 30) == (["A", "B", "C"], 4)  # a point of the probe curves
    # row k: every task trained in blocks 0..k and the next block's task (R[k, k+1] for GEM's FWT)
    assert t.probe_plan(0, 20) == (["A", "B"], 8)
    assert t.probe_plan(1, 40) == (["A", "B"], 8)
    assert t.probe_plan(2, 60) == (["A", "B", "C"], 8)
    assert t.probe_plan(3, 80) == (["A", "B", "C"], 8)  # the schedule starts again with A


def test_block_starts_are_checked_against_the_ledger(tmp_path):
    t = make_tracker(tmp_path, ["A", "B"], [("A", 10), ("B", 10)], 2)
    with pytest.raises(ValueError, match="schedule has 'A' visit 1"):
        t.log_task_switch(0, "B", 1, 0)
    t.log_task_switch(0, "A", 1, 0)
    t.log_task_switch(0, "A", 1, 0)  # the other lifetime: ignored
    with pytest.raises(ValueError, match="schedule has 'A' visit 2"):
        t.log_task_switch(40, "A", 1, 2)  # the schedule repeats: block 2 is A's second visit
    with pytest.raises(ValueError, match="never skipped"):
        t.log_task_switch(40, "A", 2, 2)
    t.log_task_switch(20, "B", 1, 1)
    assert t.current_block == 1
    # blocks where the ledger puts them (a refused call left no trace: the lifetime is at step 20)
    assert [(b["index"], b["start"], b["end"], b["planned_end"]) for b in t.summary()["blocks"]] == [
        (0, 0, 20, 20), (1, 20, 20, 40)]


def test_an_episode_ending_after_another_lifetimes_switch_is_credited_to_its_own_block(tmp_path):
    t = make_tracker(tmp_path, ["A", "B"], [("A", 10), ("B", 10)], 2, probe_every=0)
    t.log_task_switch(0, "A", 1, 0)
    t.log_task_switch(0, "A", 1, 0)
    t.log_episode(8, "A", 1.0, 4, 1.0, 1, block_index=0)
    t.log_task_switch(20, "B", 1, 1)  # lifetime 0's reset at token 10: it ends block 0 and starts block 1
    t.log_episode(20, "A", 1.0, 9, 1.0, 2, block_index=0)  # lifetime 1's A episode, cut at token 10
    t.log_episode(30, "B", 0.0, 4, 0.0, 1, block_index=1)
    blocks = t.summary()["blocks"]
    assert [(b["task"], b["episodes"], b["success"]) for b in blocks] == [("A", 2, 1.0), ("B", 1, 0.0)]
    with pytest.raises(ValueError, match="credited to block 1, a block of 'B'"):
        t.log_episode(32, "A", 1.0, 2, 1.0, 3, block_index=1)
    with pytest.raises(ValueError, match="before the block started"):
        t.log_episode(32, "A", 1.0, 2, 1.0, 3, block_index=2)


def test_bad_calls_name_the_fix(tmp_path):
    t = make_tracker(tmp_path, ["A", "B"], [("A", 10), ("B", 10)], probe_every=10)
    with pytest.raises(ValueError, match="task_names"):
        t.log_episode(1, "C", 0.0, 1, 0.0, 1)
    with pytest.raises(ValueError, match="starting at 1"):
        t.log_episode(1, "A", 0.0, 1, 0.0, 0)
    with pytest.raises(ValueError, match="log_task_switch"):
        t.log_probe(5, {"A": probe_result(0.5, steps=7)}, block_end=3)
    assert t.probe_env_steps == 0  # a refused probe is not counted
    with pytest.raises(ValueError, match="unique"):
        make_tracker(tmp_path, ["A", "A"], [("A", 10)])
    with pytest.raises(ValueError, match=r"task\(s\) \['C'\]"):
        make_tracker(tmp_path, ["A", "B"], [("A", 10), ("C", 10)])


# ---- confidence intervals when entries do not fit together --------------------------------------
def _two_blocks(tmp_path: Path, baseline: dict, rows: list[dict]) -> dict:
    t = make_tracker(tmp_path, ["A", "B"], [("A", 10), ("B", 10)], 2, probe_every=0)
    t.log_probe(0, baseline)
    for k, task in enumerate("AB"):
        t.log_task_switch(20 * k, task, 1, k)
        t.log_probe(20 * (k + 1), rows[k], block_end=k)
    return t.finalize()


def test_without_per_episode_results_the_figures_have_no_interval_and_say_why(tmp_path):
    summary = _two_blocks(tmp_path, {"A": 0.0, "B": 0.0}, [{"A": 1.0, "B": probe_result(0.5)}, {"A": 0.5, "B": 1.0}])
    assert summary["cl"]["acc"] == pytest.approx(0.75)  # the point figures are there
    assert all(math.isnan(low) and math.isnan(high) for low, high in summary["cl_ci"].values())
    assert "plain success values" in summary["cl_ci_note"] and "R[0][A]" in summary["cl_ci_note"]
    assert summary["R_episodes"][0] == [0, LIFETIMES * EPISODES]
    assert all(math.isnan(v) for v in summary["R_ci"][0][0]) and summary["R_ci"][0][1][0] < 0.5


def test_entries_over_different_numbers_of_lifetimes_have_no_interval(tmp_path):
    rows = [{"A": probe_result(1.0), "B": probe_result(0.5)}, {"A": probe_result(0.5, lifetimes=3), "B": probe_result(1.0)}]
    summary = _two_blocks(tmp_path, {"A": probe_result(0.0), "B": probe_result(0.0)}, rows)
    assert all(math.isnan(low) for low, _ in summary["cl_ci"].values())
    assert "different numbers of lifetimes ([2, 3])" in summary["cl_ci_note"]


def test_a_baseline_without_per_episode_results_costs_only_fwt_its_interval(tmp_path):
    rows = [{"A": probe_result(1.0), "B": probe_result(0.5)}, {"A": probe_result(0.5), "B": probe_result(1.0)}]
    summary = _two_blocks(tmp_path, {"A": 0.0, "B": 0.0}, rows)
    assert summary["cl"]["fwt"] == pytest.approx(0.5) and all(math.isnan(v) for v in summary["cl_ci"]["fwt"])
    low, high = summary["cl_ci"]["acc"]
    assert low <= summary["cl"]["acc"] <= high
    assert summary["cl_ci_note"].startswith("fwt has no interval")


# ---- checkpoints -------------------------------------------------------------------------------
def test_state_dict_round_trip_reproduces_the_uninterrupted_summary(tmp_path):
    torch.manual_seed(0)
    full = new_tracker(tmp_path / "full")
    drive(full)
    expected = full.finalize()

    torch.manual_seed(0)
    first = new_tracker(tmp_path / "resumed")
    step = drive(first, blocks=range(2))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    rng = torch.get_rng_state()  # the lifetime checkpoints its RNG too
    drive(first, blocks=[2], start_step=step)  # a killed process wrote past the checkpoint
    for writer in first._writers().values():
        writer.flush()
    buffer.seek(0)
    second = new_tracker(tmp_path / "resumed")
    second.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(rng)
    drive(second, blocks=[2], start_step=step)
    resumed = second.finalize()
    assert json.dumps(resumed, sort_keys=True, default=str) == json.dumps(expected, sort_keys=True, default=str)
    assert (tmp_path / "resumed" / "probes.json").read_text() == (tmp_path / "full" / "probes.json").read_text()

    # TensorBoard drops what the killed process logged after the checkpoint: no duplicated steps.
    def logged(run: str, tag: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(tmp_path / run), purge_orphaned_data=True).Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert logged("resumed/tasks/A", "train/success") == logged("full/tasks/A", "train/success")
    assert logged("resumed", "cl/acc") == logged("full", "cl/acc")


# ---- reference runs (Continual World forward transfer) -------------------------------------------
def _reference_runs(run_dir: Path) -> None:
    """Single-task reference runs of one block as long as the run's, probed flat: AUC_ref(A) = 0,
    AUC_ref(B) = 0.25."""
    for task, succ in (("A", 0.0), ("B", 0.25)):
        ref = make_tracker(run_dir / "reference" / task, [task], [(task, 60)], LIFETIMES, probe_every=0)
        ref.log_probe(0, {task: probe_result(succ)})
        ref.log_task_switch(0, task, 1, 0)
        for e in range(12):
            ref.log_episode(10 * (e + 1), task, succ, 10, succ, e + 1, 0)
        ref.log_probe(120, {task: probe_result(succ)}, block_end=0)
        ref.finalize()


def _check_transfer(summary: dict) -> None:
    # the evaluated success over a task's first block: A 0.1 (step 0) -> 0.9 (step 120), B 0.2 (step
    # 120, row 0) -> 0.8 (step 240, row 1): both AUCs are 0.5 by the trapezoid rule
    for task, auc_ref, ft in (("A", 0.0, 0.5), ("B", 0.25, (0.5 - 0.25) / (1 - 0.25))):
        assert summary["transfer"][task] == {"auc": pytest.approx(0.5), "auc_reference": pytest.approx(auc_ref)}
        assert summary["tasks"][task]["forward_transfer_cw"] == pytest.approx(ft)
    assert summary["cl"]["forward_transfer_cw"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_reference_runs_found_at_finalize_give_continual_world_forward_transfer(tmp_path):
    run_dir = tmp_path / "run"
    _reference_runs(run_dir)
    tracker = new_tracker(run_dir, probe_every=0)
    drive(tracker)
    _check_transfer(tracker.finalize())


def test_reference_runs_finished_after_the_run_are_applied_to_its_summary(tmp_path):
    run_dir = tmp_path / "run"
    tracker = new_tracker(run_dir, probe_every=0)
    drive(tracker)
    assert math.isnan(tracker.finalize()["cl"]["forward_transfer_cw"])  # no reference yet
    _reference_runs(run_dir)
    _check_transfer(apply_reference_runs(run_dir))
    _check_transfer(json.loads((run_dir / "summary.json").read_text()))
    df = scalars(run_dir)
    assert "cl/forward_transfer_cw" in set(df[df.dir_name == ""].tag)


def test_one_task_run_reports_undefined_figures_as_null(tmp_path):
    t = make_tracker(tmp_path, ["A"], [("A", 5)], LIFETIMES, probe_every=0)
    t.log_probe(0, {"A": probe_result(0.0)})
    t.log_task_switch(0, "A", 1, 0)
    t.log_episode(10, "A", 1.0, 10, 1.0, 1, 0)
    t.log_probe(10, {"A": probe_result(1.0)}, block_end=0)
    t.finalize()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    m = on_disk["cl"]
    assert m["acc"] == 1.0 and m["learning_accuracy"] == 1.0
    assert m["bwt"] is None and m["fwt"] is None and m["forgetting"] is None and m["forgetting_cw"] is None
    assert on_disk["cl_ci"]["bwt"] == [None, None] and on_disk["cl_ci"]["acc"] == [1.0, 1.0]
    assert on_disk["tasks"]["A"]["forgetting_cw"] == 0.0  # the final block's task forgot nothing yet


def test_episode_curves_are_logged_as_means_over_windows_and_at_switches(tmp_path):
    t = make_tracker(tmp_path, ["A", "B"], [("A", 40), ("B", 40)], 2, probe_every=0, episode_log_every=50)
    t.log_task_switch(0, "A", 1, 0)
    for i, success in enumerate([0, 0, 1, 1, 1, 1, 0]):  # steps 10..70: a window closes at 50
        t.log_episode(10 * (i + 1), "A", success, 10 + i, success, i + 1, 0)
    t.log_task_switch(75, "B", 1, 1)  # the switch closes the open window
    t.finalize()
    df = SummaryReader(str(tmp_path / "tasks" / "A")).scalars
    success = df[df.tag == "train/success"][["step", "value"]].values.tolist()
    assert success == [[50, pytest.approx(3 / 5)], [75, pytest.approx(1 / 2)]]
    length = df[df.tag == "train/length"].value.tolist()
    assert length == pytest.approx([12.0, 15.5])
