"""Building mixers from their Hydra config (``configs/memory/<name>.yaml``; ``_target_`` is the registry)."""
from __future__ import annotations

from typing import Any, Mapping

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from lifelong.config_files import group_choices, group_dir
from lifelong.memory_layers.backbone import Backbone
from lifelong.memory_layers.protocol import MemoryMixer

#: keys of a memory config that belong to the agent, not to the mixer's constructor
NON_CONSTRUCTOR_KEYS = ("name", "reset_on")
RESET_CHOICES = ("never", "episode", "task")

def available_mixers() -> list[str]:
    """Names of every mixer config in ``configs/memory/``."""
    return group_choices("memory")


def load_memory_config(name: str) -> DictConfig:
    path = group_dir("memory") / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown mixer {name!r}: choose memory=<name> from {available_mixers()}")
    return OmegaConf.load(path)


def build_mixer(memory_cfg: Mapping[str, Any] | DictConfig, d_model: int) -> MemoryMixer:
    """Instantiate one mixer from its config with the model width ``d_model``."""
    cfg = OmegaConf.to_container(memory_cfg, resolve=True) if isinstance(memory_cfg, DictConfig) else dict(memory_cfg)
    for key in NON_CONSTRUCTOR_KEYS:
        cfg.pop(key, None)
    if "_target_" not in cfg:
        raise ValueError(f"memory config has no _target_: pick memory=<name> from {available_mixers()}")
    try:
        mixer = hydra.utils.instantiate(cfg, d_model=d_model, _convert_="all")
    except InstantiationException as error:  # surface the mixer's own message (e.g. heads vs width)
        if isinstance(error.__cause__, (ValueError, TypeError)):
            raise error.__cause__ from None
        raise
    if not isinstance(mixer, MemoryMixer):
        raise TypeError(f"{cfg['_target_']} is not a MemoryMixer")
    return mixer


def build_backbone(memory_cfg, d_model: int, num_layers: int, mlp_ratio: float) -> Backbone:
    """``num_layers`` memory blocks of the configured mixer."""
    return Backbone([build_mixer(memory_cfg, d_model) for _ in range(num_layers)], mlp_ratio)
