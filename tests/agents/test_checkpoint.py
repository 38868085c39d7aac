"""Checkpoints: written atomically, tensors and plain data only (weights_only loading), a header whose
format and config must match, one-line errors for damaged or foreign files; a real lifetime resumed
from one continues exactly as the uninterrupted lifetime."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from agent_fakes import compose_config

import lifelong.agents.checkpoint as ckpt
from lifelong.agents.build import build_lifetime
from lifelong.agents.ppo import OverlappedLearner
from lifelong.agents.process_learner import ProcessLearner


def test_a_checkpoint_round_trips_tensors_rng_states_and_nested_dicts(tmp_path):
    state = {"w": torch.randn(3, 2), "rng": ckpt.rng_state_dict(), "envs": [{"pos": 3, "rng": {"s": [1, 2]}}]}
    path = ckpt.save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["envs"] == state["envs"]
    raw = torch.load(path, weights_only=True)
    assert raw["header"]["format"] == ckpt.FORMAT and "lifelong_version" in raw["header"]


def test_restoring_the_rng_states_repeats_the_draws(tmp_path):
    np.random.seed(0)
    path = ckpt.save_checkpoint(tmp_path / "rng.pt", ckpt.rng_state_dict())
    a = (torch.rand(2), np.random.rand(2), np.random.randn(3), random.random())
    ckpt.load_rng_state_dict(ckpt.load_checkpoint(path))
    b = (torch.rand(2), np.random.rand(2), np.random.randn(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_a_value_that_is_not_plain_data_is_refused_on_save_naming_where_it_is(tmp_path):
    with pytest.raises(TypeError, match=r"\['state'\]\['envs'\]\[0\]\['pos'\] is a numpy.ndarray"):
        ckpt.save_checkpoint(tmp_path / "c.pt", {"envs": [{"pos": np.zeros(2)}]})
    with pytest.raises(ValueError, match="format"):
        ckpt.save_checkpoint(tmp_path / "c.pt", {}, meta={"format": 7})
    assert not (tmp_path / "c.pt").exists()


def one_line_error(excinfo) -> str:
    """The error's message, checked to be one line with no chained traceback."""
    error = excinfo.value
    assert "\n" not in str(error) and (error.__context__ is None or error.__suppress_context__)
    return str(error)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, damage):
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"w": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage])
    with pytest.raises(ckpt.CheckpointError) as excinfo:
        ckpt.load_checkpoint(path)
    assert str(path) in one_line_error(excinfo) and "truncated or corrupt" in str(excinfo.value)


def test_a_checkpoint_holding_pickled_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"rng": np.random.get_state()}, path)  # format 1: numpy objects, weights_only=False
    with pytest.raises(ckpt.CheckpointMismatch) as excinfo:
        ckpt.load_checkpoint(path)
    assert str(path) in one_line_error(excinfo) and "older lifelong" in str(excinfo.value)


def test_a_checkpoint_of_another_format_is_a_one_line_error_naming_the_formats(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"header": {"format": ckpt.FORMAT + 1, "lifelong_version": "9.9"}, "state": {}}, path)
    with pytest.raises(ckpt.CheckpointMismatch) as excinfo:
        ckpt.load_checkpoint(path)
    message = one_line_error(excinfo)
    assert str(path) in message and f"format {ckpt.FORMAT + 1} (lifelong 9.9)" in message
    assert f"reads format {ckpt.FORMAT}" in message
    torch.save({"w": torch.zeros(1)}, path)  # tensors, but no header
    with pytest.raises(ckpt.CheckpointMismatch, match="no checkpoint header"):
        ckpt.load_checkpoint(path)


def test_a_checkpoint_written_for_another_config_is_a_one_line_error_naming_both(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1}, meta={"config": "abc123"})
    assert ckpt.load_checkpoint(path, expect={"config": "abc123"}) == {"step": 1}
    with pytest.raises(ckpt.CheckpointMismatch) as excinfo:
        ckpt.load_checkpoint(path, expect={"config": "def456"})
    message = one_line_error(excinfo)
    assert str(path) in message and "config 'abc123'" in message and "config 'def456'" in message
    with pytest.raises(ckpt.CheckpointMismatch, match="written with seed 'nothing'"):
        ckpt.load_checkpoint(path, expect={"seed": 3})


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_loading_a_missing_checkpoint_names_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")


