"""Lifetimes that survive: a real lifetime (real envs, tracker and probes) killed or stopped in a
subprocess and continued with ``lifelong resume`` ends exactly as the uninterrupted run does."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from helpers.cli import CHEAP_PROBES, lifelong

from lifelong.launch import RunFailed, prepare_run_dir
from lifelong.run_dir import SAVED_CONFIG

pytestmark = pytest.mark.slow

RUN = (
    "memory=gated_deltanet", "stream=smoke", "stream.steps_per_task=100", "num_envs=2", "total_steps=1200",
    "agent.segment_length=32", "agent.d_model=16", "agent.num_layers=1", "seed=3", "tracker.probe_every=400",
    "tracker.log_every=128", "progress=false", "checkpoint_every=64", "checkpoint_keep=2", *CHEAP_PROBES,
)
TIMING = ("sps", "wall_seconds", "probe_seconds", "probe_share")  # wall-clock figures: all a resumed run may differ in


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("TRITON_INTERPRET", None)
    return env


def _python(code: str, cwd: Path) -> subprocess.Popen:
    """``lifelong`` in a child Python that first runs ``code`` (the fault to inject), as a user's process."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _main(*args: str, fault: str = "") -> str:
    return f"{fault}\nfrom lifelong.cli import main\nmain({list(args)!r})\n"


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def _wait_for_checkpoint_after(proc: subprocess.Popen, run_dir: Path, newest: Path | None, timeout: float = 300) -> None:
    """Block until ``run_dir`` holds a checkpoint newer than ``newest`` (or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        paths = _checkpoints(run_dir)
        if paths and (newest is None or paths[-1].name > newest.name):
            return
        time.sleep(0.05)
    raise AssertionError(f"no new checkpoint in {run_dir}: {proc.communicate()[1][-2000:] if proc.poll() is not None else 'timeout'}")


def _drop_timing(value):
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [_drop_timing(v) for v in value]
    return value


def _summary(run_dir: Path) -> dict:
    return _drop_timing(json.loads((run_dir / "summary.json").read_text()))


def _scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    from tbparse import SummaryReader

    frame = SummaryReader(str(run_dir)).scalars
    rows = [(r.tag, int(r.step), float(r.value)) for r in frame.itertuples() if not any(t in r.tag for t in TIMING)]
    return sorted(rows)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    result = lifelong("run", *RUN, f"hydra.run.dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def test_a_run_killed_three_times_then_resumed_ends_as_the_uninterrupted_run(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    # 1: SIGKILL at a random moment after the first checkpoint
    proc = _python(_main("run", *RUN, f"hydra.run.dir={run_dir}"), tmp_path)
    _wait_for_checkpoint_after(proc, run_dir, None)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
    # 2: killed in the middle of writing its second checkpoint (half a file on disk, then SIGKILL)
    fault = (
        "import os, signal, torch\n"
        "save, calls = torch.save, []\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        f.write(b'half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return save(obj, f, *a, **k)\n"
        "torch.save = dying_save\n"
    )
    proc = _python(_main("resume", str(run_dir), fault=fault), tmp_path)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert list((run_dir / "checkpoints").glob(".*.tmp")), "the killed write should have left its temporary file"
    # 3: resumed again, SIGKILL at a random moment after its next checkpoint
    newest = _checkpoints(run_dir)[-1]
    proc = _python(_main("resume", str(run_dir)), tmp_path)
    _wait_for_checkpoint_after(proc, run_dir, newest)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
    # and resumed to the end
    result = lifelong("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "resume removes the temporaries of killed writes"
    assert len(_checkpoints(run_dir)) <= 2  # checkpoint_keep=2
    assert _summary(run_dir) == _summary(uninterrupted)
    assert _scalars(run_dir) == _scalars(uninterrupted)


def test_ctrl_c_saves_writes_an_unfinished_summary_and_says_how_to_resume(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = _python(_main("run", *RUN, f"hydra.run.dir={run_dir}"), tmp_path)
    _wait_for_checkpoint_after(proc, run_dir, None)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert "stopped by SIGINT" in last_line and f"lifelong resume {run_dir}" in last_line
    partial = json.loads((run_dir / "summary.json").read_text())
    assert partial["finished"] is False and partial["stopped_at_step"] == int(_checkpoints(run_dir)[-1].stem[5:])
    # saved as by a lifelong before agent.bootstrap_time_limits existed: resumes as its old behaviour
    saved = run_dir / SAVED_CONFIG
    old = OmegaConf.load(saved)
    assert old.agent.pop("bootstrap_time_limits") is True
    OmegaConf.save(old, saved)
    result = lifelong("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _summary(run_dir) == _summary(uninterrupted)
    again = lifelong("resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr


def test_sigterm_stops_gracefully_with_its_own_exit_status(tmp_path):
    run_dir = tmp_path / "run"
    proc = _python(_main("run", *RUN, f"hydra.run.dir={run_dir}"), tmp_path)
    _wait_for_checkpoint_after(proc, run_dir, None)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "lifelong resume" in stderr


def test_a_ctrl_c_to_the_whole_process_group_stops_a_process_learner_run_gracefully(tmp_path):
    """A terminal's Ctrl-C reaches every process of its group: with ``agent.overlap=process`` the
    learner process ignores it, answers the acting process's checkpoint and exits with it."""
    run_dir = tmp_path / "run"
    code = _main("run", *RUN, f"hydra.run.dir={run_dir}", "agent.overlap=process")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_checkpoint_after(proc, run_dir, None)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped by SIGINT" in stderr
    group = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    running = [line for line in group.splitlines() if line.strip() and not line.split()[0].startswith("Z")]
    assert running == [], group  # the learner process exited too (an exited one unreaped by init is fine)
    result = lifelong("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True


def test_an_error_after_start_up_is_one_line_naming_the_last_checkpoint(tmp_path):
    fault = (
        "from lifelong.agents.ppo import PPOLearner\n"
        "update, calls = PPOLearner.update, []\n"
        "def failing_update(self, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4:\n"
        "        raise RuntimeError('injected fault')\n"
        "    return update(self, *a, **k)\n"
        "PPOLearner.update = failing_update\n"
    )
    run_dir = tmp_path / "run"
    proc = _python(_main("run", *RUN, f"hydra.run.dir={run_dir}", fault=fault), tmp_path)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "RuntimeError at env step 256: injected fault" in lines[0]
    assert f"last good checkpoint {_checkpoints(run_dir)[-1]}" in lines[0] and "debug=true" in lines[0]
    debug_dir = tmp_path / "debug"
    proc = _python(_main("run", *RUN, f"hydra.run.dir={debug_dir}", "debug=true", fault=fault), tmp_path)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" in stderr and "injected fault" in stderr


def test_running_into_a_directory_that_holds_a_run_is_refused(uninterrupted, tmp_path):
    result = lifelong("run", *RUN, f"hydra.run.dir={uninterrupted}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"already holds a run: continue it with `lifelong resume {uninterrupted}`" in result.stderr
    assert "overwrite=true" in result.stderr


def test_overwrite_starts_afresh_without_mixing_old_files(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_000000000064.pt").write_bytes(b"old")
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"old")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(RunFailed, match="lifelong resume"):
        prepare_run_dir(tmp_path, overwrite=False)
    assert prepare_run_dir(tmp_path, overwrite=True) == "fresh"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_existing_continues_an_unfinished_run_and_leaves_a_finished_one(tmp_path):
    """What a requeued (preempted) job on a scheduler needs: the same command continues the run."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_000000000064.pt").write_bytes(b"a checkpoint")
    (tmp_path / "summary.json").write_text(json.dumps({"finished": False}))
    assert prepare_run_dir(tmp_path, overwrite=False, resume_existing=True) == "resume"
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True}))
    assert prepare_run_dir(tmp_path, overwrite=False, resume_existing=True) == "finished"
    (tmp_path / "summary.json").unlink()
    (tmp_path / "checkpoints" / "step_000000000064.pt").unlink()
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"killed before its first checkpoint")
    assert prepare_run_dir(tmp_path, overwrite=False, resume_existing=True) == "fresh"
    assert not (tmp_path / "events.out.tfevents.1.host.1.0").exists()


def test_resume_refuses_settings_that_would_change_the_run(uninterrupted, tmp_path):
    result = lifelong("resume", str(uninterrupted), "agent.lr=1", cwd=tmp_path)
    assert result.returncode == 2 and "would change the run" in result.stderr
    result = lifelong("resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "no saved configuration" in result.stderr
