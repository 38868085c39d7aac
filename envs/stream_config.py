"""The stream config schema: ``configs/stream/<name>.yaml`` as frozen dataclasses holding every default.

A stream file::

    name: smoke
    description: DoorKey-5x5 ...   # one line, for listings
    unit: steps                    # what block durations count: steps | episodes
    steps_per_task: 200            # default block duration (episodes_per_task when unit: episodes)
    expose_task_id: false          # add the task id to the observation
    recall_vocab: null             # recall streams: {num_keys, num_values} shared by every task
    tasks: {<name>: <task>}        # see TaskSpec
    schedule: {type, order, cycles, durations, duration_range, seed}   # see ScheduleConfig, envs.schedules

A task is either a registered Gymnasium env, or an associative-recall task (``envs.recall``) whose
vocabulary is set once per stream so every task shares one observation and action space::

    door-perm1: {env_id: MiniGrid-DoorKey-5x5-v0, shifts: [{type: action_permutation, seed: 1}]}
    p4-g8: {recall: {num_pairs: 4, gap: 8}}

A key left out, or null, takes its field's default below; an unknown key raises ``ValueError``
(one line) naming the valid ones. Nothing here builds an env.
"""
from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)
from omegaconf import DictConfig, ListConfig, OmegaConf

from lifelong.envs.wrappers import check_shift_spec

UNITS = ("steps", "episodes")


def to_plain(value: Any) -> Any:
    """A DictConfig / ListConfig as plain python containers (anything else passes through)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def given_keys(schema: type, raw: Any, where: str) -> dict[str, Any]:
    """The non-null entries of the mapping ``raw``: every key a field of the dataclass ``schema``,
    every field without a default present."""
    raw = to_plain(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {raw!r}")
    allowed = sorted(f.name for f in fields(schema))
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}: allowed are {allowed}")
    given = {key: value for key, value in raw.items() if value is not None}
    required = [f.name for f in fields(schema) if f.default is MISSING and f.default_factory is MISSING]
    missing = [key for key in required if key not in given]
    if missing:
        raise ValueError(f"{where} needs the key(s) {missing}")
    return given


def check_env_id(env_id: str, where: str) -> None:
    """Raise ``ValueError`` naming close registered ids if ``env_id`` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.registry for the registered ids"
    raise ValueError(f"{where}: unknown env id {env_id!r}: {hint}")


@dataclass(frozen=True)
class RecallTask:
    """``recall:`` of a task: ``num_pairs`` key/value pairs, ``gap`` fillers, then the queries."""

    num_pairs: int
    gap: int = 0
    num_queries: int | None = None  # None: every stored key is queried

    @classmethod
    def parse(cls, raw: Any, where: str) -> RecallTask:
        return cls(**{key: int(value) for key, value in given_keys(cls, raw, f"{where} recall").items()})


@dataclass(frozen=True)
class TaskSpec:
    """``tasks.<name>``: a base env (``env_id`` or ``recall``) and its shifts, applied in order."""

    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    recall: RecallTask | None = None
    shifts: tuple[dict[str, Any], ...] = ()

    @classmethod
    def parse(cls, name: str, raw: Any) -> TaskSpec:
        where = f"task {name!r}"
        values = given_keys(cls, raw, where)
        if ("env_id" in values) == ("recall" in values):
            raise ValueError(f"{where}: give exactly one of `env_id` (a Gymnasium id) or `recall` ({{num_pairs, gap}})")
        if "env_id" in values:
            values["env_id"] = str(values["env_id"])
            check_env_id(values["env_id"], where)
        if "recall" in values:
            values["recall"] = RecallTask.parse(values["recall"], where)
        if "env_kwargs" in values:
            values["env_kwargs"] = dict(values["env_kwargs"])
        if "shifts" in values:
            shifts = values["shifts"]
            if not isinstance(shifts, list):
                raise ValueError(f"{where}: `shifts` must be a list of {{type: ..., <params>}}, got {shifts!r}")
            for i, shift in enumerate(shifts):
                if not isinstance(shift, dict):
                    raise ValueError(f"{where}: shift {i} must be a mapping {{type: ..., <params>}}, got {shift!r}")
                check_shift_spec(shift, f"{where} shift {i}")
            values["shifts"] = tuple(dict(s) for s in shifts)
        return cls(**values)


