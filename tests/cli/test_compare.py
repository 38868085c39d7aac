"""``lifelong compare`` as a user runs it, on synthetic ``summary.json`` files written to the contract."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers.cli import LIFELONG, lifelong


def _report_fixtures():
    """The summary writer of tests/tracking/test_report.py (one fixture writer for both test files)."""
    path = Path(__file__).parents[1] / "tracking" / "test_report.py"
    spec = importlib.util.spec_from_file_location("compare_summary_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _report_fixtures()


@pytest.fixture(scope="module", autouse=True)
def _console_script():
    if not Path(LIFELONG).exists():
        pytest.skip("the lifelong console script is not installed (pip install -e .)")


def test_compare_splits_groups_by_configuration_and_says_where_the_files_went(tmp_path):
    sweep = fixtures.write_sweep(tmp_path / "multirun")
    old = json.loads((sweep / "mamba_s1" / "summary.json").read_text())
    del old["config_key"]  # written by an older lifelong
    (sweep / "old").mkdir()
    (sweep / "old" / "summary.json").write_text(json.dumps(old))
    out = tmp_path / "report"
    result = lifelong("compare", str(sweep), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    # three groups: the run with another stream.steps_per_task is a group of its own, marked n=1
    width = len(fixtures.LONG)
    assert f"[1] {fixtures.LONG:<{width}}   n=3" in stdout
    assert f"[2] {fixtures.SHORT:<{width}}   n=1" in stdout
    assert f"[3] {fixtures.MAMBA:<{width}}   n=3" in stdout
    header = next(line for line in stdout.splitlines() if "[1] gated_deltanet" in line and "[3] mamba2" in line)
    assert "[2] gated_deltanet" in header
    assert "0.600 ±" in stdout and "n=1: one seed" in stdout
    # the skipped runs: one line each on stderr, naming the file; the others still compare
    warnings = [line for line in result.stderr.splitlines() if line.startswith("lifelong: warning:")]
    assert len(warnings) == 3
    assert any(str(sweep / "corrupt" / "summary.json") in w for w in warnings)
    assert any(str(sweep / "stopped" / "summary.json") in w and "unfinished" in w for w in warnings)
    assert any(str(sweep / "old" / "summary.json") in w and "older lifelong" in w for w in warnings)
    for name in ("compare.md", "compare.csv", "compare_tasks.md", "compare.png", "compare_R.png"):
        assert (out / name).stat().st_size > 0
        assert str(out / name) in stdout.replace("\n", "")
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_nothing_to_compare_is_a_one_line_error_with_exit_code_2(tmp_path):
    fixtures.write_summary(tmp_path / "stopped", "mamba2", 0, keep=0.5, acc=0.1, finished=False)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "summary.json").write_text("{")
    result = lifelong("compare", str(tmp_path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("lifelong: error:")]
    assert len(errors) == 1 and "nothing to compare" in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "out").exists()
