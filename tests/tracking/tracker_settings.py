"""The tracker settings the tests start from: the shipped ``tracker:`` section of configs/config.yaml."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lifelong.config_files import config_dir
from lifelong.tracking.blocks import BlockLedger
from lifelong.tracking.tracker import Tracker

#: bootstrap resamples in the tests (the config's 1000 only costs time here)
TEST_BOOTSTRAP = 200


def tracker_config(**overrides: Any) -> DictConfig:
    """``configs/config.yaml``'s ``tracker:`` section with ``overrides`` (e.g. ``probe_every=0``)."""
    return OmegaConf.merge(OmegaConf.load(config_dir() / "config.yaml").tracker, overrides)


def make_tracker(run_dir: str | Path, task_names: Sequence[str], schedule: Sequence[tuple[str, int]],
                 lifetimes: int = 1, hparams: Mapping[str, Any] | None = None,
                 run_info: Mapping[str, Any] | None = None, **overrides: Any) -> Tracker:
    """A tracker of ``schedule`` = ``[(task, tokens per lifetime), ...]`` lived by ``lifetimes`` in
    parallel, with the shipped settings and ``overrides`` (``bootstrap_samples`` defaults to
    :data:`TEST_BOOTSTRAP`)."""
    settings = tracker_config(**{"bootstrap_samples": TEST_BOOTSTRAP, **overrides})
    return Tracker.from_config(run_dir, list(task_names), dict(hparams or {"mixer": "x"}), settings,
                               BlockLedger.of(schedule, lifetimes), run_info)
