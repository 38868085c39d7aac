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

A task is a registered Gymnasium env, an associative-recall task (``envs.recall``) whose
vocabulary is set once per stream so every task shares one observation and action space, or one of
the hidden-task kinds, whose task variable is fixed by the config and absent from the observation
(``envs.darkroom``, ``envs.bandit``, ``envs.hidden_door``)::

    door-perm1: {env_id: MiniGrid-DoorKey-5x5-v0, shifts: [{type: action_permutation, seed: 1}]}
    p4-g8: {recall: {num_pairs: 4, gap: 8}}
    goal-ne: {darkroom: {goal: [7, 1]}}            # see DarkRoomTask
    best2: {bandit: {best_arm: 2}}                 # see BanditTask
    west: {hidden_door: {correct: west}}           # see HiddenDoorTask

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

from lifelong.envs import bandit, darkroom, hidden_door
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


def as_int(value: Any, what: str) -> int:
    """``value`` as an int (a bool, a fraction or text is refused in one line naming ``what``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def as_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def as_cell(value: Any, what: str) -> tuple[int, int]:
    """``[x, y]`` as a tuple of two ints."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{what} must be a cell [x, y], got {value!r}")
    return (as_int(value[0], what), as_int(value[1], what))


def checked(check: Any, where: str) -> Any:
    """Run ``check()`` and prefix its one-line ``ValueError`` with ``where``."""
    try:
        return check()
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True)
class DarkRoomTask:
    """``darkroom:`` of a task (``envs.darkroom``): an empty room whose goal cell is invisible.

    Exactly one of ``goal`` (an interior cell ``[x, y]``) or ``goal_seed`` (draws one, the start
    excluded). The agent starts at ``agent_start`` (null: the centre) facing ``agent_dir``
    (0 east, 1 south, 2 west, 3 north), or anywhere facing anywhere with ``random_start: true``.
    """

    goal: tuple[int, int] | None = None
    goal_seed: int | None = None
    size: int = 9                          # with the walls: interior cells 1 .. size - 2
    agent_start: tuple[int, int] | None = None
    agent_dir: int = 0
    random_start: bool = False
    max_steps: int | None = None           # None: size + 3
    actions: int = 7                       # 3: MiniGrid's navigation actions only (left, right, forward)

    @classmethod
    def parse(cls, raw: Any, where: str) -> DarkRoomTask:
        where = f"{where} darkroom"
        values = given_keys(cls, raw, where)
        for key in ("goal", "agent_start"):
            if key in values:
                values[key] = as_cell(values[key], f"{where} {key}")
        for key in ("goal_seed", "size", "agent_dir", "max_steps", "actions"):
            if key in values:
                values[key] = as_int(values[key], f"{where} {key}")
        if "random_start" in values:
            values["random_start"] = as_bool(values["random_start"], f"{where} random_start")
        task = cls(**values)
        checked(task.resolved_goal, where)
        return task

    def resolved_goal(self) -> tuple[int, int]:
        """The goal cell (drawn from ``goal_seed`` if not named); ``ValueError`` on bad values."""
        return darkroom.check_room(**self.env_kwargs())[1]

    def env_kwargs(self) -> dict[str, Any]:
        return {"size": self.size, "goal": self.goal, "goal_seed": self.goal_seed, "agent_start": self.agent_start,
                "agent_dir": self.agent_dir, "random_start": self.random_start, "max_steps": self.max_steps,
                "actions": self.actions}


