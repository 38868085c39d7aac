"""Where the shipped Hydra configs live: one lookup for the CLI, the mixer registry and the streams.

The configs are package data of ``lifelong.configs`` (the top-level ``configs/`` folder in a
checkout), so an editable install and a wheel install find them the same way.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

CONFIG_PACKAGE = "lifelong.configs"
#: what Hydra's ``config_path`` takes to read the configs through the package
HYDRA_CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"
GROUPS = ("memory", "stream", "agent", "experiment")


class ConfigFilesMissing(RuntimeError):
    """The installed package has no configs: a broken install, never an empty list."""


@lru_cache(maxsize=1)
def config_dir() -> Path:
    """The folder that holds ``config.yaml`` and the groups; raises :class:`ConfigFilesMissing`
    (naming the fix) if it is absent or holds no config."""
    fix = "reinstall the package (pip install lifelong, or pip install -e . in a checkout)"
    try:
        root = Path(str(resources.files(CONFIG_PACKAGE)))
    except ModuleNotFoundError:
        raise ConfigFilesMissing(f"the package {CONFIG_PACKAGE} is not installed: {fix}") from None
    if not (root / "config.yaml").is_file():
        raise ConfigFilesMissing(f"no config.yaml in {root}: the configs did not ship with this install; {fix}")
    return root


def group_dir(group: str) -> Path:
    """``configs/<group>/``; raises :class:`ConfigFilesMissing` if it holds no ``.yaml``."""
    path = config_dir() / group
    if not any(path.glob("*.yaml")):
        raise ConfigFilesMissing(f"no {group} configs in {path}: the configs did not ship with this install; "
                                 "reinstall the package (pip install -e . in a checkout)")
    return path


def group_choices(group: str) -> list[str]:
    """Sorted names of the configs in ``configs/<group>/`` (never empty: see :func:`group_dir`)."""
    return sorted(p.stem for p in group_dir(group).glob("*.yaml"))
