"""Atomic writes: a reader sees the old file or the new one; a failed write changes nothing."""
from __future__ import annotations

import pytest

from lifelong.fileio import atomic_write, atomic_write_text


def test_a_write_creates_the_folder_and_replaces_the_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "run" / "summary.json", "old")
    assert atomic_write(path, lambda f: f.write(b"new")) == path
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    path = atomic_write_text(tmp_path / "summary.json", "previous")

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "checkpoint.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_the_new_file_gets_the_permissions_open_would_give(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    path = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert path.stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