@dataclass(frozen=True)
class BanditTask:
    """``bandit:`` of a task (``envs.bandit``): Bernoulli arms whose best arm is the task.

    Either ``best_arm`` (it pays with ``p_best``, the other ``arms - 1`` with ``p_other``) or the
    explicit ``probs`` of every arm (one largest). ``pulls``: pulls per episode. Every task of a
    stream needs the same number of arms and pulls (one action and observation space).
    """

    best_arm: int | None = None
    arms: int = 5
    p_best: float = 0.8
    p_other: float = 0.2
    probs: tuple[float, ...] | None = None
    pulls: int = 1

    @classmethod
    def parse(cls, raw: Any, where: str) -> BanditTask:
        where = f"{where} bandit"
        values = given_keys(cls, raw, where)
        for key in ("best_arm", "arms", "pulls"):
            if key in values:
                values[key] = as_int(values[key], f"{where} {key}")
        for key in ("p_best", "p_other"):
            if key in values:
                values[key] = as_float(values[key], f"{where} {key}")
        if "probs" in values:
            if not isinstance(values["probs"], list):
                raise ValueError(f"{where} probs must be a list of arm probabilities, got {values['probs']!r}")
            values["probs"] = tuple(as_float(p, f"{where} probs") for p in values["probs"])
            if set(values) & {"best_arm", "arms", "p_best", "p_other"}:
                raise ValueError(f"{where}: give either `probs` or `best_arm` (with arms, p_best, p_other), not both")
        elif "best_arm" not in values:
            raise ValueError(f"{where}: give `best_arm` (with arms, p_best, p_other) or the arms' `probs`")
        task = cls(**values)
        checked(task.arm_probs, where)
        if task.pulls < 1:
            raise ValueError(f"{where} pulls must be >= 1, got {task.pulls}")
        return task

    def arm_probs(self) -> tuple[float, ...]:
        """Every arm's probability of paying 1; ``ValueError`` on bad values."""
        if self.probs is not None:
            bandit.check_probs(self.probs)
            return self.probs
        return bandit.arm_probs(self.arms, int(self.best_arm), self.p_best, self.p_other)


@dataclass(frozen=True)
class HiddenDoorTask:
    """``hidden_door:`` of a task (``envs.hidden_door``): identical doors, ``correct`` the right one.

    ``doors``: 2 to 4 of west, east, north, south; ``size``: odd, >= 5; ``color``: a MiniGrid colour.
    """

    correct: str
    doors: tuple[str, ...] = ("west", "east")
    size: int = 7
    color: str = "yellow"
    max_steps: int | None = None  # None: 4 * size

    @classmethod
    def parse(cls, raw: Any, where: str) -> HiddenDoorTask:
        where = f"{where} hidden_door"
        values = given_keys(cls, raw, where)
        if "doors" in values:
            if not isinstance(values["doors"], list):
                raise ValueError(f"{where} doors must be a list of sides, e.g. [west, east], got {values['doors']!r}")
            values["doors"] = tuple(str(d) for d in values["doors"])
        for key in ("correct", "color"):
            if key in values:
                values[key] = str(values[key])
        for key in ("size", "max_steps"):
            if key in values:
                values[key] = as_int(values[key], f"{where} {key}")
        task = cls(**values)
        checked(lambda: hidden_door.check_doors(task.size, task.doors, task.correct, task.color), where)
        if task.max_steps is not None and task.max_steps < 1:
            raise ValueError(f"{where} max_steps must be >= 1, got {task.max_steps}")
        return task


#: the task kinds besides `env_id`: TaskSpec field -> its schema
TASK_KINDS: dict[str, Any] = {"recall": RecallTask, "darkroom": DarkRoomTask, "bandit": BanditTask,
                              "hidden_door": HiddenDoorTask}


@dataclass(frozen=True)
class TaskSpec:
    """``tasks.<name>``: a base env (``env_id`` or one of :data:`TASK_KINDS`) and its shifts, applied in order."""

    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    recall: RecallTask | None = None
    darkroom: DarkRoomTask | None = None
    bandit: BanditTask | None = None
    hidden_door: HiddenDoorTask | None = None
    shifts: tuple[dict[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        """``"env_id"`` or the task kind (``"recall"``, ``"darkroom"``, ...)."""
        return next((k for k in TASK_KINDS if getattr(self, k) is not None), "env_id")

    @classmethod
    def parse(cls, name: str, raw: Any) -> TaskSpec:
        where = f"task {name!r}"
        values = given_keys(cls, raw, where)
        kinds = [k for k in ("env_id", *TASK_KINDS) if k in values]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of `env_id` (a Gymnasium id) or a task kind "
                             f"({', '.join(f'`{k}`' for k in TASK_KINDS)}), got {kinds or 'none'}")
        if "env_id" in values:
            values["env_id"] = str(values["env_id"])
            check_env_id(values["env_id"], where)
        elif "env_kwargs" in values:
            raise ValueError(f"{where}: `env_kwargs` goes with `env_id` only; "
                             f"put {kinds[0]}'s settings under `{kinds[0]}`")
        for kind, schema in TASK_KINDS.items():
            if kind in values:
                values[kind] = schema.parse(values[kind], where)
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
