"""The ``memory:`` group checked against its mixer: the schema is the constructor of ``_target_``.

A memory config (``configs/memory/<name>.yaml``) holds ``name``, ``_target_`` (a
:class:`~lifelong.memory_layers.protocol.MemoryMixer` class), ``reset_on`` and the arguments of that
class's ``__init__`` except ``d_model`` (``agent.d_model`` gives the width). A key the constructor
does not take, an argument without a default left out, or a value of the wrong type (the annotation
of the parameter) is refused in one line; the mixer's own checks run by building one layer.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, get_type_hints

from lifelong.config_checks import (
    Allowed,
    ConfigError,
    at_least,
    check_value,
    one_of,
    show,
)
from lifelong.kernels.utils.backend import BACKENDS
from lifelong.memory_layers.registry import NON_CONSTRUCTOR_KEYS, RESET_CHOICES

#: the keys of a memory config that are not arguments of the mixer's constructor
OWN_KEYS = ("_target_", *NON_CONSTRUCTOR_KEYS)
#: ranges of the arguments every mixer of the package names alike (the constructor checks the others)
SHARED_RANGES: dict[str, Allowed] = {"num_heads": at_least(1), "chunk_size": at_least(1), "backend": one_of(*BACKENDS)}


@dataclass(frozen=True)
class MemoryConfig:
    """A checked memory config: the mixer class and the constructor arguments it is given."""

    name: str
    reset_on: str
    target: str
    mixer: type
    kwargs: dict[str, Any]

    @property
    def constructor_config(self) -> dict[str, Any]:
        """``{_target_, **kwargs}``: what ``build_mixer`` instantiates."""
        return {"_target_": self.target, **self.kwargs}

    @property
    def num_heads(self) -> int | None:
        """The mixer's head count (None for a mixer without heads)."""
        return self.kwargs.get("num_heads")


def mixer_class(target: Any, key: str) -> type:
    """The MemoryMixer class that ``_target_`` names (:class:`ConfigError` if it is none)."""
    from lifelong.memory_layers.protocol import MemoryMixer

    module_name, _, attribute = target.rpartition(".") if isinstance(target, str) else ("", "", "")
    if not module_name or not attribute:
        raise ConfigError(f"{key}={show(target)} must be the dotted path of a MemoryMixer class (module.Class)")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # noqa: BLE001  (ImportError, AttributeError, the module's own: one line)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{key}={show(target)} cannot be imported ({reason})") from None
    if not (isinstance(cls, type) and issubclass(cls, MemoryMixer)):
        raise ConfigError(f"{key}={show(target)} is not a MemoryMixer class")
    return cls


def constructor_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The parameters of ``cls.__init__`` a config may give (not ``self`` / ``d_model``) and whether it
    takes ``**kwargs`` (then any key passes here and the constructor judges)."""
    params = dict(inspect.signature(cls).parameters)
    params.pop("d_model", None)
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named, var_keyword


def parse_memory(raw: Any, where: str = "memory") -> MemoryConfig:
    """Check a memory config (a plain mapping) against its mixer's constructor signature."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}={show(raw)} must be a mapping: choose memory=<name> from configs/memory/")
    for key in OWN_KEYS:
        if key not in raw:
            raise ConfigError(f"{where}.{key} is missing: a memory config needs {', '.join(OWN_KEYS)}")
    cls = mixer_class(raw["_target_"], f"{where}._target_")
    check_value(f"{where}.name", raw["name"], str, None)
    check_value(f"{where}.reset_on", raw["reset_on"], str, one_of(*RESET_CHOICES))
    params, var_keyword = constructor_parameters(cls)
    kwargs = {key: value for key, value in raw.items() if key not in OWN_KEYS}
    for key, value in kwargs.items():
        if key not in params and not var_keyword:
            width = " (the width is agent.d_model)" if key == "d_model" else ""
            raise ConfigError(f"unknown key {where}.{key}={show(value)}: {cls.__name__} takes "
                              f"{', '.join(sorted([*params, *OWN_KEYS]))}{width}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}.{missing[0]} is missing: {cls.__name__} needs it (memory={raw['name']})")
    hints = parameter_types(cls)
    for key, value in kwargs.items():
        check_value(f"{where}.{key}", value, hints.get(key, Any), SHARED_RANGES.get(key))
    return MemoryConfig(name=raw["name"], reset_on=raw["reset_on"], target=raw["_target_"], mixer=cls, kwargs=kwargs)


def parameter_types(cls: type) -> dict[str, Any]:
    """The annotations of ``cls.__init__`` (empty if they cannot be resolved: then types pass here)."""
    try:
        return get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001  (an annotation naming a type the module imports only for typing)
        return {}


def check_mixer_builds(memory: MemoryConfig, d_model: int, width_key: str = "agent.d_model") -> None:
    """Build one layer of the mixer at width ``d_model`` (the config key ``width_key``) so its own
    checks run now (global RNGs untouched)."""
    import torch
    from hydra.errors import InstantiationException

    from lifelong.memory_layers.registry import build_mixer

    heads = memory.num_heads
    if isinstance(heads, int) and heads >= 1 and d_model % heads:
        below, above = heads * (d_model // heads), heads * (d_model // heads + 1)
        multiples = f"{below} or {above}" if below else str(above)
        raise ConfigError(f"{width_key}={d_model} is not divisible by num_heads={heads} (memory={memory.name}): "
                          f"set {width_key} to a multiple of {heads} (e.g. {multiples}) or change memory.num_heads")
    with torch.random.fork_rng(devices=[]):
        try:
            build_mixer(memory.constructor_config, d_model)
        except (ValueError, TypeError, InstantiationException) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"memory={memory.name}: {reason}") from None
