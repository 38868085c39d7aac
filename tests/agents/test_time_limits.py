"""``agent.bootstrap_time_limits``: an episode the task's time limit truncates bootstraps (true, the
default) or ends its return (false); one cut by the stream's block end always bootstraps.

MiniGrid's time limit is part of the task (its reward counts the steps against ``max_steps``). With
the truncation bootstrapped from the final observation's value, PPO learnt to reach a goal two steps
away and then unlearnt it, down to zero success, on a 5-step limit; ending the return there delays
that by tens of updates but did not prevent it (README, "Time limits"). A block end of a stream cuts
an episode that would have gone on, so that one bootstraps either way (Pardo et al. 2018, secs. 3
and 4).
"""
from __future__ import annotations

import pytest
import torch
from agent_fakes import compose_config, decay_memory_cfg
from omegaconf import OmegaConf

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.build import build_lifetime, make_learner
from lifelong.agents.policy import ActOutput, LifelongAgent
from lifelong.agents.ppo import PPOConfig
from lifelong.agents.rollout import RolloutCollector
from lifelong.envs.make import make_vector_env

LEFT = 0


def near_goal_stream(max_steps: int, steps_per_task: int = 10**6, cycles: int = 1) -> dict:
    """A 5x5 dark room whose hidden goal is two steps from the start (turn left, forward)."""
    return {"name": "near-goal", "steps_per_task": steps_per_task,
            "tasks": {"west": {"darkroom": {"size": 5, "goal": [1, 2], "agent_dir": 3, "max_steps": max_steps,
                                            "actions": 3}}},
            "schedule": {"order": ["west"], "cycles": cycles}}


class TurningAgent:
    """Turns left forever: every episode runs into the time limit."""

    num_actions = 3

    def initial_memory(self, batch_size, device):
        return ()

    def obs_to_tensor(self, obs, device):
        return {k: torch.as_tensor(v, device=device) for k, v in obs.items()}

    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic=False, generator=None):
        zeros = torch.zeros_like(prev_reward)
        return ActOutput(torch.full_like(prev_action, LEFT), zeros, zeros, ())


@pytest.mark.parametrize("bootstrap", [False, True])
def test_a_time_limit_ends_the_return_unless_bootstrapped_and_a_block_end_always_bootstraps(bootstrap):
    # 3-step limit, 6-token blocks. Block 1: tokens 1-3 an episode the limit truncates, 4 its filler,
    # 5-6 an episode the block's end cuts. Block 2: 7 the cut episode's filler, 8-10 an episode the
    # limit truncates, 11 its filler, 12 an episode of one step, cut by the block's end
    env = make_vector_env(OmegaConf.create(near_goal_stream(max_steps=3, steps_per_task=6, cycles=2)), 1, seed=0)
    collector = RolloutCollector(env, TurningAgent(), "never", bootstrap_time_limits=bootstrap)
    collector.reset(seed=0)
    buf, infos = RolloutBuffer(1, 12), []
    collector.collect(buf, on_step=infos.append)
    by_stream = [bool(i.get("block_truncated", [False])[0]) and bool(i["_block_truncated"][0]) for i in infos]
    ends = [3, 6, 10, 12]
    assert [t + 1 for t in range(12) if buf.done[0, t]] == ends
    assert [t + 1 for t in range(12) if by_stream[t]] == [6, 12]
    ended_by_limit = [] if bootstrap else [3, 10]
    assert [t + 1 for t in range(12) if buf.terminated[0, t]] == ended_by_limit


@pytest.mark.parametrize("setting, expected", [((), True), (("agent.bootstrap_time_limits=false",), False)])
def test_the_run_config_sets_how_the_collector_records_time_limits(tmp_path, setting, expected):
    cfg = compose_config("stream=smoke", "device=cpu", "num_envs=1", "agent.d_model=16", *setting)
    assert build_lifetime(cfg, tmp_path).collector.bootstrap_time_limits is expected


def success_while_learning(bootstrap: bool, iterations: int = 80) -> list[float]:
    """Success rate of each 256-step segment while PPO learns the near goal with a 5-step limit."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    env = make_vector_env(OmegaConf.create(near_goal_stream(max_steps=5)), 8, seed=0)
    agent = LifelongAgent(env.single_observation_space, env.single_action_space, decay_memory_cfg(), 32, 1, 2.0)
    collector = RolloutCollector(env, agent, "never", bootstrap_time_limits=bootstrap)
    collector.reset(seed=0)
    learner = make_learner(agent, PPOConfig.from_cfg({"lr": 1e-3}), False, compile=False, seed=0)
    buf, success = RolloutBuffer(8, 32), []
    for _ in range(iterations):
        collector.collect(buf)
        ends = buf.done & buf.valid
        success.append(float((buf.reward[ends] > 0).float().mean()))
        learner.update(buf)
    return success


def test_bootstrapping_a_short_time_limit_unlearns_a_goal_sooner_than_ending_the_return():
    """Measured (success per 10 segments; the trajectory depends on the CPU's float rounding): on the
    VM of 2026-11-29 afternoon, ending the return 0.19, 0.57, 0.76, 0.96, 0.96, 0.83, 0.99, 1.00 and
    bootstrapping 0.00 from the 31st segment on; on the evening's VM, ending the return 0.19, 0.57,
    0.86, 0.91, 0.99, 0.72, 0.99, 0.62 and bootstrapping at most 0.07 from the 27th. Ending the
    return delays the collapse, it does not prevent it: over 120 segments that agent fell to 0.14 at the 55th, 0.00
    at the 75th, and stayed at or below 0.02 from the 99th on. The untrained agent succeeds in about 0.14."""
    ended, bootstrapped = success_while_learning(bootstrap=False), success_while_learning(bootstrap=True)
    middle = slice(30, 50)
    assert sum(ended[:5]) / 5 < 0.4
    assert sum(ended[middle]) / 20 > 0.8
    assert max(bootstrapped) > 0.4 and sum(bootstrapped[middle]) / 20 < 0.1
