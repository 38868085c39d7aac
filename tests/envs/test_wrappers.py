"""Each shift wrapper does what it says, on a real MiniGrid task, seeded and reproducibly."""
from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np
import pytest

from lifelong.envs.wrappers import (
    ActionPermutation,
    EpisodeSuccess,
    MiniGridObservation,
    ObservationPermutation,
    RewardRemap,
    StochasticActions,
    apply_shift,
)

DOORKEY = "MiniGrid-DoorKey-5x5-v0"
# MiniGrid-Empty-5x5: the agent starts at (1, 1) facing right, the goal is at (3, 3)
EMPTY_SOLUTION = [2, 2, 1, 2, 2]  # forward, forward, turn right, forward, forward


def wrapped_minigrid(env_id: str = DOORKEY) -> gym.Env:
    return MiniGridObservation(gym.make(env_id, disable_env_checker=True))


def agent_state(env: gym.Env) -> tuple:
    u = env.unwrapped
    return tuple(u.agent_pos), u.agent_dir, None if u.carrying is None else u.carrying.type


def test_minigrid_observation_drops_the_mission():
    env = wrapped_minigrid()
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"image", "direction"}
    assert env.observation_space["image"].shape == (7, 7, 3)
    assert obs in env.observation_space


def test_action_permutation_sends_each_action_to_its_permuted_underlying_action():
    wrapped = ActionPermutation(wrapped_minigrid(), seed=1)
    perm = wrapped.permutation
    assert sorted(perm.tolist()) == list(range(7)) and perm.tolist() != list(range(7))
    twin = wrapped_minigrid()
    rng = np.random.default_rng(0)
    wrapped.reset(seed=5)
    twin.reset(seed=5)
    for a in rng.integers(7, size=60):
        wrapped.step(int(a))
        twin.step(int(perm[a]))
        assert agent_state(wrapped) == agent_state(twin)


def test_action_permutation_is_fixed_by_its_seed_or_given_explicitly():
    a = ActionPermutation(wrapped_minigrid(), seed=3).permutation
    b = ActionPermutation(wrapped_minigrid(), seed=3).permutation
    c = ActionPermutation(wrapped_minigrid(), seed=4).permutation
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    explicit = ActionPermutation(wrapped_minigrid(), permutation=[1, 0, 2, 3, 4, 5, 6])
    assert explicit.action(0) == 1 and explicit.action(1) == 0 and explicit.action(2) == 2
    with pytest.raises(ValueError, match="exactly once"):
        ActionPermutation(wrapped_minigrid(), permutation=[0, 0, 1, 2, 3, 4, 5])


def test_observation_permutation_moves_every_view_cell_to_its_fixed_place():
    wrapped = ObservationPermutation(wrapped_minigrid(), seed=2)
    twin = wrapped_minigrid()
    perm = wrapped.permutation
    assert sorted(perm.tolist()) == list(range(49))
    obs, _ = wrapped.reset(seed=1)
    raw, _ = twin.reset(seed=1)
    for step in range(20):
        cells = raw["image"].reshape(49, 3)
        np.testing.assert_array_equal(obs["image"].reshape(49, 3), cells[perm])
        assert obs["direction"] == raw["direction"]
        assert obs in wrapped.observation_space
        action = step % 3
        obs, *_ = wrapped.step(action)
        raw, *_ = twin.step(action)
    assert not np.array_equal(obs["image"], raw["image"]), "the permutation changed nothing"


def solve_empty(env: gym.Env) -> tuple[list[float], dict]:
    env.reset(seed=0)
    rewards, info = [], {}
    for a in EMPTY_SOLUTION:
        _, r, terminated, _, info = env.step(a)
        rewards.append(r)
    assert terminated
    return rewards, info


def test_reward_remap_scales_and_flips_the_reward_but_success_stays_the_goal():
    plain, _ = solve_empty(wrapped_minigrid("MiniGrid-Empty-5x5-v0"))
    assert plain[-1] > 0 and plain[:-1] == [0, 0, 0, 0]
    remapped, info = solve_empty(RewardRemap(EpisodeSuccess(wrapped_minigrid("MiniGrid-Empty-5x5-v0")), scale=-2.0, shift=0.5))
    assert remapped == pytest.approx([-2.0 * r + 0.5 for r in plain])
    assert info["success"] == 1.0, "success is measured below the remap"


def test_episode_success_is_zero_when_the_episode_times_out():
    env = EpisodeSuccess(gym.make("MiniGrid-Empty-5x5-v0", max_steps=3, disable_env_checker=True))
    env.reset(seed=0)
    for _ in range(3):
        _, _, terminated, truncated, info = env.step(0)  # turn left on the spot
    assert truncated and not terminated and info["success"] == 0.0


def test_dynamics_replace_actions_with_the_configured_probability_reproducibly():
    def replaced(prob: float, seed: int, n: int = 2000) -> list[bool]:
        env = StochasticActions(wrapped_minigrid(), prob=prob)
        env.reset(seed=seed)
        flags = []
        for _ in range(n):
            env.action(2)
            flags.append(env.replaced)
        return flags

    assert not any(replaced(0.0, 0))
    assert all(replaced(1.0, 0))
    frac = np.mean(replaced(0.3, 0))
    assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)
    assert replaced(0.3, 1) == replaced(0.3, 1)
    assert replaced(0.3, 1) != replaced(0.3, 2)


def test_dynamics_with_prob_one_act_uniformly_at_random():
    env = StochasticActions(wrapped_minigrid(), prob=1.0)
    env.reset(seed=0)
    counts = np.bincount([env.action(2) for _ in range(7000)], minlength=7)
    assert counts.min() > 850 and counts.max() < 1150, counts


def test_dynamics_with_prob_zero_leave_the_task_unchanged():
    wrapped, twin = StochasticActions(wrapped_minigrid(), prob=0.0), wrapped_minigrid()
    wrapped.reset(seed=3)
    twin.reset(seed=3)
    for a in np.random.default_rng(1).integers(7, size=50):
        wrapped.step(int(a))
        twin.step(int(a))
        assert agent_state(wrapped) == agent_state(twin)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "warp"}, "choose type from action_permutation"),
        ({"type": "dynamics"}, "needs `prob`"),
        ({"type": "dynamics", "prob": 1.5}, "in [0, 1]"),
        ({"type": "reward_remap", "sign": -1}, "unknown parameter(s) ['sign']"),
        ({"type": "action_permutation"}, "needs a `seed`"),
    ],
)
def test_bad_shift_specs_fail_with_a_message_naming_the_fix(spec, message):
    with pytest.raises(ValueError) as error:
        apply_shift(wrapped_minigrid(), spec)
    assert message in str(error.value)
