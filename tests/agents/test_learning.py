"""The learner must actually learn: a cue-recall task that a memoryless policy solves half the time.

The cue is shown on an episode's first token and must be recalled two blank tokens later, so
solving it needs the memory (within the episode) and a working PPO update through the chunked
backbone. A sabotaged learner (lr = 0) stays at chance. The lagged learner (``agent.overlap``: acting
one update behind, with the decoupled objective) learns it too.
"""
from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from agent_fakes import CueEnv, decay_memory_cfg

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.build import make_learner
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import PPOConfig
from lifelong.agents.rollout import RolloutCollector

NUM_ENVS, SEGMENT = 8, 32


def train_on_cue_task(lr: float, iterations: int, overlap: bool | str = False) -> list[float]:
    """Success rate (query answered right) of each segment while training with the ``overlap`` learner."""
    torch.manual_seed(0)
    env = gym.vector.SyncVectorEnv([lambda: CueEnv(delay=2) for _ in range(NUM_ENVS)])
    agent = LifelongAgent(env.single_observation_space, env.single_action_space, decay_memory_cfg(), 32, 1, 2.0)
    collector = RolloutCollector(env, agent, reset_on="never")
    collector.reset(seed=0)
    learner = make_learner(agent, PPOConfig.from_cfg({"lr": lr, "update_epochs": 4}), overlap, compile=False, seed=0)
    buf = RolloutBuffer(NUM_ENVS, SEGMENT)
    success = []
    for _ in range(iterations):
        collector.collect(buf)
        success.append(float(buf.reward[buf.done].mean()))
        learner.update(buf)
    if overlap:
        learner.finish()
    return success


@pytest.mark.parametrize("overlap", [False, "thread"])
def test_ppo_solves_the_cue_recall_task(overlap):
    success = train_on_cue_task(lr=3e-3, iterations=60, overlap=overlap)
    start, end = sum(success[:5]) / 5, sum(success[-5:]) / 5
    assert start < 0.7, f"the untrained agent should be near chance, got {start:.2f}"
    assert end > 0.9, f"PPO did not learn the cue task: success {start:.2f} -> {end:.2f}"


def test_a_sabotaged_learner_stays_at_chance():
    success = train_on_cue_task(lr=0.0, iterations=30)
    assert sum(success[-5:]) / 5 < 0.7
