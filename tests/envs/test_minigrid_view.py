"""The fast MiniGrid view (``envs.minigrid_view``) is MiniGrid's observation, bit for bit.

* over random episodes of the MiniGrid envs the streams use and of others with doors, keys, boxes,
  lava and rooms (walls that hide cells, open and closed doors, carried objects, the view leaving
  the grid), in every direction, ``fast_gen_obs`` equals ``MiniGridEnv.gen_obs``;
* the hidden-task envs (see-through walls) too;
* a stream's task env gets it, and its episodes are those of the env without it;
* it is installed only where the env computes MiniGrid's own observation, and the flag turns it off.
"""
from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)
import numpy as np
import pytest
from minigrid.minigrid_env import MiniGridEnv

from lifelong.envs.darkroom import DarkRoomEnv
from lifelong.envs.hidden_door import HiddenDoorEnv
from lifelong.envs.minigrid_view import FLAG, fast_gen_obs, install_fast_view
from lifelong.envs.stream_config import TaskSpec
from lifelong.envs.tasks import build_task_env

ENV_IDS = [
    "MiniGrid-DoorKey-5x5-v0", "MiniGrid-Empty-6x6-v0", "MiniGrid-DistShift1-v0", "MiniGrid-LavaCrossingS9N1-v0",
    "MiniGrid-SimpleCrossingS9N1-v0", "MiniGrid-Unlock-v0",  # the shipped streams'
    "MiniGrid-DoorKey-8x8-v0", "MiniGrid-KeyCorridorS3R2-v0", "MiniGrid-MultiRoom-N2-S4-v0",
    "MiniGrid-BlockedUnlockPickup-v0", "MiniGrid-FourRooms-v0",
]


def assert_same_views(env: MiniGridEnv, steps: int, seed: int) -> set[int]:
    """Random actions for ``steps`` steps (episodes restarted), comparing the two views at each;
    returns the directions seen."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    directions = set()
    for t in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(0, env.action_space.n)))
        expected, fast = MiniGridEnv.gen_obs(env), fast_gen_obs(env)
        assert fast["image"].dtype == expected["image"].dtype and fast["image"].shape == expected["image"].shape
        assert np.array_equal(fast["image"], expected["image"]), f"step {t}, direction {env.agent_dir}"
        assert fast["direction"] == expected["direction"] and fast["mission"] == expected["mission"]
        directions.add(env.agent_dir)
        if terminated or truncated:
            env.reset(seed=int(rng.integers(1 << 30)))
    return directions


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("see_through_walls", [False, True])
def test_the_fast_view_is_minigrids_view_over_random_episodes(env_id, see_through_walls):
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    env.see_through_walls = see_through_walls
    assert assert_same_views(env, steps=600, seed=1) == {0, 1, 2, 3}


def test_the_carried_object_and_the_hidden_cells_are_where_minigrid_puts_them():
    env = gym.make("MiniGrid-DoorKey-5x5-v0", disable_env_checker=True).unwrapped
    env.reset(seed=0)
    env.carrying = env.grid.grid[next(i for i, c in enumerate(env.grid.grid) if c is not None and c.type == "key")]
    expected, fast = MiniGridEnv.gen_obs(env), fast_gen_obs(env)
    assert tuple(fast["image"][3, 6]) == tuple(env.carrying.encode())  # the agent's cell shows the key
    assert (fast["image"] == 0).all(axis=-1).any()  # some cells are hidden behind the walls
    assert np.array_equal(fast["image"], expected["image"])


@pytest.mark.parametrize("make", [lambda: DarkRoomEnv(size=7, goal=(1, 5)),
                                  lambda: HiddenDoorEnv(correct="east")], ids=["darkroom", "hidden-door"])
def test_the_hidden_task_envs_see_through_walls_the_same_way(make):
    env = make()
    assert env.see_through_walls
    assert_same_views(env, steps=300, seed=2)


def test_a_streams_task_env_gets_the_fast_view_and_the_same_episodes(monkeypatch):
    spec = TaskSpec.parse("doorkey", {"env_id": "MiniGrid-DoorKey-5x5-v0"})
    fast_env = build_task_env(spec, None)
    assert "gen_obs" in vars(fast_env.unwrapped)
    monkeypatch.setenv(FLAG, "0")
    plain_env = build_task_env(spec, None)
    assert "gen_obs" not in vars(plain_env.unwrapped)
    rng = np.random.default_rng(0)
    obs_fast, _ = fast_env.reset(seed=5)
    obs_plain, _ = plain_env.reset(seed=5)
    for _ in range(300):
        for key in obs_plain:
            assert np.array_equal(obs_fast[key], obs_plain[key])
        action = int(rng.integers(0, 7))
        obs_fast, r_fast, term_fast, trunc_fast, _ = fast_env.step(action)
        obs_plain, r_plain, term_plain, trunc_plain, _ = plain_env.step(action)
        assert (r_fast, term_fast, trunc_fast) == (r_plain, term_plain, trunc_plain)
        if term_plain or trunc_plain:
            obs_fast, _ = fast_env.reset(seed=7)
            obs_plain, _ = plain_env.reset(seed=7)


def test_it_is_installed_only_where_the_env_computes_minigrids_own_view():
    class OwnView(MiniGridEnv):
        def gen_obs(self):
            return super().gen_obs()

    plain = gym.make("MiniGrid-Empty-6x6-v0", disable_env_checker=True)
    assert install_fast_view(plain)  # through the wrappers
    assert not install_fast_view(plain)  # once
    own = OwnView.__new__(OwnView)
    assert not install_fast_view(own)
    assert not install_fast_view(gym.make("CartPole-v1"))


def test_an_env_with_the_fast_view_copies_and_pickles_with_its_own_view():
    env = gym.make("MiniGrid-DoorKey-5x5-v0", disable_env_checker=True).unwrapped
    install_fast_view(env)
    env.reset(seed=3)
    for other in (copy.deepcopy(env), pickle.loads(pickle.dumps(env))):
        other.step(2)
        assert other.gen_obs.args[0] is other  # the copy's view reads the copy
        assert np.array_equal(other.gen_obs()["image"], MiniGridEnv.gen_obs(other)["image"])
