"""Sweeps through Hydra's launcher plugins, as a user runs them: ``lifelong run -m hydra/launcher=...``.

The joblib launcher runs the jobs in worker processes (loky) and submitit_local as separate local
processes, as submitit_slurm does on a cluster: both pickle the Hydra task function, so these tests
fail if it cannot be pickled (e.g. a function nested in another one, pickled by value with the
module globals it uses). Each job is tiny; the extras come with ``pip install -e '.[dev]'``.
"""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.cli import CHEAP_PROBES, lifelong

#: a lifetime of a few seconds on one CPU thread
TINY = (
    "memory=gated_deltanet", "stream=smoke", "stream.steps_per_task=50", "num_envs=2", "total_steps=256",
    "agent.segment_length=64", "agent.d_model=16", "agent.num_layers=1",
    "tracker.probe_every=0", "progress=false", *CHEAP_PROBES,
)
SEEDS = [0, 1]


def _failure(result: subprocess.CompletedProcess, sweep_dir: Path) -> str:
    """What to show when a sweep failed: the command's output and the jobs' own logs (submitit)."""
    parts = [f"exit {result.returncode}", "--- stdout", result.stdout[-2000:], "--- stderr", result.stderr[-4000:]]
    for log in sorted(sweep_dir.glob(".submitit/*/*.err")):
        parts += [f"--- {log.relative_to(sweep_dir)}", log.read_text(errors="replace")[-3000:]]
    text = "\n".join(parts)
    if "pickle" in text:
        text = ("the launcher could not pickle the Hydra task function (it must be a module-level function of "
                "lifelong.cli, decorated inside _run_app)\n") + text
    return text


def _job_seed(job_dir: Path) -> int:
    """The seed the sweep gave this job, from Hydra's record of its overrides."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    return int(next(o.partition("=")[2] for o in overrides if o.startswith("seed=")))


def _check_sweep(result: subprocess.CompletedProcess, sweep_dir: Path, cwd: Path) -> None:
    assert result.returncode == 0, _failure(result, sweep_dir)
    job_dirs = sorted(p.parent for p in sweep_dir.glob("*/summary.json"))
    assert len(job_dirs) == len(SEEDS), (sorted(p.name for p in sweep_dir.iterdir()), _failure(result, sweep_dir))
    seeds = []
    for job_dir in job_dirs:
        summary = json.loads((job_dir / "summary.json").read_text())
        assert summary["finished"] is True, job_dir
        assert summary["hparams"]["seed"] == _job_seed(job_dir), job_dir
        seeds.append(summary["hparams"]["seed"])
    assert sorted(seeds) == SEEDS
    compared = lifelong("compare", str(sweep_dir), cwd=cwd, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(sweep_dir / "compare.csv")
    assert table["seeds"].tolist() == [len(SEEDS)], table  # one group: the two seeds


def test_the_task_function_pickles_by_reference():
    """What a launcher sends to its workers: the task function, by reference (lifelong.cli.run_lifetime)."""
    import lifelong.cli

    task = getattr(lifelong.cli, "run_lifetime", None)
    assert task is not None, "lifelong.cli has no module-level task function run_lifetime"
    assert pickle.loads(pickle.dumps(task)) is task


@pytest.mark.slow
def test_a_joblib_sweep_runs_the_jobs_in_parallel_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[joblib]'")
    sweep_dir = tmp_path / "sweep"
    result = lifelong(
        "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"seed={','.join(map(str, SEEDS))}",
        *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=300, full_error=True,
    )
    _check_sweep(result, sweep_dir, tmp_path)


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_the_jobs_as_local_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    sweep_dir = tmp_path / "sweep"
    result = lifelong(
        "run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
        "hydra.launcher.gpus_per_node=0", f"seed={','.join(map(str, SEEDS))}",
        *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=300, full_error=True,
    )
    _check_sweep(result, sweep_dir, tmp_path)
    assert (sweep_dir / ".submitit").is_dir()  # the jobs really went through submitit
