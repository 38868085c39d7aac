"""The tracker settings the tests start from: the shipped ``tracker:`` section of configs/config.yaml."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lifelong.config_files import config_dir


def tracker_config(**overrides: Any) -> DictConfig:
    """``configs/config.yaml``'s ``tracker:`` section with ``overrides`` (e.g. ``probe_every=0``)."""
    return OmegaConf.merge(OmegaConf.load(config_dir() / "config.yaml").tracker, overrides)
