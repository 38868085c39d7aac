"""Checkpoints are written atomically: a failed write leaves the previous checkpoint intact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lifelong.agents.checkpoint as ckpt


def test_a_checkpoint_round_trips_tensors_rng_states_and_nested_dicts(tmp_path):
    state = {"w": torch.randn(3, 2), "rng": ckpt.rng_state_dict(), "envs": [{"pos": 3, "rng": {"s": [1, 2]}}]}
    path = ckpt.save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["envs"] == state["envs"]
    assert isinstance(loaded["rng"]["numpy"], tuple)


def test_restoring_the_rng_states_repeats_the_draws():
    np.random.seed(0)
    saved = ckpt.rng_state_dict()
    a = (torch.rand(2), np.random.rand(2))
    ckpt.load_rng_state_dict(saved)
    b = (torch.rand(2), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


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
