"""The agent acts with Backbone.step and learns with the chunked forward: both must agree, and the
memory must be carried from segment to segment (reset only in the reset ablations)."""
from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from agent_fakes import CueEnv, decay_memory_cfg, make_collector

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.policy import LifelongAgent, gumbel_max_sample
from lifelong.agents.rollout import RolloutCollector
from lifelong.memory_layers.registry import available_mixers
from lifelong.memory_layers.state import tree_leaves

MIXERS = ["decay"] + [m for m in ("gated_deltanet",) if m in available_mixers()]


def assert_trees_close(a, b, **kw) -> None:
    for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True):
        torch.testing.assert_close(x, y, **kw)


def recompute(agent: LifelongAgent, buf: RolloutBuffer, reset_on: str):
    with torch.no_grad():
        return agent.evaluate(buf.obs, buf.prev_action, buf.prev_reward, buf.boundary, buf.memory_start,
                              buf.reset if reset_on != "never" else None)


@pytest.mark.parametrize("reset_on", ["never", "episode"])
@pytest.mark.parametrize("name", MIXERS)
def test_learner_recompute_equals_the_log_probs_and_values_recorded_while_acting(name, reset_on):
    agent, collector = make_collector(name, reset_on)
    buf = RolloutBuffer(3, 11)
    for _segment in range(2):  # the second segment starts from a carried, non-trivial memory
        collector.collect(buf)
        assert (~buf.valid).any() and buf.boundary[:, 1:].any()  # fillers and episode starts inside
        out = recompute(agent, buf, reset_on)
        new_logp = out.log_probs.gather(-1, buf.action[..., None]).squeeze(-1)
        torch.testing.assert_close(new_logp, buf.log_prob, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.value, buf.value, rtol=1e-4, atol=1e-4)
        assert_trees_close(out.memory, collector.memory, rtol=1e-4, atol=1e-4)


def test_memory_at_the_next_segment_start_is_the_acting_memory_after_the_last_one():
    agent, collector = make_collector()
    buf = RolloutBuffer(3, 7)
    collector.collect(buf)
    after_first = [t.clone() for t in tree_leaves(collector.memory)]
    collector.collect(buf)
    for start, end in zip(tree_leaves(buf.memory_start), after_first, strict=True):
        assert torch.equal(start, end)
        assert not start.requires_grad and not start.is_inference()
    assert any(t.abs().sum() > 0 for t in after_first)


def step_until_boundary(collector: RolloutCollector):
    """Step until the next token of lifetime 0 starts an episode; return that token's inputs."""
    for _ in range(20):
        if bool(collector.tokens.boundary[0]):
            return
        collector.step()
    raise AssertionError("no episode boundary within 20 steps")


@pytest.mark.parametrize("reset_on, is_reset", [("never", False), ("episode", True)])
def test_memory_is_reset_at_episode_boundaries_only_in_the_reset_ablation(reset_on, is_reset):
    agent, collector = make_collector(reset_on=reset_on)
    collector.step()
    step_until_boundary(collector)
    tokens = collector.tokens
    inputs = (tokens.obs, tokens.prev_action, tokens.prev_reward, tokens.boundary)
    fresh = agent.act(*inputs, agent.initial_memory(3, "cpu"), deterministic=True).memory
    collector.step()
    S_after, S_fresh = tree_leaves(collector.memory)[0][0], tree_leaves(fresh)[0][0]
    assert torch.allclose(S_after, S_fresh, atol=1e-6) == is_reset


def test_boundary_tokens_carry_no_previous_action_or_reward_and_fillers_are_invalid():
    agent, collector = make_collector()
    buf = RolloutBuffer(3, 12)
    collector.collect(buf)
    # CueEnv(delay=1): 3 steps per episode, then the filler: tokens 0-2 valid, 3 filler, 4 boundary ...
    assert buf.boundary[:, 0].all() and buf.boundary[:, 4].all() and buf.boundary[:, 8].all()
    assert (buf.prev_action[buf.boundary] == agent.num_actions).all()
    assert (buf.prev_reward[buf.boundary] == 0).all()
    assert (~buf.valid[:, 3]).all() and (~buf.valid[:, 7]).all() and buf.valid[:, :3].all()
    assert buf.done[:, 2].all() and buf.terminated[:, 2].all()
    # the filler token sees the episode's final reward as its previous reward
    torch.testing.assert_close(buf.prev_reward[:, 3], buf.reward[:, 2])


def test_gumbel_max_sampling_follows_the_categorical_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3])
    samples = gumbel_max_sample(probs.log().expand(20000, 3), torch.rand(20000, 3))
    freq = torch.bincount(samples, minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_the_agent_needs_a_discrete_action_space():
    env = CueEnv()
    with pytest.raises(ValueError, match="Discrete"):
        LifelongAgent(env.observation_space, gym.spaces.Box(0, 1, (2,)), decay_memory_cfg(), 16, 1, 2.0)
