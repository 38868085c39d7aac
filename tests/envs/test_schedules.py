"""Schedules expand a config into blocks exactly as written: order, revisits, seeded randomness."""
from __future__ import annotations

import pytest

from lifelong.envs.schedules import build_schedule as expand
from lifelong.envs.stream_config import ScheduleConfig

TASKS = ["A", "B", "C"]


def build_schedule(raw: dict, task_names: list[str], unit: str, default_duration: int | None):
    """A ``schedule:`` mapping, parsed by the schema and expanded into blocks."""
    return expand(ScheduleConfig.parse(raw), task_names, unit, default_duration)


def test_blocked_schedule_runs_the_order_once_with_the_default_duration():
    s = build_schedule({"type": "blocked", "order": ["A", "B", "A"]}, TASKS, "steps", 100)
    assert s.blocks == (("A", 100), ("B", 100), ("A", 100))
    assert s.length == 300 and s.ends().tolist() == [100, 200, 300]


def test_cyclic_schedule_revisits_each_task_once_per_cycle():
    s = build_schedule({"type": "cyclic", "order": TASKS, "cycles": 3}, TASKS, "episodes", 5)
    assert [t for t, _ in s.blocks] == TASKS * 3
    assert s.unit == "episodes"


def test_explicit_durations_follow_the_order():
    s = build_schedule({"order": ["A", "B"], "durations": [10, 30], "cycles": 2}, TASKS, "steps", None)
    assert s.blocks == (("A", 10), ("B", 30), ("A", 10), ("B", 30))


def test_random_schedule_is_seeded_and_shuffles_each_cycle():
    raw = {"type": "random", "order": TASKS, "cycles": 4, "duration_range": [5, 9], "seed": 3}
    a = build_schedule(raw, TASKS, "episodes", None)
    b = build_schedule(dict(raw), TASKS, "episodes", None)
    c = build_schedule({**raw, "seed": 4}, TASKS, "episodes", None)
    assert a == b
    assert a != c
    for cycle in range(4):
        assert sorted(t for t, _ in a.blocks[3 * cycle: 3 * cycle + 3]) == TASKS
    assert all(5 <= d <= 9 for _, d in a.blocks)
    assert len({tuple(t for t, _ in a.blocks[3 * k: 3 * k + 3]) for k in range(4)}) > 1, "order never changed"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"order": []}, "schedule is empty"),
        ({}, "schedule is empty"),
        ({"order": ["A", "Z"]}, "unknown task(s) ['Z']"),
        ({"order": ["A"], "type": "zigzag"}, "choose type from blocked, cyclic, random"),
        ({"order": ["A"], "type": "blocked", "cycles": 2}, "use type: cyclic"),
        ({"order": ["A"], "cycles": 0}, "cycles must be >= 1"),
        ({"order": ["A", "B"], "durations": [1]}, "give one per entry"),
        ({"order": ["A"], "duration_range": [5, 2]}, "1 <= lo <= hi"),
        ({"order": ["A"], "durations": [0]}, "must be >= 2 steps"),
        ({"order": ["A"], "repeat": 2}, "unknown key(s) ['repeat']"),
    ],
)
def test_invalid_schedules_fail_with_a_message_naming_the_fix(raw, message):
    with pytest.raises(ValueError) as error:
        build_schedule(raw, TASKS, "steps", 10)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_duration_names_the_knob_to_set():
    with pytest.raises(ValueError, match="episodes_per_task"):
        build_schedule({"order": ["A"]}, TASKS, "episodes", None)


def test_left_out_keys_take_the_schema_defaults():
    assert ScheduleConfig.parse({"order": ["A"], "cycles": None}) == ScheduleConfig(
        type="cyclic", order=("A",), cycles=1, durations=None, duration_range=None, seed=0)
