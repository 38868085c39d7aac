"""The ``lifelong`` console script as a user runs it."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from helpers.cli import CHEAP_PROBES, lifelong


SMOKE = (
    "memory=gated_deltanet", "stream=smoke", "stream.steps_per_task=150", "num_envs=2",
    "total_steps=900", "agent.segment_length=32", "agent.d_model=32", "seed=1",
    "tracker.probe_every=300", "tracker.log_every=100", "progress=false", *CHEAP_PROBES,
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("cli")
    run_dir = work / "run"
    result = lifelong("run", *SMOKE, f"hydra.run.dir={run_dir}", cwd=work)
    return result, run_dir


def test_run_finishes_and_says_where_to_look(smoke_run):
    result, run_dir = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(run_dir.resolve()) in result.stdout
    assert f"tensorboard --logdir {run_dir.resolve()} --host 127.0.0.1" in result.stdout
    assert "per-task results" in result.stdout
    assert "probe success at each block end" in result.stdout  # R, a row per block end
    assert "wall time" in result.stdout and "probes" in result.stdout


def test_the_block_end_table_reads_learning_forgetting_and_relearning_down_a_column():
    from rich.console import Console

    from lifelong.summary import print_block_probes

    summary = {"task_names": ["a", "b"], "R": [[1.0, 0.0], [0.5, 1.0], [1.0, float("nan")]],
               "R_ci": [[[1.0, 1.0], [0.0, 0.0]], [[0.25, 0.75], [1.0, 1.0]], [[1.0, 1.0], None]],
               "R_steps": [100, 200, 250], "R_block_tasks": [0, 1, 0], "R_episodes": [[64, 64]] * 3}
    console = Console(width=200, record=True)
    print_block_probes(summary, console)
    lines = console.export_text().splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│ ")]
    assert rows[1] == ["1 (b)", "200", "0.50 [0.25, 0.75]", "1.00 [1.00, 1.00]"]  # a forgotten, b learned
    assert rows[2] == ["2 (a)", "250", "1.00 [1.00, 1.00]", "-"]  # the partial final row; NaN shown as -
    assert "64 episodes an entry" in lines[0]


def test_run_writes_a_summary_with_finite_figures(smoke_run):
    result, run_dir = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"], "summary.json lists no task"
    for task, row in summary["tasks"].items():
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value) or key.startswith(("fwt", "bwt")), (task, key, value)


def test_run_logs_the_design_tags_to_tensorboard(smoke_run):
    from tbparse import SummaryReader

    result, run_dir = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = SummaryReader(str(run_dir), extra_columns={"dir_name"}).scalars
    tags = set(scalars[scalars.dir_name == ""]["tag"])
    for prefix in ("charts/sps", "losses/", "memory/layer0/state_norm", "cl/acc"):
        assert any(t.startswith(prefix) for t in tags), f"no {prefix} tag in {sorted(tags)}"
    for task in ("doorkey", "doorkey-permuted"):  # each task's curves in its own run, under shared tags
        task_tags = set(scalars[scalars.dir_name == f"tasks/{task}"]["tag"])
        assert {"probe/success", "train/success", "train/return"} <= task_tags, (task, sorted(task_tags))
    values = scalars["value"].astype(float)
    assert values.map(math.isfinite).all(), scalars[~values.map(math.isfinite)]


def test_unknown_mixer_is_a_one_line_error_naming_the_choices(tmp_path):
    result = lifelong("run", "memory=nope", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "unknown memory 'nope'" in lines[0] and "gated_deltanet" in lines[0]


def test_unknown_stream_is_a_one_line_error_naming_the_choices(tmp_path):
    result = lifelong("run", "stream=nope", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "unknown stream 'nope'" in result.stderr and "smoke" in result.stderr


def test_heads_that_do_not_divide_the_width_fail_before_any_work(tmp_path):
    result = lifelong("run", "stream=smoke", "agent.d_model=30", "memory.num_heads=4", cwd=tmp_path, timeout=180)
    assert result.returncode == 2
    assert "not divisible by num_heads" in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("summary.json"))


def test_streams_lists_the_configured_streams(tmp_path):
    result = lifelong("streams", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("smoke", "mg-cycle"):
        assert name in result.stdout


def test_mixers_lists_the_configured_mixers(tmp_path):
    result = lifelong("mixers", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "gated_deltanet" in result.stdout


@pytest.mark.slow
def test_reference_runs_give_continual_world_forward_transfer(tmp_path):
    run_dir = tmp_path / "run"
    result = lifelong("run", *SMOKE, "reference=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    for task in summary["task_names"]:
        assert (run_dir / "reference" / task / "summary.json").is_file()
        assert "forward_transfer_cw" in summary["tasks"][task]
    assert "forward_transfer_cw" in summary["cl"]


@pytest.mark.slow
def test_a_sweep_then_compare_gives_a_table_and_a_figure(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = lifelong(
        "run", "-m", *SMOKE[1:], "memory=gated_deltanet,mamba2", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep_dir.rglob("summary.json"))) == 2
    compared = lifelong("compare", str(sweep_dir), cwd=tmp_path, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "gated_deltanet" in compared.stdout and "mamba2" in compared.stdout
    assert (sweep_dir / "compare.png").stat().st_size > 10_000
    assert (sweep_dir / "compare.md").is_file()
