"""The switch-replay probe (in-context versus in-weight forgetting): A, B, then A again through a copy of
the memory, once carried and once reset at the return; learning frozen, the lifetime left bit-identical."""
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lifelong.agents.policy import LifelongAgent
from lifelong.envs.make import group_dir, load_stream_config, make_replay_env, make_stream
from lifelong.memory_layers.state import tree_leaves
from lifelong.tracking.replay import SwitchReplay, recovery_episode


def test_recovery_is_the_first_episode_back_at_the_level_of_the_first_visit():
    # before = 0.8, level 0.9: the bar is 0.72; episode 3 (0.75) is the first to clear it
    assert recovery_episode([0.0, 0.5, 0.75, 1.0], before=0.8, level=0.9) == 3.0
    assert math.isnan(recovery_episode([0.0, 0.1], before=0.8, level=0.9)), "never recovered within the replay"
    assert math.isnan(recovery_episode([1.0], before=0.0, level=0.9)), "A never solved: nothing to recover"


def test_the_replay_stream_plays_a_then_b_then_a_counted_in_episodes():
    env = make_replay_env(load_stream_config("bandit"), [("best2", 2), ("best0", 1), ("best2", 3)], seed=0)
    env.reset(seed=0)
    names = []
    for _ in range(6):
        _, _, terminated, truncated, info = env.step(0)
        assert terminated or truncated  # one pull an episode
        names.append(info["task_name"])
        env.reset()
    assert names == ["best2", "best2", "best0", "best2", "best2", "best2"]


@pytest.fixture(scope="module")
def bandit_agent():
    stream_cfg = load_stream_config("bandit")
    env = make_stream(stream_cfg, seed=0)
    memory_cfg = OmegaConf.load(group_dir("memory") / "gated_deltanet.yaml")
    torch.manual_seed(0)
    agent = LifelongAgent(env.observation_space, env.action_space, memory_cfg, d_model=16, num_layers=1, mlp_ratio=2.0)
    return stream_cfg, agent


def test_the_replay_leaves_the_lifetime_memory_weights_mode_and_rng_bit_identical(bandit_agent):
    stream_cfg, agent = bandit_agent
    agent.train()
    memory = tuple(type(s)(*(torch.randn_like(t) for t in s)) for s in agent.initial_memory(3, "cpu"))
    memory_before = [t.clone() for t in tree_leaves(memory)]
    params_before = {k: v.clone() for k, v in agent.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    replay = SwitchReplay(stream_cfg, "cpu", make_replay_env, episodes=(3, 2, 4), bootstrap_samples=200)
    out = replay(agent, memory, ("best2", "best0"), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(memory_before, tree_leaves(memory)))
    assert all(torch.equal(params_before[k], v) for k, v in agent.state_dict().items())
    assert agent.training, "the training flag is restored"
    assert torch.equal(rng_before, torch.random.get_rng_state()), "the replay samples from a forked RNG"
    assert out["tasks"] == ["best2", "best0"] and out["episodes"] == [3, 2, 4]
    for variant in ("carried", "reset"):
        result = out[variant]
        assert np.shape(result["success_matrix"]) == (3, 4), "every lifetime's episodes after the return"
        assert len(result["success"]) == 4
        assert all(lo <= m <= hi for lo, m, hi in zip(result["low"], result["success"], result["high"]))


@contextmanager
def recorded_resets(agent):
    """The masks ``[B]`` of every ``agent.reset_memory`` call made inside the block, in order."""
    calls = []
    original = agent.reset_memory

    def reset_memory(mem, mask):
        calls.append(mask.clone())
        return original(mem, mask)

    agent.reset_memory = reset_memory
    try:
        yield calls
    finally:
        del agent.reset_memory


def test_the_replay_is_reproducible_by_seed_and_the_reset_half_forgets_its_context(bandit_agent):
    stream_cfg, agent = bandit_agent
    memory = agent.initial_memory(2, "cpu")
    replay = SwitchReplay(stream_cfg, "cpu", make_replay_env, episodes=(2, 2, 3), bootstrap_samples=200)
    first = replay(agent, memory, ("best2", "best0"), seed=1)
    assert replay(agent, memory, ("best2", "best0"), seed=1) == first

    with recorded_resets(agent) as calls:
        replay(agent, memory, ("best2", "best0"), seed=1)
    resets = torch.stack(calls).any(0)
    assert resets.tolist() == [False, False, True, True], "only the second copy of each lifetime is reset"
    assert all(int(m.sum()) <= 2 for m in calls)


def test_bad_replay_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="three counts >= 1"):
        SwitchReplay(None, "cpu", make_replay_env, episodes=(2, 0, 3))


def test_the_replay_of_an_agent_trained_with_reset_on_episode_clears_both_halves_every_episode(bandit_agent):
    stream_cfg, agent = bandit_agent
    replay = SwitchReplay(stream_cfg, "cpu", make_replay_env, episodes=(2, 2, 3), bootstrap_samples=200,
                          reset_each_episode=True)
    with recorded_resets(agent) as calls:
        replay(agent, agent.initial_memory(2, "cpu"), ("best2", "best0"), seed=1)
    per_row = torch.stack(calls).sum(0)
    assert (per_row >= 2 + 2 + 3).all(), "every copy of every lifetime starts each of its 7 episodes fresh"
