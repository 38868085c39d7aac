"""Schedules: the ordered blocks ``(task_name, duration)`` of one pass of a stream.

:func:`build_schedule` expands a stream's ``schedule:`` (:class:`~envs.stream_config.ScheduleConfig`
lists its keys and their defaults): ``blocked`` runs ``order`` once, ``cyclic`` runs it ``cycles``
times (a task that recurs is revisited), ``random`` shuffles it in every cycle. A block lasts its
entry of ``durations``, a draw from ``duration_range`` (uniform, inclusive), or the stream's
``steps_per_task`` / ``episodes_per_task``, counted in the stream's ``unit``. Random choices use the
schedule's own ``seed``, so every lifetime follows the same schedule.

The schedule is computed once from the config; when a lifetime exhausts it, it starts again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.envs.stream_config import ScheduleConfig

SCHEDULE_TYPES = ("blocked", "cyclic", "random")


@dataclass(frozen=True)
class Schedule:
    """One pass of a stream: ``blocks[i] = (task_name, duration)``, durations counted in ``unit``."""

    blocks: tuple[tuple[str, int], ...]
    unit: str

    @property
    def length(self) -> int:
        """Total duration of one pass, in ``unit``."""
        return sum(d for _, d in self.blocks)

    def ends(self) -> np.ndarray:
        """Cumulative end of each block within one pass, ``[num_blocks]`` int64."""
        return np.cumsum([d for _, d in self.blocks], dtype=np.int64)


def build_schedule(config: ScheduleConfig, task_names: list[str], unit: str, default_duration: int | None) -> Schedule:
    """Check a schedule config against the tasks and expand it into blocks (``ValueError``, one line)."""
    if config.type not in SCHEDULE_TYPES:
        raise ValueError(f"schedule type {config.type!r} is unknown: choose type from {', '.join(SCHEDULE_TYPES)}")
    order = list(config.order)
    if not order:
        raise ValueError("schedule is empty: give schedule.order, a non-empty list of task names")
    missing = [name for name in order if name not in task_names]
    if missing:
        raise ValueError(
            f"schedule.order names unknown task(s) {missing}: define them under `tasks` "
            f"(defined: {', '.join(task_names)})"
        )
    if config.cycles < 1:
        raise ValueError(f"schedule.cycles must be >= 1, got {config.cycles}")
    if config.type == "blocked" and config.cycles != 1:
        raise ValueError(f"schedule type 'blocked' runs `order` once but cycles={config.cycles}: use type: cyclic")
    rng = np.random.default_rng(config.seed)

    durations, duration_range = config.durations, config.duration_range
    if durations is not None and duration_range is not None:
        raise ValueError("schedule: give `durations` or `duration_range`, not both")
    if durations is not None:
        if len(durations) != len(order):
            raise ValueError(
                f"schedule.durations has {len(durations)} entries for {len(order)} in schedule.order: give one per entry"
            )
    elif duration_range is None:
        if default_duration is None:
            per = "steps_per_task" if unit == "steps" else "episodes_per_task"
            raise ValueError(f"no block duration: set the stream's `{per}` or schedule.durations")
        durations = (default_duration,) * len(order)
    if duration_range is not None:
        lo, hi = duration_range
        if not 1 <= lo <= hi:
            raise ValueError(f"schedule.duration_range must be [lo, hi] with 1 <= lo <= hi, got {[lo, hi]}")

    blocks: list[tuple[str, int]] = []
    for _ in range(config.cycles):
        idx = rng.permutation(len(order)) if config.type == "random" else np.arange(len(order))
        for i in idx:
            d = int(rng.integers(lo, hi + 1)) if duration_range is not None else durations[i]
            blocks.append((order[i], d))
    least = 2 if unit == "steps" else 1  # a steps block holds its autoreset token and at least one step
    bad = [d for _, d in blocks if d < least]
    if bad:
        raise ValueError(f"schedule block durations must be >= {least} {unit}, got {bad[0]}")
    return Schedule(blocks=tuple(blocks), unit=unit)
