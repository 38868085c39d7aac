"""The names a ``lifelong run`` command line picks for the config groups, checked before Hydra starts.

``memory=foo`` (or a sweep ``memory=a,b``) naming no config is refused in one line listing the
choices: those shipped in ``configs/<group>/`` and those in a ``--config-dir DIR`` (``-cd DIR``,
``--config-dir=DIR``) given on the command line. Sweep functions (``glob(*)``, ``choice(...)``,
``range(...)``), interpolations and anything Hydra's override grammar does not parse go to Hydra
unchecked: Hydra expands and reports those itself.
"""
from __future__ import annotations

from pathlib import Path

from lifelong.config_checks import ConfigError
from lifelong.config_files import GROUPS, config_dir

#: Hydra's command-line flags that take a value (the next argument, or ``--flag=value``)
VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
               "--cfg", "-c", "--experimental-rerun")
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def split_command_line(argv: list[str]) -> tuple[list[str], list[Path]]:
    """The overrides of a ``lifelong run`` command line and the ``--config-dir`` folders it names."""
    overrides: list[str] = []
    config_dirs: list[Path] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, equals, inline = arg.partition("=")
        if flag in VALUE_FLAGS:
            value = inline if equals else next(args, "")
            if flag in CONFIG_DIR_FLAGS and value:
                config_dirs.append(Path(value.removeprefix("file://")).expanduser())
    return overrides, config_dirs


def group_names(group: str, config_dirs: list[Path]) -> list[str]:
    """The config names of ``group``: the shipped ones and those under each of ``config_dirs``."""
    names = {p.stem for root in [config_dir(), *config_dirs] for p in (root / group).glob("*.yaml")}
    return sorted(names)


def exists(group: str, name: str, config_dirs: list[Path]) -> bool:
    """Whether ``<root>/<group>/<name>.yaml`` is a file in a search folder (``name`` may hold a ``/``)."""
    return any((root / group / f"{name}.yaml").is_file() for root in [config_dir(), *config_dirs])


def chosen_names(override: str) -> list[str]:
    """The group option names a plain ``group=name`` or ``group=a,b`` override picks (none for anything else)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, ValueType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException:  # not an override Hydra parses: Hydra says so itself
        return []
    if parsed.is_delete() or parsed.value_type not in (ValueType.ELEMENT, ValueType.SIMPLE_CHOICE_SWEEP):
        return []
    value = parsed.value()
    values = value.list if isinstance(value, ChoiceSweep) else [value]
    return [v for v in values if isinstance(v, str) and v and "${" not in v]


def check_group_choices(argv: list[str]) -> None:
    """Raise :class:`ConfigError` (one line naming the choices) if an override picks a group config
    that exists neither in ``configs/`` nor in a ``--config-dir`` of ``argv``."""
    overrides, config_dirs = split_command_line(argv)
    for override in overrides:
        group = override.partition("=")[0].lstrip("+~").partition("@")[0]
        if group not in GROUPS:
            continue
        for name in chosen_names(override):
            if not exists(group, name, config_dirs):
                raise ConfigError(f"unknown {group} {name!r}: choose {group}=<name> from "
                                  f"{', '.join(group_names(group, config_dirs))}")
