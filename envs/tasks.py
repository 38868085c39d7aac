"""Task specs: what one task of a stream is (a base env plus its shifts) and how to build it.

A task in a stream config (``tasks: {<name>: <spec>}``) is either a registered Gymnasium env

    door-perm1: {env_id: MiniGrid-DoorKey-5x5-v0, shifts: [{type: action_permutation, seed: 1}]}

or an associative-recall task (``envs.recall``), whose vocabulary is set once per stream
(``recall_vocab: {num_keys, num_values}``) so every task shares one observation/action space:

    p4-g8: {recall: {num_pairs: 4, gap: 8}}

Every built task env has the stream's observation processing (MiniGrid: the mission string
dropped) and reports ``info["success"]`` on its episode-ending step.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)

from lifelong.envs.recall import AssociativeRecallEnv
from lifelong.envs.wrappers import EpisodeSuccess, MiniGridObservation, apply_shift, check_shift_spec

TASK_KEYS = {"env_id", "env_kwargs", "recall", "shifts"}
RECALL_KEYS = {"num_pairs", "gap", "num_queries"}


@dataclass(frozen=True)
class TaskSpec:
    """One task: a base env (``env_id`` or ``recall`` parameters) and its shifts, applied in order."""

    name: str
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    recall: dict[str, int] | None = None
    shifts: tuple[dict[str, Any], ...] = ()


def to_plain(value: Any) -> Any:
    """A DictConfig / ListConfig as plain python containers (dicts and lists pass through)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def check_env_id(env_id: str, where: str) -> None:
    """Raise ``ValueError`` naming close registered ids if ``env_id`` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.registry for the registered ids"
    raise ValueError(f"{where}: unknown env id {env_id!r}: {hint}")


def parse_task(name: str, raw: Any) -> TaskSpec:
    """Validate one ``tasks.<name>`` entry and return its :class:`TaskSpec` (no env is built)."""
    where = f"task {name!r}"
    raw = to_plain(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping with `env_id` or `recall`, got {raw!r}")
    unknown = set(raw) - TASK_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}: allowed are {sorted(TASK_KEYS)}")
    env_id, recall = raw.get("env_id"), raw.get("recall")
    if (env_id is None) == (recall is None):
        raise ValueError(f"{where}: give exactly one of `env_id` (a Gymnasium id) or `recall` ({{num_pairs, gap}})")
    if env_id is not None:
        check_env_id(str(env_id), where)
    if recall is not None:
        if not isinstance(recall, dict) or "num_pairs" not in recall:
            raise ValueError(f"{where}: `recall` needs at least num_pairs, e.g. recall: {{num_pairs: 4, gap: 8}}")
        bad = set(recall) - RECALL_KEYS
        if bad:
            raise ValueError(f"{where}: unknown recall key(s) {sorted(bad)}: allowed are {sorted(RECALL_KEYS)}")
        recall = {k: int(v) for k, v in recall.items() if v is not None}
    shifts = raw.get("shifts") or []
    if not isinstance(shifts, list):
        raise ValueError(f"{where}: `shifts` must be a list of {{type: ..., <params>}}, got {shifts!r}")
    for i, shift in enumerate(shifts):
        if not isinstance(shift, dict):
            raise ValueError(f"{where}: shift {i} must be a mapping {{type: ..., <params>}}, got {shift!r}")
        check_shift_spec(shift, f"{where} shift {i}")
    return TaskSpec(
        name=name,
        env_id=None if env_id is None else str(env_id),
        env_kwargs=dict(raw.get("env_kwargs") or {}),
        recall=recall,
        shifts=tuple(dict(s) for s in shifts),
    )


def parse_tasks(raw_tasks: Any) -> dict[str, TaskSpec]:
    """Validate the ``tasks`` mapping of a stream config."""
    raw_tasks = to_plain(raw_tasks)
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise ValueError("stream config needs a non-empty `tasks` mapping: tasks: {<name>: {env_id: ...}}")
    return {str(name): parse_task(str(name), spec) for name, spec in raw_tasks.items()}


def build_task_env(spec: TaskSpec, recall_vocab: dict[str, int] | None = None) -> gym.Env:
    """Build one task env: base env, observation processing, success info, then the shifts."""
    if spec.env_id is not None:
        env = gym.make(spec.env_id, disable_env_checker=True, **spec.env_kwargs)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict) and {"image", "direction", "mission"} <= set(space.spaces):
            env = MiniGridObservation(env)
    else:
        vocab = recall_vocab or {}
        env = AssociativeRecallEnv(**spec.recall, **vocab)
    env = EpisodeSuccess(env)
    for shift in spec.shifts:
        env = apply_shift(env, shift)
    return env
