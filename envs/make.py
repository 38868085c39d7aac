"""Building streams from ``configs/stream/<name>.yaml``: the entry points other packages call.

A stream config (a Hydra group file; a DictConfig or a plain dict) is validated by
:class:`~envs.stream_config.StreamConfig`, which documents every key and holds the defaults.
Invalid configs raise ``ValueError`` with one line naming the valid choices, before any env steps.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gymnasium.vector import AutoresetMode, SyncVectorEnv

from lifelong.config_files import group_choices, group_dir
from lifelong.envs.schedules import Schedule, build_schedule
from lifelong.envs.stream import StreamEnv
from lifelong.envs.stream_config import RecallVocab, StreamConfig, TaskSpec

PROBE_DURATION = 1 << 62  # a single-task probe env never switches


@dataclass(frozen=True)
class StreamSpec:
    """A validated stream config: the task specs, one pass of the schedule and the options."""

    name: str
    description: str
    tasks: dict[str, TaskSpec]
    schedule: Schedule
    task_names: list[str]
    expose_task_id: bool
    recall_vocab: RecallVocab | None  # num_keys resolved; None when no task is a recall task


def available_streams() -> list[str]:
    """Names of the configured streams (``configs/stream/*.yaml``), sorted."""
    return group_choices("stream")


def load_stream_config(name: str):
    """Load ``configs/stream/<name>.yaml`` as a DictConfig (``ValueError`` naming the choices if absent)."""
    from omegaconf import OmegaConf

    path = group_dir("stream") / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown stream {name!r}: choose stream=<name> from {', '.join(available_streams())}")
    return OmegaConf.load(path)


def _recall_vocab(config: StreamConfig) -> RecallVocab | None:
    """The stream's recall vocabulary with ``num_keys`` resolved (None without recall tasks)."""
    pairs = [t.recall.num_pairs for t in config.tasks.values() if t.recall is not None]
    if not pairs:
        if config.recall_vocab is not None:
            raise ValueError("`recall_vocab` is set but no task is a recall task: remove it or add recall tasks")
        return None
    vocab = config.recall_vocab or RecallVocab()
    most = max(pairs)
    num_keys = most if vocab.num_keys is None else vocab.num_keys
    if num_keys < most:
        raise ValueError(
            f"recall_vocab.num_keys={num_keys} is smaller than the largest num_pairs={most}: "
            f"raise num_keys to at least {most}"
        )
    if vocab.num_values < 2:
        raise ValueError(f"recall_vocab.num_values must be >= 2, got {vocab.num_values}")
    return RecallVocab(num_keys=num_keys, num_values=vocab.num_values)


def validate_stream_config(stream_cfg: Any) -> StreamSpec:
    """Check a stream config without building or stepping any env; return its :class:`StreamSpec`."""
    config = StreamConfig.parse(stream_cfg)
    try:
        schedule = build_schedule(config.schedule, list(config.tasks), config.unit, config.block_duration)
        recall_vocab = _recall_vocab(config)
    except ValueError as error:
        raise ValueError(f"stream {config.name!r}: {error}") from None
    task_names = list(dict.fromkeys(t for t, _ in schedule.blocks))
    return StreamSpec(name=config.name, description=config.description, tasks=config.tasks, schedule=schedule, task_names=task_names,
                      expose_task_id=config.expose_task_id, recall_vocab=recall_vocab)


def make_stream(stream_cfg: Any, seed: int) -> StreamEnv:
    """One lifetime's stream env, seeded ``seed`` (its first ``reset()`` uses it)."""
    spec = validate_stream_config(stream_cfg)
    return StreamEnv(spec.tasks, spec.schedule, seed=seed, expose_task_id=spec.expose_task_id,
                     task_names=spec.task_names, recall_vocab=spec.recall_vocab, name=spec.name)


def make_vector_env(stream_cfg: Any, num_envs: int, seed: int) -> SyncVectorEnv:
    """``num_envs`` lifetimes on the same schedule, lifetime i seeded ``seed + i``; NEXT_STEP autoreset.

    Call ``reset(seed=seed)`` (or ``reset()``) on it to start; per-env infos come through
    vectorised, with ``_<key>`` masks for the keys only some envs report on a step.
    """
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    validate_stream_config(stream_cfg)
    fns = [(lambda i=i: make_stream(stream_cfg, seed + i)) for i in range(int(num_envs))]
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)


def make_task_env(stream_cfg: Any, task_name: str, seed: int) -> StreamEnv:
    """One task of the stream, with its shifts and the stream's observation processing (for probes).

    It is a single-block :class:`StreamEnv` that never switches, so its observation space (task id
    included, numbered as in the stream) and its info keys are those of the full stream.
    """
    spec = validate_stream_config(stream_cfg)
    if task_name not in spec.tasks:
        raise ValueError(f"stream {spec.name!r} has no task {task_name!r}: choose from {', '.join(spec.tasks)}")
    names = spec.task_names if task_name in spec.task_names else [*spec.task_names, task_name]
    schedule = Schedule(blocks=((task_name, PROBE_DURATION),), unit="steps")
    return StreamEnv(spec.tasks, schedule, seed=seed, expose_task_id=spec.expose_task_id, task_names=names,
                     recall_vocab=spec.recall_vocab, name=f"{spec.name}/{task_name}")


def make_replay_env(stream_cfg: Any, blocks: Sequence[tuple[str, int]], seed: int) -> StreamEnv:
    """A stream of the config's tasks on the schedule ``blocks`` = ``[(task, episodes), ...]`` counted in
    episodes (the switch-replay probe: A for n episodes, then B, then A again), ids as in the stream."""
    spec = validate_stream_config(stream_cfg)
    unknown = [task for task, _ in blocks if task not in spec.tasks]
    if unknown:
        raise ValueError(f"stream {spec.name!r} has no task(s) {unknown}: choose from {', '.join(spec.tasks)}")
    schedule = Schedule(blocks=tuple((str(t), int(n)) for t, n in blocks), unit="episodes")
    names = spec.task_names + [t for t, _ in blocks if t not in spec.task_names]
    return StreamEnv(spec.tasks, schedule, seed=seed, expose_task_id=spec.expose_task_id, task_names=names,
                     recall_vocab=spec.recall_vocab, name=f"{spec.name}/replay")


def describe_streams() -> list[dict[str, Any]]:
    """Per configured stream: ``name``, ``description``, ``tasks``, ``blocks``, ``schedule_length``, ``unit``."""
    rows = []
    for name in available_streams():
        spec = validate_stream_config(load_stream_config(name))
        rows.append({"name": name, "description": spec.description, "tasks": spec.task_names, "blocks": len(spec.schedule.blocks),
                     "schedule_length": spec.schedule.length, "unit": spec.schedule.unit})
    return rows
