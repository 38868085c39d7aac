"""What ``lifelong mqar`` does once Hydra has composed its config, and the same without Hydra.

:func:`run_in_dir` checks the config, refuses a directory that already holds results (unless
``overwrite=true``), trains and prints a one-line result; :func:`compose` builds a config from
``configs/mqar/config.yaml`` and a mixer name in-process (the grid benchmark uses it: no Hydra
start-up per run, the same settings and the same ``results.json``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from lifelong.config_files import config_dir
from lifelong.mqar.settings import MQARSettings, parse_settings
from lifelong.mqar.train import RESULTS, train_mqar

#: top-level keys of configs/mqar/config.yaml that are Hydra's, not the run's
_HYDRA_KEYS = ("defaults", "hydra")


class RunDirTaken(RuntimeError):
    """The run directory already holds results and ``overwrite`` is false."""


def default_config() -> dict[str, Any]:
    """``configs/mqar/config.yaml`` as plain data, without its Hydra keys and without ``memory``."""
    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / "mqar" / "config.yaml"), resolve=False)
    return {k: v for k, v in raw.items() if k not in _HYDRA_KEYS}


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def compose(memory: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A full ``lifelong mqar`` config as plain data: the defaults, ``memory`` from
    ``configs/memory/<memory>.yaml`` and ``overrides`` (dotted keys, e.g. ``{"task.num_pairs": 16,
    "memory.selection": "random"}``)."""
    from lifelong.memory_layers.registry import load_memory_config

    cfg = default_config()
    cfg["memory"] = OmegaConf.to_container(load_memory_config(memory), resolve=True)
    for key, value in (overrides or {}).items():
        _set_dotted(cfg, key, copy.deepcopy(value))
    return cfg


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if (run_dir / RESULTS).exists() and not overwrite:
        raise RunDirTaken(f"{run_dir} already holds {RESULTS}: choose another hydra.run.dir or set overwrite=true")


def run_in_dir(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Check ``cfg`` (:class:`~lifelong.config_checks.ConfigError`), check ``run_dir``
    (:class:`RunDirTaken`), train and write ``results.json``; returns the results."""
    settings: MQARSettings = parse_settings(cfg)
    run_dir = Path(run_dir)
    check_run_dir(run_dir, settings.overwrite)
    return train_mqar(settings, run_dir, config=cfg)
