"""``lifelong compare``'s report on synthetic ``summary.json`` files written to the contract: grouping by
configuration (never averaging two), mean and Student-t CI across seeds, skipped runs, the files."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lifelong.tracking.report import (
    FIGURES, NothingToCompare, RunSkipped, aggregate, compare, compare_runs,
    display_table, find_run_dirs, group_runs, load_runs,
)

TASKS = ["doorkey", "doorkey-permuted"]
SCHEDULE = ["doorkey", "doorkey-permuted", "doorkey"]
T_2 = 4.302652729749464  # Student t, 2 degrees of freedom, 97.5% quantile (tables)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_config(memory: str, steps_per_task: int = 500, stream: str = "smoke") -> dict:
    """A resolved run configuration (no seed, no hydra), as the tracker writes it."""
    mixers = {
        "gated_deltanet": {"name": "gated_deltanet", "_target_": "lifelong.memory_layers.gated_deltanet.GatedDeltaNet",
                           "num_heads": 4, "use_gate": True, "reset_on": "never"},
        "mamba2": {"name": "mamba2", "_target_": "lifelong.memory_layers.mamba2.Mamba2", "num_heads": 4,
                   "dt_min": 0.001, "reset_on": "never"},
    }
    return {
        "memory": mixers[memory],
        "stream": {"name": stream, "unit": "steps", "steps_per_task": steps_per_task,
                   "tasks": {t: {"env_id": "MiniGrid-DoorKey-5x5-v0"} for t in TASKS},
                   "schedule": {"type": "blocked", "order": SCHEDULE}},
        "agent": {"d_model": 16, "num_layers": 1, "lr": 0.0003},
        "num_envs": 2, "total_steps": None, "device": "cpu",
        "tracker": {"probe_every": 250, "probe_episodes": 2},
    }


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def write_summary(run_dir: Path, memory: str, seed: int, *, keep: float, acc: float, steps_per_task: int = 500,
                  stream: str = "smoke", finished: bool = True, acc_ci: tuple[float, float] | None = None) -> dict:
    """A ``summary.json`` following the contract: probes twice per block; the trained task's success
    rises, the other decays by ``keep`` per probe; ``cl.acc`` is ``acc`` as given (hand-checked)."""
    rng = np.random.default_rng(seed)
    config = make_config(memory, steps_per_task, stream)
    skill = dict.fromkeys(TASKS, 0.05)
    curves = {t: {"step": [0], "success": [0.05], "low": [0.0], "high": [0.15]} for t in TASKS}
    R, R_ci, blocks, R_steps = [], [], [], []
    for k, task in enumerate(SCHEDULE):
        start, end = k * steps_per_task, (k + 1) * steps_per_task
        blocks.append({"index": k, "task": task, "visit": SCHEDULE[: k + 1].count(task), "start": start, "end": end})
        for step in (start + steps_per_task // 2, end):
            skill[task] = min(1.0, skill[task] + 0.3 + 0.02 * rng.standard_normal())
            for other in TASKS:
                if other != task:
                    skill[other] *= keep
            for t in TASKS:
                curves[t]["step"].append(step)
                curves[t]["success"].append(round(skill[t], 4))
                curves[t]["low"].append(round(max(0.0, skill[t] - 0.1), 4))
                curves[t]["high"].append(round(min(1.0, skill[t] + 0.1), 4))
        R.append([round(skill[t], 4) for t in TASKS])
        R_ci.append([[max(0.0, skill[t] - 0.1), min(1.0, skill[t] + 0.1)] for t in TASKS])
        R_steps.append(end)
    R[0][1] = None  # the next task's entry of the first row: not measured in this fixture
    R_ci[0][1] = None
    final = R[-1]
    forgetting = {t: max(R[k][j] for k in range(len(R) - 1) if R[k][j] is not None) - final[j] for j, t in enumerate(TASKS)}
    cl = {"acc": acc, "forgetting": forgetting["doorkey-permuted"], "forgetting_cw": forgetting["doorkey-permuted"],
          "bwt": R[2][1] - R[1][1], "fwt": R[0][1], "learning_accuracy": (R[0][0] + R[1][1]) / 2,
          "retention": 1 - forgetting["doorkey-permuted"], "forward_transfer_cw": None}
    summary = {
        "finished": finished, "seed": seed, "config": config, "config_key": config_key(config),
        "memory": memory, "stream": stream, "task_names": TASKS, "steps": len(SCHEDULE) * steps_per_task,
        "blocks": blocks, "R": R, "R_ci": R_ci, "R_episodes": [[8, 8]] * len(R), "R_block_tasks": SCHEDULE,
        "R_steps": R_steps, "baseline": [0.05, 0.05], "cl": cl,
        "cl_ci": {name: (list(acc_ci) if name == "acc" and acc_ci else None) for name in cl},
        "probe_curves": curves,
        "tasks": {t: {"forgetting": forgetting[t], "forgetting_cw": forgetting[t], "forward_transfer_cw": None,
                      "final_success": final[j], "baseline": 0.05} for j, t in enumerate(TASKS)},
        "last": {"charts/sps": 1000.0 + 100.0 * seed}, "adaptation": {"online": [], "frozen": []}, "revisits": [],
        "hparams": {"memory": memory, "stream": stream, "seed": seed},
    }
    if not finished:
        summary["stopped_at_step"] = 700
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


GDN_ACC = (0.5, 0.6, 0.7)
MAMBA_ACC = (0.30, 0.35, 0.43)


def write_sweep(root: Path) -> Path:
    """2 mixers x 3 seeds, 1 run with another stream.steps_per_task, a corrupt and an unfinished run."""
    for seed in range(3):
        write_summary(root / f"gdn_s{seed}", "gated_deltanet", seed, keep=0.9, acc=GDN_ACC[seed])
        write_summary(root / f"mamba_s{seed}", "mamba2", seed, keep=0.5, acc=MAMBA_ACC[seed])
    write_summary(root / "gdn_short", "gated_deltanet", 0, keep=0.9, acc=0.6, steps_per_task=300, acc_ci=(0.4, 0.8))
    write_summary(root / "stopped", "mamba2", 7, keep=0.5, acc=0.1, finished=False)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "summary.json").write_text('{"finished": true, "config_key": ')
    # a reference run nested in a run belongs to it: not compared
    write_summary(root / "gdn_s0" / "reference" / "doorkey", "gated_deltanet", 9, keep=0.9, acc=0.9)
    return root


LONG = "gated_deltanet (stream.steps_per_task=500)"
SHORT = "gated_deltanet (stream.steps_per_task=300)"
MAMBA = "mamba2 (stream.steps_per_task=500)"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("multirun"))


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with pytest.warns(RunSkipped) as caught:
        result = compare([sweep], out)
    return result, out, [str(w.message) for w in caught]


def test_runs_are_found_below_a_multirun_directory_without_their_reference_runs(sweep, tmp_path):
    names = sorted(p.name for p in find_run_dirs([sweep]))
    assert names == ["corrupt", "gdn_s0", "gdn_s1", "gdn_s2", "gdn_short", "mamba_s0", "mamba_s1", "mamba_s2", "stopped"]
    with pytest.raises(FileNotFoundError, match="summary.json"):
        find_run_dirs([tmp_path])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_run_dirs([tmp_path / "missing"])


def test_a_config_difference_splits_groups_and_labels_them_by_it(report):
    result, _, _ = report
    assert [g.label for g in result.groups] == [LONG, SHORT, MAMBA]
    assert [g.seeds for g in result.groups] == [3, 1, 3]
    assert len({g.config_key for g in result.groups}) == 3
    assert list(result.table.index) == [LONG, SHORT, MAMBA]
    # the one-seed run's acc (0.6) is not averaged into the three-seed group of the other configuration
    assert result.table.loc[SHORT, "acc"] == 0.6 and result.table.loc[LONG, "seeds"] == 3


def test_the_table_holds_the_mean_and_student_t_interval_across_seeds(report):
    table = report[0].table
    for label, accs in ((LONG, GDN_ACC), (MAMBA, MAMBA_ACC)):
        mean = sum(accs) / 3
        sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
        half = T_2 * sd / math.sqrt(3)
        assert table.loc[label, "acc"] == pytest.approx(mean)
        assert table.loc[label, "acc_low"] == pytest.approx(mean - half)
        assert table.loc[label, "acc_high"] == pytest.approx(mean + half)
        assert table.loc[label, "acc_n"] == 3
    # sps from last["charts/sps"] = 1000, 1100, 1200: mean 1100, sd 100
    assert table.loc[LONG, "sps"] == pytest.approx(1100.0)
    assert table.loc[LONG, "sps_high"] == pytest.approx(1100.0 + T_2 * 100.0 / math.sqrt(3))
    # undefined in every seed (no reference runs): NaN, shown as "-"
    assert math.isnan(table.loc[LONG, "forward_transfer_cw"])
    assert display_table(table).loc["CW fwd transfer", LONG] == "-"
    # the mixer that keeps less forgets more
    assert table.loc[MAMBA, "forgetting"] > table.loc[LONG, "forgetting"]
    shown = display_table(table)
    assert list(shown.columns) == [LONG, SHORT, MAMBA]
    assert shown.loc["ACC", LONG] == f"0.600 ± {T_2 * 0.1 / math.sqrt(3):.3f}"


def test_a_one_seed_group_is_marked_and_shows_only_its_own_bootstrap_interval(report):
    result, out, _ = report
    row = result.table.loc[SHORT]
    assert row["seeds"] == 1 and math.isnan(row["acc_low"]) and math.isnan(row["acc_high"])
    assert (row["acc_run_low"], row["acc_run_high"]) == (0.4, 0.8)
    assert display_table(result.table).loc["ACC", SHORT] == "0.600 (n=1; run's bootstrap 0.400–0.800)"
    assert display_table(result.table).loc["BWT", SHORT].endswith("(n=1)")
    md = (out / "compare.md").read_text()
    assert f"| {SHORT} | smoke | 1 | 0.600 (n=1; run's bootstrap 0.400–0.800) |" in md
    assert "n=1: one seed, so no interval across seeds" in md
    assert "differ between groups, in the labels: stream.steps_per_task; implied by the mixer / stream name: memory." in md


def test_corrupt_unfinished_and_old_summaries_are_skipped_with_a_warning_naming_the_file(report, sweep, tmp_path):
    _, _, messages = report
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert any(str(sweep / "corrupt" / "summary.json") in m and "cannot read" in m for m in messages)
    assert any(str(sweep / "stopped" / "summary.json") in m and "unfinished" in m for m in messages)
    old = json.loads((sweep / "gdn_s1" / "summary.json").read_text())
    del old["config_key"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    older = pytest.warns(RunSkipped, match=r"old/summary\.json was written by an older lifelong")
    with older, pytest.raises(NothingToCompare, match="nothing to compare"):
        compare([tmp_path / "old"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_same_configuration_and_seed_twice_counts_once(tmp_path):
    write_summary(tmp_path / "a", "mamba2", 0, keep=0.5, acc=0.3)
    write_summary(tmp_path / "b", "mamba2", 0, keep=0.5, acc=0.3)
    write_summary(tmp_path / "c", "mamba2", 1, keep=0.5, acc=0.5)
    with pytest.warns(RunSkipped, match="not another seed"):
        groups = group_runs(load_runs([tmp_path]))
    table = aggregate(groups)
    assert list(table.index) == ["mamba2"] and table.loc["mamba2", "seeds"] == 2
    assert table.loc["mamba2", "acc"] == pytest.approx(0.4)


def test_a_seed_without_a_figure_is_left_out_of_its_mean_and_the_count_says_so(tmp_path):
    for seed, bwt in enumerate((-0.2, -0.1, None)):
        summary = write_summary(tmp_path / str(seed), "mamba2", seed, keep=0.5, acc=0.3)
        summary["cl"]["bwt"] = bwt
        (tmp_path / str(seed) / "summary.json").write_text(json.dumps(summary))
    table = aggregate(group_runs(load_runs([tmp_path])))
    row = table.loc["mamba2"]
    half = 12.706204736174698 * math.sqrt(0.005) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(2)
    assert (row["bwt"], row["bwt_low"], row["bwt_high"], row["bwt_n"]) == pytest.approx((-0.15, -0.15 - half, -0.15 + half, 2))
    assert display_table(table).loc["BWT", "mamba2"] == f"-0.150 ± {half:.3f} (n=2)"


def test_the_files_are_written_tables_csv_and_non_empty_pngs(report):
    result, out, _ = report
    for name in ("compare.png", "compare_R.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert result.figures == [out / "compare.png"] and result.heatmap == out / "compare_R.png"
    csv = pd.read_csv(out / "compare.csv", index_col=0)
    assert csv.loc[MAMBA, "acc"] == pytest.approx(result.table.loc[MAMBA, "acc"])
    for name in FIGURES:
        assert {name, f"{name}_low", f"{name}_high", f"{name}_n"} <= set(csv.columns)
    runs = pd.read_csv(out / "compare_runs.csv")
    assert len(runs) == 7 and sorted(runs.seed.tolist()) == [0, 0, 0, 1, 1, 2, 2]


def test_the_per_task_table_has_each_group_and_task_with_its_interval(report, sweep):
    result, out, _ = report
    tasks = result.tasks.set_index(["group", "task"])
    assert len(tasks) == 3 * len(TASKS)
    values = [json.loads((sweep / f"mamba_s{s}" / "summary.json").read_text())["tasks"]["doorkey"]["forgetting"]
              for s in range(3)]
    mean, low, high = np.mean(values), *(
        np.mean(values) + sign * T_2 * np.std(values, ddof=1) / math.sqrt(3) for sign in (-1, 1))
    row = tasks.loc[(MAMBA, "doorkey")]
    assert (row["forgetting"], row["forgetting_low"], row["forgetting_high"]) == pytest.approx((mean, low, high))
    md = (out / "compare_tasks.md").read_text()
    assert f"| {MAMBA} | doorkey | 3 | " in md and f"| {SHORT} | doorkey | 1 | " in md
    assert "(n=1)" in md and "CW forgetting" in md and "CW fwd transfer" in md


def test_groups_from_different_streams_get_one_curve_figure_per_stream(tmp_path):
    write_summary(tmp_path / "a", "gated_deltanet", 0, keep=0.9, acc=0.5)
    write_summary(tmp_path / "b", "gated_deltanet", 0, keep=0.9, acc=0.5, stream="slippery")
    table, png = compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert list(table.index) == ["gated_deltanet (stream=slippery)", "gated_deltanet (stream=smoke)"]
    assert png == tmp_path / "out" / "compare_slippery.png"
    for name in ("compare_slippery.png", "compare_smoke.png", "compare_R.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "out" / "compare.png").exists()


def test_compare_adaptation_md_gives_every_switch_then_the_later_half_with_t_intervals(tmp_path):
    # k-th episode returns of 3 seeds, hand-chosen: over every switch and over the later half
    online = {0: [0.2, 0.4, 0.5, 0.6, 0.6], 1: [0.2, 0.5, 0.6, 0.6, 0.7], 2: [0.2, 0.6, 0.7, 0.6, 0.8]}
    later = {0: [0.1, 0.7, 0.8, 0.9, 0.9], 1: [0.1, 0.8, 0.9, 0.9, 0.9], 2: [0.1, 0.9, 1.0, 0.9, 0.9]}
    for seed in range(3):
        path = tmp_path / "runs" / f"gdn_s{seed}"
        summary = write_summary(path, "gated_deltanet", seed, keep=0.9, acc=0.5)
        summary["adaptation"] = {"online": online[seed], "online_later_half": later[seed], "frozen": []}
        (path / "summary.json").write_text(json.dumps(summary))
    write_summary(tmp_path / "runs" / "mamba_s0", "mamba2", 0, keep=0.5, acc=0.3)  # a summary without the figures
    compare([tmp_path / "runs"], tmp_path / "out")
    text = (tmp_path / "out" / "compare_adaptation.md").read_text()
    every, later_half = text.split("## the later half of the switches")
    # episode 2 over every switch: 0.4, 0.5, 0.6 -> mean 0.5, sd 0.1, half-width t_2 * 0.1 / sqrt(3)
    assert f"0.500 ± {T_2 * 0.1 / math.sqrt(3):.3f}" in every
    # episode 2 over the later half: 0.7, 0.8, 0.9 -> 0.8, the same half-width; episode 1 constant: 0 width
    assert f"| 0.100 ± 0.000 | 0.800 ± {T_2 * 0.1 / math.sqrt(3):.3f} |" in later_half
    assert "0.800" not in every and "the later half of the lifetime's switches" in later_half
    mamba_row = next(line for line in later_half.splitlines() if line.startswith("| mamba2"))
    assert mamba_row.count("| -") == 5  # no figures: shown as missing, not as zeros
