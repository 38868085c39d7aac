"""Schedules: the ordered blocks ``(task_name, duration)`` of one pass of a stream.

Config (``schedule:`` in a stream file; durations count ``unit``: env ``steps`` or ``episodes``)::

    schedule:
      type: cyclic          # blocked: `order` once | cyclic: `order` x `cycles` | random: shuffled per cycle
      order: [A, B, C]      # task names (a name may recur: a revisit)
      cycles: 3             # passes over `order` (revisits)
      durations: null       # one duration per entry of `order`; null: the stream's steps/episodes_per_task
      duration_range: null  # [lo, hi]: each block's duration drawn uniformly (inclusive), seeded
      seed: 0               # the schedule's own seed: every lifetime follows the same schedule

The schedule is computed once from the config; when a lifetime exhausts it, it starts again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEDULE_TYPES = ("blocked", "cyclic", "random")
SCHEDULE_KEYS = {"type", "order", "cycles", "durations", "duration_range", "seed"}
UNITS = ("steps", "episodes")


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


def build_schedule(raw: dict[str, Any], task_names: list[str], unit: str, default_duration: Any) -> Schedule:
    """Validate a ``schedule`` mapping and expand it into blocks (raises ``ValueError``, one line)."""
    if unit not in UNITS:
        raise ValueError(f"stream unit {unit!r} is unknown: choose unit from {', '.join(UNITS)}")
    if not isinstance(raw, dict):
        raise ValueError(f"`schedule` must be a mapping with `order`, got {raw!r}")
    unknown = set(raw) - SCHEDULE_KEYS
    if unknown:
        raise ValueError(f"schedule has unknown key(s) {sorted(unknown)}: allowed are {sorted(SCHEDULE_KEYS)}")
    kind = raw.get("type", "cyclic")
    if kind not in SCHEDULE_TYPES:
        raise ValueError(f"schedule type {kind!r} is unknown: choose type from {', '.join(SCHEDULE_TYPES)}")
    order = list(raw.get("order") or [])
    if not order:
        raise ValueError("schedule is empty: give schedule.order, a non-empty list of task names")
    missing = [name for name in order if name not in task_names]
    if missing:
        raise ValueError(
            f"schedule.order names unknown task(s) {missing}: define them under `tasks` "
            f"(defined: {', '.join(task_names)})"
        )
    cycles = 1 if raw.get("cycles") is None else int(raw["cycles"])
    if cycles < 1:
        raise ValueError(f"schedule.cycles must be >= 1, got {cycles}")
    if kind == "blocked" and cycles != 1:
        raise ValueError(f"schedule type 'blocked' runs `order` once but cycles={cycles}: use type: cyclic")
    rng = np.random.default_rng(0 if raw.get("seed") is None else int(raw["seed"]))

    durations, duration_range = raw.get("durations"), raw.get("duration_range")
    if durations is not None and duration_range is not None:
        raise ValueError("schedule: give `durations` or `duration_range`, not both")
    if durations is not None:
        durations = [int(d) for d in durations]
        if len(durations) != len(order):
            raise ValueError(
                f"schedule.durations has {len(durations)} entries for {len(order)} in schedule.order: give one per entry"
            )
    elif duration_range is None:
        if default_duration is None:
            per = "steps_per_task" if unit == "steps" else "episodes_per_task"
            raise ValueError(f"no block duration: set the stream's `{per}` or schedule.durations")
        durations = [int(default_duration)] * len(order)
    if duration_range is not None:
        lo, hi = (int(x) for x in duration_range)
        if not 1 <= lo <= hi:
            raise ValueError(f"schedule.duration_range must be [lo, hi] with 1 <= lo <= hi, got {[lo, hi]}")

    blocks: list[tuple[str, int]] = []
    for _ in range(cycles):
        idx = rng.permutation(len(order)) if kind == "random" else np.arange(len(order))
        for i in idx:
            d = int(rng.integers(lo, hi + 1)) if duration_range is not None else durations[i]
            blocks.append((order[i], d))
    bad = [d for _, d in blocks if d < 1]
    if bad:
        raise ValueError(f"schedule block durations must be >= 1 {unit}, got {bad[0]}")
    return Schedule(blocks=tuple(blocks), unit=unit)
