"""The one acting loop: its token rules, and training and probes acting through it alike."""
from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import torch
from agent_fakes import CueEnv

from lifelong.agents.policy import ActOutput
from lifelong.agents.rollout import Rollout, RolloutCollector
from lifelong.tracking.probes import probe_task


class Counter(NamedTuple):
    n: torch.Tensor  # [B] tokens seen


class ScriptedAgent:
    """Acts 0, 1, 0, 1, ... (the same in every lifetime) and records lifetime 0's token inputs
    ``(obs token, prev_action, prev_reward, boundary)``."""

    num_actions = 2

    def __init__(self) -> None:
        self.tokens: list[tuple[int, int, float, bool]] = []

    def initial_memory(self, batch_size: int, device) -> tuple[Counter]:
        return (Counter(torch.zeros(batch_size, device=device)),)

    def obs_to_tensor(self, obs, device) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=device) for k, v in obs.items()}

    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic=False, generator=None):
        self.tokens.append((int(obs["token"][0]), int(prev_action[0]), float(prev_reward[0]), bool(boundary[0])))
        (counter,) = memory
        action = torch.full_like(prev_action, len(self.tokens) % 2 == 0)
        zeros = torch.zeros_like(prev_reward)
        return ActOutput(action, zeros, zeros, (Counter(counter.n + 1),))


def cue_envs(num_envs: int = 2) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([lambda: CueEnv(delay=1) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def test_an_episode_starts_with_no_previous_action_or_reward_and_its_end_is_followed_by_a_filler():
    agent = ScriptedAgent()
    rollout = Rollout(cue_envs(), agent, "cpu")
    rollout.reset(seed=0)
    memory = agent.initial_memory(2, "cpu")
    steps = []
    for _ in range(5):  # CueEnv(delay=1): cue, blank, query (the episode ends), filler, next cue
        t = rollout.step(memory)
        memory = t.memory
        steps.append(t)
    n = agent.num_actions
    tokens = [(int(t.tokens.prev_action[0]), float(t.tokens.prev_reward[0]), bool(t.tokens.boundary[0]),
               bool(t.tokens.valid[0])) for t in steps]
    rewarded = float(steps[2].reward[0])
    assert tokens == [(n, 0.0, True, True), (0, 0.0, False, True), (1, 0.0, False, True),
                      (0, rewarded, False, False), (n, 0.0, True, True)]
    assert bool(steps[2].terminated[0]) and not bool(steps[3].terminated[0])
    assert [int(m) for m in memory[0].n] == [5, 5]


def test_the_probe_and_the_collector_feed_the_agent_the_same_tokens():
    seed = 4
    probing = ScriptedAgent()
    probe_task(probing, probing.initial_memory(2, "cpu"), cue_envs(), episodes=3, seed=seed, device="cpu")
    training = ScriptedAgent()
    collector = RolloutCollector(cue_envs(), training, reset_on="never")
    collector.reset(seed)
    for _ in range(len(probing.tokens)):
        collector.step()
    assert len(probing.tokens) == 3 * 4 - 1  # 3 episodes of 3 steps, a filler between two
    assert training.tokens == probing.tokens
    assert [t[3] for t in training.tokens].count(True) == 3  # every episode's first token, fillers between
