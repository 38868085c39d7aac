"""``compare_runs`` on runs written by the tracker: table with mean/std over seeds, markdown, PNG."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lifelong.tracking.report import FIGURES, compare_runs, display_table, find_run_dirs
from lifelong.tracking.tracker import Tracker

from tracker_settings import tracker_config

TASKS = ["DoorKey", "Lava", "Memory"]
SCHEDULE = ["DoorKey", "Lava", "Memory", "DoorKey", "Lava", "Memory"]


def simulate_run(run_dir: Path, mixer: str, seed: int, keep: float, steps_per_block: int = 400) -> dict:
    """A synthetic lifetime: success rises within a block; other tasks decay by ``keep`` per block."""
    rng = np.random.default_rng(seed)
    hparams = {"memory": mixer, "stream": "mg-cycle", "d_model": 32, "seed": seed}
    tracker = Tracker.from_config(run_dir, TASKS, hparams, tracker_config(probe_every=0))
    skill = dict.fromkeys(TASKS, 0.05)
    tracker.log_probe(0, dict(skill))
    step, visits = 0, dict.fromkeys(TASKS, 0)
    for bi, task in enumerate(SCHEDULE):
        visits[task] += 1
        tracker.log_task_switch(step, task, visits[task], bi)
        for e in range(steps_per_block // 20):
            step += 20
            skill[task] = min(1.0, skill[task] + 0.06)
            success = float(rng.random() < skill[task])
            tracker.log_episode(step, task, 0.9 * success, 20, success, e + 1)
        tracker.log_scalars(step, {"charts/sps": 2000.0 + 100 * seed})
        for other in TASKS:
            if other != task:
                skill[other] *= keep
        tracker.log_probe(step, {t: skill[t] for t in TASKS if t in SCHEDULE[: bi + 2]}, block_end=bi)  # seen + next
    return tracker.finalize()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    for i, (mixer, keep) in enumerate((("gated_deltanet", 0.9), ("mamba2", 0.5))):
        for seed in (0, 1):
            simulate_run(root / f"{i * 2 + seed}", mixer, seed, keep)
    # a reference run nested in a run is not a run of its own
    simulate_run(root / "0" / "reference" / "DoorKey", "gated_deltanet", 9, 0.9)
    return root


def test_a_multirun_directory_is_searched_for_runs_without_their_reference_runs(runs, tmp_path):
    found = find_run_dirs([runs])
    assert sorted(p.name for p in found) == ["0", "1", "2", "3"]
    with pytest.raises(FileNotFoundError, match="summary.json"):
        find_run_dirs([tmp_path])  # an empty folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_run_dirs([tmp_path / "missing"])


def test_compare_writes_table_markdown_and_png_with_mean_and_spread_over_seeds(runs, tmp_path):
    table, png = compare_runs([runs], tmp_path)
    assert png == tmp_path / "compare.png" and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(table.index) == ["gated_deltanet", "mamba2"]
    assert (table.runs == 2).all()
    for name in FIGURES:
        assert name in table.columns and f"{name}_std" in table.columns
    # the mean over seeds is the mean of the two runs' summary.json figures
    accs = [json.loads((runs / d / "summary.json").read_text())["cl"]["acc"] for d in ("0", "1")]
    assert table.loc["gated_deltanet", "acc"] == pytest.approx(np.mean(accs))
    assert table.loc["gated_deltanet", "acc_std"] == pytest.approx(np.std(accs, ddof=1))
    # the forgetful mixer forgets more and retains less
    assert table.loc["mamba2", "forgetting"] > table.loc["gated_deltanet", "forgetting"]
    csv = pd.read_csv(tmp_path / "compare.csv", index_col=0)
    assert csv.loc["mamba2", "acc"] == pytest.approx(table.loc["mamba2", "acc"])
    md = (tmp_path / "compare.md").read_text()
    assert "| gated_deltanet | mg-cycle | 2 |" in md and "±" in md


def test_groups_that_differ_in_more_than_the_mixer_are_labelled_by_the_difference(tmp_path):
    simulate_run(tmp_path / "runs" / "a", "gla", 0, 0.8)
    run_b = tmp_path / "runs" / "b"
    simulate_run(run_b, "gla", 0, 0.8)
    summary = json.loads((run_b / "summary.json").read_text())
    summary["hparams"]["d_model"] = 64
    (run_b / "summary.json").write_text(json.dumps(summary))
    table, _ = compare_runs([tmp_path / "runs" / "a", run_b], tmp_path / "out")
    assert list(table.index) == ["gla (d_model=32)", "gla (d_model=64)"]
    assert (table.runs == 1).all() and (table.acc_std == 0).all()


def test_single_task_runs_leave_stability_undefined_but_still_compare(tmp_path):
    t = Tracker.from_config(tmp_path / "one", ["A"], {"memory": "gla", "seed": 0}, tracker_config(probe_every=0))
    t.log_task_switch(0, "A", 1, 0)
    t.log_episode(10, "A", 1.0, 10, 1.0, 1)
    t.log_probe(10, {"A": 1.0}, block_end=0)
    t.finalize()
    table, png = compare_runs([tmp_path / "one"], tmp_path / "out")
    assert math.isnan(table.loc["gla", "retention"]) and table.loc["gla", "acc"] == 1.0
    assert png.is_file()


def test_display_table_has_one_row_per_figure_and_one_column_per_group(runs, tmp_path):
    table, _ = compare_runs([runs], tmp_path)
    shown = display_table(table)
    assert list(shown.columns) == ["gated_deltanet", "mamba2"]
    assert list(shown.index) == ["runs", "stream", *FIGURES]
    acc = table.loc["mamba2"]
    assert shown.loc["acc", "mamba2"] == f"{acc['acc']:.3f} ± {acc['acc_std']:.3f}"
    assert shown.loc["forward_transfer_cw", "mamba2"] == "-"