def parse_tasks(raw_tasks: Any) -> dict[str, TaskSpec]:
    """Validate the ``tasks`` mapping of a stream config."""
    raw_tasks = to_plain(raw_tasks)
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise ValueError("stream config needs a non-empty `tasks` mapping: tasks: {<name>: {env_id: ...}}")
    return {str(name): TaskSpec.parse(str(name), spec) for name, spec in raw_tasks.items()}


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule:``: the order of the blocks and their durations (semantics in ``envs.schedules``)."""

    type: str = "cyclic"                           # blocked | cyclic | random
    order: tuple[str, ...] = ()                    # task names; a name may recur (a revisit)
    cycles: int = 1                                # passes over `order`
    durations: tuple[int, ...] | None = None       # one per entry of `order`; None: the stream's default
    duration_range: tuple[int, int] | None = None  # [lo, hi]: durations drawn uniformly, seeded
    seed: int = 0                                  # the schedule's own seed, shared by every lifetime

    @classmethod
    def parse(cls, raw: Any) -> ScheduleConfig:
        values = given_keys(cls, raw, "schedule")
        for key in ("cycles", "seed"):
            if key in values:
                values[key] = int(values[key])
        for key in ("durations", "duration_range"):
            if key in values:
                values[key] = tuple(int(d) for d in values[key])
        if "order" in values:
            values["order"] = tuple(values["order"])
        return cls(**values)


@dataclass(frozen=True)
class RecallVocab:
    """``recall_vocab:``: the token vocabulary every recall task of a stream shares (one space for all)."""

    num_keys: int | None = None  # None: the largest num_pairs among the stream's recall tasks
    num_values: int = 8

    @classmethod
    def parse(cls, raw: Any) -> RecallVocab:
        return cls(**{key: int(value) for key, value in given_keys(cls, raw, "recall_vocab").items()})


@dataclass(frozen=True)
class StreamConfig:
    """One stream file, validated key by key (the tasks parsed, the schedule not yet expanded)."""

    tasks: dict[str, TaskSpec]
    name: str = "stream"
    description: str = ""
    unit: str = "steps"
    steps_per_task: int | None = None
    episodes_per_task: int | None = None
    expose_task_id: bool = False
    recall_vocab: RecallVocab | None = None
    schedule: ScheduleConfig = ScheduleConfig()

    @property
    def block_duration(self) -> int | None:
        """The default block duration, counted in ``unit``."""
        return self.steps_per_task if self.unit == "steps" else self.episodes_per_task

    @classmethod
    def parse(cls, raw: Any) -> StreamConfig:
        """Validate a stream config (a DictConfig or a dict); errors are one line naming the stream."""
        raw = to_plain(raw)
        if not isinstance(raw, dict):
            raise ValueError(f"a stream config must be a mapping (configs/stream/<name>.yaml), got {raw!r}")
        name = str(raw.get("name") or cls.name)
        try:
            values = given_keys(cls, raw, "the stream config")
            values["tasks"] = parse_tasks(values["tasks"])
            if "schedule" in values:
                values["schedule"] = ScheduleConfig.parse(values["schedule"])
            if "recall_vocab" in values:
                values["recall_vocab"] = RecallVocab.parse(values["recall_vocab"])
            for key in ("steps_per_task", "episodes_per_task"):
                if key in values:
                    values[key] = int(values[key])
            config = cls(**{**values, "name": name})
            if config.unit not in UNITS:
                raise ValueError(f"unit {config.unit!r} is unknown: choose unit from {', '.join(UNITS)}")
        except ValueError as error:
            raise ValueError(f"stream {name!r}: {error}") from None
        return config
