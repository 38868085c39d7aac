"""Checking one section of a config against a dataclass: its keys, the types and the allowed ranges.

A schema is a dataclass whose fields are the section's keys: the field's type is the allowed type and
``allowed(...)`` in its metadata the allowed range or choices. :func:`parse_section` turns a plain
mapping into an instance of the schema or raises :class:`ConfigError` with one line naming the key,
the value and what is allowed. A field of a dataclass type is a nested section; a field made with
``field(metadata={"parse": fn})`` is handed to ``fn(value, key)`` (a group with its own schema).
"""
from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value that is refused before any work starts; the message is one line."""


@dataclass(frozen=True)
class Allowed:
    """The values a number may take (an interval, either end open or absent) or a string's choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()  # strings, or a bool among them (agent.overlap: false, true, thread, process)

    def admits(self, value: Any) -> bool:
        if self.choices:
            return any(type(value) is type(c) and value == c for c in self.choices)  # true is not 1
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(show_choice, self.choices))}"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {show(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {show(self.high)}"
        return f"in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


def at_least(low: float) -> Allowed:
    return Allowed(low=low)


def above(low: float) -> Allowed:
    return Allowed(low=low, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Allowed:
    return Allowed(low=low, high=high, high_open=high_open)


def one_of(*choices: Any) -> Allowed:
    return Allowed(choices=tuple(choices))


def allowed(rule: Allowed | None = None) -> Any:
    """A schema field (a required key) whose value must satisfy ``rule`` (None: its type only)."""
    return field(metadata={"allowed": rule})


def show(value: Any) -> str:
    """A value as a user writes it on the command line (null, true / false, numbers, strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, (int, float)) else repr(value)


def show_choice(value: Any) -> str:
    """A choice in a list of choices: a string bare, anything else as :func:`show` writes it."""
    return value if isinstance(value, str) else show(value)


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (plain YAML data) has the type ``annotation``; an int is a float, a bool is
    not a number, and a type this check does not model (a class of its own) always conforms."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in get_args(annotation))
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple) or origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if annotation is dict or origin in (dict, Mapping):
        return isinstance(value, dict)
    return True


def describe(annotation: Any) -> str:
    """``annotation`` in words, for an error message."""
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in get_args(annotation))
    if is_dataclass(annotation):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", tuple: "a list", dict: "a mapping"}
    return names.get(annotation, names.get(get_origin(annotation), getattr(annotation, "__name__", str(annotation))))


def check_value(key: str, value: Any, annotation: Any, rule: Allowed | None) -> None:
    """Raise :class:`ConfigError` unless ``value`` has the type ``annotation`` and (when not null) satisfies ``rule``."""
    if not conforms(value, annotation):
        raise ConfigError(f"{key}={show(value)} must be {describe(annotation)}")
    if value is None or rule is None or rule.admits(value):
        return
    if rule.choices:
        raise ConfigError(f"{key}={show(value)} is unknown: choose {key} from {', '.join(map(show_choice, rule.choices))}")
    raise ConfigError(f"{key}={show(value)} is out of range: {key} must be {rule}")


def check_keys(raw: Any, known: Sequence[str], where: str) -> dict[str, Any]:
    """``raw`` as a dict whose keys are all in ``known`` (else :class:`ConfigError` naming them)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}={show(raw)} must be a mapping of {', '.join(known)}")
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {prefix}{key}={show(raw[key])}: {where or 'the config'} takes "
                              f"{', '.join(sorted(known))}")
    return raw


def parse_section(schema: type, raw: Any, where: str = "") -> Any:
    """An instance of the dataclass ``schema`` from the mapping ``raw`` (every field a required key)."""
    check_keys(raw, [f.name for f in fields(schema)], where)
    hints = get_type_hints(schema)
    values = {}
    for f in fields(schema):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            wanted = f"<name> from configs/{f.name}/" if "parse" in f.metadata else f"<{describe(hints[f.name])}>"
            raise ConfigError(f"{key} is missing: set {key}={wanted}")
        value = raw[f.name]
        if "parse" in f.metadata:
            values[f.name] = f.metadata["parse"](value, key)
        elif is_dataclass(hints[f.name]):
            values[f.name] = parse_section(hints[f.name], value, key)
        else:
            check_value(key, value, hints[f.name], f.metadata.get("allowed"))
            values[f.name] = value
    return schema(**values)
