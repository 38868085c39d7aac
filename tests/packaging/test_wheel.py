"""A normal (non-editable) install works like the editable one (issue: one import root, configs ship).

The wheel is built from the checkout, installed into a fresh venv in a temporary folder outside the
checkout, and the console script is run from there: the mixers and streams tables are not empty and
a 600-step smoke lifetime finishes with a summary.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.cli import CHEAP_PROBES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TRITON_INTERPRET")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv bin folder, a work folder outside the checkout) with the wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a clean copy: building in the checkout would leave build/ there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs", "outputs", "multirun"))
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], cwd=work)
    wheel = next(dist.glob("lifelong-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    bin_dir = venv / "bin"
    _run([str(bin_dir / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)], cwd=work)
    return bin_dir, work


def test_the_wheel_holds_one_import_root_and_the_configs(installed):
    bin_dir, work = installed
    wheel = next((work / "dist").glob("lifelong-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lifelong"}, f"import roots other than lifelong in the wheel: {top_level}"
    for required in ("lifelong/configs/config.yaml", "lifelong/configs/memory/gated_deltanet.yaml",
                     "lifelong/configs/stream/smoke.yaml", "lifelong/configs/agent/ppo.yaml",
                     "lifelong/kernels/gated_linear/chunk.py", "lifelong/agents/loop.py"):
        assert required in names, f"{required} is not in the wheel"


def test_installed_mixers_and_streams_are_listed(installed):
    bin_dir, work = installed
    mixers = _run([str(bin_dir / "lifelong"), "mixers"], cwd=work).stdout
    for name in ("gated_deltanet", "palimpsa", "softmax"):
        assert name in mixers
    streams = _run([str(bin_dir / "lifelong"), "streams"], cwd=work).stdout
    assert "smoke" in streams and "mg-cycle" in streams
    version = _run([str(bin_dir / "python"), "-m", "lifelong", "--version"], cwd=work).stdout
    assert version.startswith("lifelong ")


def test_installed_smoke_lifetime_runs(installed):
    bin_dir, work = installed
    run_dir = work / "run"
    # 600 env steps: 2 lifetimes x 300, learning from segments of 64 (the default 8 x 128 is one 1,024-step segment)
    _run([str(bin_dir / "lifelong"), "run", "stream=smoke", "total_steps=600", "num_envs=2", "agent.segment_length=64",
          "progress=false", f"hydra.run.dir={run_dir}", *CHEAP_PROBES], cwd=work)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 600, summary["steps"]
