"""Task envs saved as plain data (envs.plain_state): loadable with weights_only=True, restored exactly."""
from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
import torch
from helpers.rollouts import play
from helpers.structures import same as same_structure

from lifelong.envs.make import available_streams, load_stream_config, make_task_env, validate_stream_config
from lifelong.envs.plain_state import env_state_dict, load_env_state_dict


def through_weights_only(state):
    """``state`` after a torch.save / torch.load(weights_only=True) round trip."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


same = partial(same_structure, exact_types=True)  # a restored state keeps its types and dtypes


def every_task() -> list[tuple[str, str]]:
    """One (stream, task) per configured base env and kind of shift."""
    pairs, seen = [], set()
    for name in available_streams():
        spec = validate_stream_config(load_stream_config(name))
        for task, task_spec in spec.tasks.items():
            key = (task_spec.env_id, task_spec.recall is None, tuple(shift["type"] for shift in task_spec.shifts))
            if key not in seen:
                seen.add(key)
                pairs.append((name, task))
    return pairs


def task_env(env):
    """The current task env inside a single-task stream."""
    return env._envs[env.task_id]


@pytest.mark.parametrize("stream, task", every_task())
@pytest.mark.parametrize("cut", [7, 61])
def test_every_configured_task_env_restored_from_plain_data_continues_identically(stream, task, cut):
    cfg = load_stream_config(stream)
    original = make_task_env(cfg, task, seed=3)
    original.reset()
    play(original, cut, np.random.default_rng(cut))
    state = through_weights_only(original.state_dict())
    restored = make_task_env(cfg, task, seed=99)
    restored.load_state_dict(state)
    inner_a, inner_b = task_env(original).unwrapped, task_env(restored).unwrapped
    if hasattr(inner_a, "grid"):  # MiniGrid: the grid, the agent and the step count as they were
        assert np.array_equal(inner_a.grid.encode(), inner_b.grid.encode())
        assert same(inner_a.agent_pos, inner_b.agent_pos) and same(inner_a.agent_dir, inner_b.agent_dir)
        assert inner_a.step_count == inner_b.step_count
    a, b = play(original, 300, np.random.default_rng(5)), play(restored, 300, np.random.default_rng(5))
    assert same(a, b)


def minigrid_task(env_id: str):
    """A one-task stream config holding MiniGrid's ``env_id`` (the configured streams need not hold it)."""
    cfg = load_stream_config("mg-cycle").copy()
    cfg.tasks = {"task": {"env_id": env_id}}
    cfg.schedule.order = ["task"]
    return cfg


def keycorridor():
    env = make_task_env(minigrid_task("MiniGrid-KeyCorridorS3R1-v0"), "task", seed=0)
    env.reset()
    return env, task_env(env).unwrapped


@pytest.mark.parametrize("env_id", ["MiniGrid-MultiRoom-N2-S4-v0", "MiniGrid-LockedRoom-v0"])
def test_envs_keeping_their_own_room_objects_are_saved_and_continue_identically(env_id):
    """MultiRoom and LockedRoom keep rooms of their own classes (once refused: a run's checkpoint failed)."""
    original = make_task_env(minigrid_task(env_id), "task", seed=3)
    original.reset()
    play(original, 7, np.random.default_rng(7))
    restored = make_task_env(minigrid_task(env_id), "task", seed=99)
    restored.load_state_dict(through_weights_only(original.state_dict()))
    rooms = task_env(restored).unwrapped.rooms
    assert rooms and vars(rooms[0]) and type(rooms[0]) is type(task_env(original).unwrapped.rooms[0])
    a, b = play(original, 200, np.random.default_rng(5)), play(restored, 200, np.random.default_rng(5))
    assert same(a, b)


def test_shared_objects_and_cycles_come_back_as_shared_objects_and_cycles():
    env, inner = keycorridor()
    inner.grid.set(*inner.obj.cur_pos, None)
    inner.carrying = inner.obj  # the agent holds the target ball: KeyCorridor checks `carrying == obj`
    restored, restored_inner = keycorridor()
    restored.load_state_dict(through_weights_only(env.state_dict()))
    assert restored_inner.carrying is restored_inner.obj and restored_inner.carrying is not inner.obj
    room = restored_inner.room_grid[0][0]
    assert room.neighbors[0].neighbors[2] is room
    assert restored_inner.grid.get(*room.door_pos[0]) is room.doors[0]


def test_an_env_holding_a_value_that_is_not_plain_data_is_refused_naming_it():
    env, inner = keycorridor()
    inner.extra = {"where": object()}
    with pytest.raises(TypeError, match=r"KeyCorridorEnv\.extra\['where'\] \(builtins\.object\)"):
        env_state_dict(task_env(env))


def test_an_env_state_naming_an_unknown_class_is_refused_without_making_it():
    env, _ = keycorridor()
    state = env_state_dict(task_env(env))
    state["objects"][0]["class"] = "os.system"
    with pytest.raises(ValueError, match="unknown object class"):
        load_env_state_dict(task_env(keycorridor()[0]), state)


def test_an_env_state_of_another_task_is_refused():
    state = env_state_dict(task_env(keycorridor()[0]))
    doorkey = make_task_env(load_stream_config("doorkey-shifts"), "slippery", seed=0)
    with pytest.raises(ValueError, match="same task config"):
        load_env_state_dict(task_env(doorkey), state)