# ---- a real lifetime ---------------------------------------------------------------------------
def real_config_overrides() -> tuple[str, ...]:
    """The overrides of :func:`real_config`."""
    short = [f"+stream.tasks.{task}.env_kwargs={{max_steps:20}}" for task in ("doorkey", "doorkey-permuted")]
    return ("memory=gated_deltanet", "stream=smoke", "stream.steps_per_task=40", "device=cpu",
            "num_envs=2", "total_steps=240", "agent.d_model=16", "agent.num_layers=1",
            "agent.segment_length=16", "agent.update_epochs=2", "tracker.probe_every=64",
            "tracker.probe_episodes=2", "tracker.curve_probe_episodes=2", "tracker.bootstrap_samples=200",
            "tracker.replay_episodes=null", "tracker.log_every=32", "checkpoint_every=64",
            "checkpoint_minutes=0", "checkpoint_keep=100", *short)


def real_config():
    """The smoke stream (real MiniGrid envs, episodes of at most 20 steps) for a tiny agent, probed
    every 64 steps besides the block ends, with a checkpoint every 2 segments."""
    return compose_config(*real_config_overrides())


def without_timing(value):
    """A summary without its wall-clock figures (``charts/sps``, ``charts/probe_share`` and the like)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items()
                if not any(t in str(k) for t in ("sps", "second", "probe_share"))}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def comparable(summary) -> str:
    """The summary minus timing, as JSON (NaN equals NaN there)."""
    return json.dumps(without_timing(summary), sort_keys=True, default=str)


@pytest.fixture(scope="module")
def full_lifetime(tmp_path_factory):
    """An uninterrupted real lifetime: (its summary, its checkpoints oldest first)."""
    life = build_lifetime(real_config(), tmp_path_factory.mktemp("full"))
    summary = life.run(progress=False)
    return summary, life.checkpoints.paths()


def test_every_checkpoint_of_a_real_lifetime_loads_with_weights_only(full_lifetime):
    _, paths = full_lifetime
    assert len(paths) >= 3
    for path in paths:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["header"]["format"] == ckpt.FORMAT
        envs = checkpoint["state"]["collector"]["rollout"]["envs"]
        assert len(envs) == 2 and all(task is not None for task in envs[0]["envs"])


def test_a_real_lifetime_resumed_from_a_mid_way_checkpoint_ends_with_the_same_summary(full_lifetime, tmp_path):
    summary, paths = full_lifetime
    middle = paths[len(paths) // 2 - 1]  # mid-block, mid-episode: the stream's and the memory's state matter
    resumed = build_lifetime(real_config(), tmp_path / "resumed")
    resumed.load(middle)
    assert 0 < resumed.global_step < summary["env_steps"]
    assert comparable(resumed.run(progress=False)) == comparable(summary)
    # every probe's per-episode results too (probes.json)
    full_probes = json.loads((paths[0].parent.parent / "probes.json").read_text())
    assert json.loads((tmp_path / "resumed" / "probes.json").read_text()) == full_probes


@pytest.mark.parametrize("overlap, learner", [("true", OverlappedLearner), ("process", ProcessLearner)])
def test_an_overlapped_lifetime_is_reproducible_and_resumes_from_a_checkpoint_identically(tmp_path, overlap, learner):
    """``agent.overlap=true`` (a second thread) or ``process``: the learner trains one segment behind;
    the run still gives one lifetime per seed, and a resumed one ends where the uninterrupted one does."""
    config = lambda: compose_config(*real_config_overrides(), f"agent.overlap={overlap}")  # noqa: E731
    first = build_lifetime(config(), tmp_path / "first")
    summary = first.run(progress=False)
    assert isinstance(first.learner, learner)
    again = build_lifetime(config(), tmp_path / "again").run(progress=False)
    assert comparable(again) == comparable(summary)
    paths = first.checkpoints.paths()
    resumed = build_lifetime(config(), tmp_path / "resumed")
    resumed.load(paths[len(paths) // 2 - 1])
    assert 0 < resumed.global_step < summary["env_steps"]
    assert comparable(resumed.run(progress=False)) == comparable(summary)
