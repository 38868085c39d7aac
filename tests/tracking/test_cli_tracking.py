"""End to end through the ``lifelong`` command: a short run's TensorBoard tags and hparams (read back
with tbparse), then ``lifelong compare`` on two short runs writing a PNG and a table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import CHEAP_PROBES, LIFELONG, lifelong

SHORT = (
    "stream=smoke", "stream.steps_per_task=150", "num_envs=2", "total_steps=600", "agent.segment_length=32",
    "agent.d_model=16", "agent.num_layers=1", "tracker.probe_every=200", "tracker.log_every=100", "progress=false",
    *CHEAP_PROBES,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    if not Path(LIFELONG).exists():
        pytest.skip("the lifelong console script is not installed (pip install -e .)")
    root = tmp_path_factory.mktemp("tracking_cli")
    for mixer in ("gated_deltanet", "mamba2"):
        run_dir = root / "runs" / mixer
        result = lifelong("run", f"memory={mixer}", "seed=0", *SHORT, f"hydra.run.dir={run_dir}", cwd=root, full_error=True)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_a_short_run_writes_the_tracker_tags_and_hparams_into_its_own_directory(two_runs):
    from tbparse import SummaryReader

    run_dir = two_runs / "runs" / "gated_deltanet"
    reader = SummaryReader(str(run_dir), extra_columns={"dir_name"})
    df = reader.scalars
    main = set(df[df.dir_name == ""].tag)
    for tag in ("cl/acc", "cl/learning_accuracy", "charts/task_id", "charts/block", "charts/probe_env_steps",
                "plasticity/weight_norm", "plasticity/zero_activation_frac/layer0", "plasticity/dormant_tau/layer0",
                "memory/layer0/state_norm"):
        assert tag in main, f"{tag} missing from {sorted(main)}"
    assert "charts/task_switch" not in set(df.tag)
    for task in ("doorkey", "doorkey-permuted"):  # each task's curves in its own run, under shared tags
        tags = set(df[df.dir_name == f"tasks/{task}"].tag)
        assert {"probe/success", "train/success"} <= tags, (task, sorted(tags))
    hp = dict(zip(reader.hparams.tag, reader.hparams.value))
    assert hp.get("memory.name") == "gated_deltanet" and hp.get("stream.name") == "smoke" and "seed" in hp
    assert (reader.hparams.dir_name == "").all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["R"] and summary["cl"]["acc"] is not None and summary["memory"] == "gated_deltanet"
    # blocks of 150 tokens x 2 lifetimes: rows at the ends of blocks 0 and 1 (the run stops on the latter)
    assert summary["R_steps"] == [300, 600] and summary["R_blocks"] == [0, 1]
    probes = json.loads((run_dir / "probes.json").read_text())
    assert [p["block_end"] for p in probes["probes"] if p["block_end"] is not None] == [0, 1]


def test_compare_on_two_short_runs_writes_a_png_and_a_table(two_runs):
    out = two_runs / "report"
    result = lifelong("compare", str(two_runs / "runs"), "--out", str(out), cwd=two_runs, full_error=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "compare.md").read_text()
    assert "| gated_deltanet |" in table and "| mamba2 |" in table
