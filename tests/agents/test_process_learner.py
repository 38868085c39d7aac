"""``agent.overlap=process``: PPO in a second process, one update behind the acting.

* it gives the very lifetime the thread learner (``agent.overlap=thread``) gives for a seed: the same
  weights bit for bit and the same statistics, one update late;
* it resumes from its state_dict identically, and its checkpoint has the thread learner's keys;
* the loop's learning rate (the rollback lowers it) reaches the learner process;
* a non-finite loss in the learner process is raised in the acting one, with its hint;
* a learner process that died, a GPU agent and an unknown ``agent.overlap`` are one clear error each.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from agent_fakes import CueEnv, cue_run, memory_cfg

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.build import make_learner
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import NonFiniteError, OverlappedLearner, PPOConfig
from lifelong.agents.process_learner import ProcessLearner
from lifelong.agents.rollout import RolloutCollector


def cue_setup(seed: int = 0):
    torch.manual_seed(seed)
    env = gym.vector.SyncVectorEnv([lambda: CueEnv(delay=1) for _ in range(4)])
    agent = LifelongAgent(env.single_observation_space, env.single_action_space, memory_cfg("gated_deltanet"),
                          16, 1, 2.0)
    collector = RolloutCollector(env, agent, reset_on="never")
    collector.reset(seed)
    return agent, collector, RolloutBuffer(4, 8)


def test_the_process_learner_gives_the_thread_learners_lifetime_bit_for_bit():
    by_process, process_stats = cue_run(overlap="process", segments=5)
    by_thread, thread_stats = cue_run(overlap="thread", segments=5)
    assert all(torch.equal(a, b) for a, b in zip(by_process, by_thread, strict=True))
    assert process_stats == thread_stats
    assert process_stats[0] == {} and "losses/policy" in process_stats[1]  # one update late


def test_the_process_learner_resumes_from_its_state_dict_identically():
    straight, _ = cue_run(overlap="process", segments=5)
    resumed, _ = cue_run(overlap="process", segments=5, resume_at=3)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def test_a_checkpoint_of_either_overlapped_learner_loads_into_the_other():
    agent, collector, buf = cue_setup()
    cfg = PPOConfig.from_cfg({"lr": 3e-3, "update_epochs": 2})
    learner = ProcessLearner(agent, cfg, compile=False, seed=0)
    try:
        for _ in range(2):
            collector.collect(buf)
            learner.update(buf)
        sd = learner.state_dict()
    finally:
        learner.close()
    thread = OverlappedLearner(agent, cfg, compile=False, seed=1)
    assert set(sd) == set(thread.state_dict())
    thread.load_state_dict(sd)
    for name, value in thread.learn_agent.state_dict().items():
        assert torch.equal(value, sd["learn_agent"][name])
    assert thread.inner.generator.get_state().equal(sd["generator"])


def test_the_learning_rate_the_loop_sets_reaches_the_learner_process():
    agent, collector, buf = cue_setup()
    learner = ProcessLearner(agent, PPOConfig.from_cfg({"lr": 3e-3, "update_epochs": 1}), compile=False, seed=0)
    try:
        assert learner.optimizer.param_groups[0]["lr"] == 3e-3
        for group in learner.optimizer.param_groups:  # what the divergence guard's rollback does
            group["lr"] *= 0.5
        collector.collect(buf)
        learner.update(buf)
        sd = learner.state_dict()
        assert sd["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.5e-3)
    finally:
        learner.close()


def test_a_non_finite_loss_in_the_learner_process_is_raised_here_with_its_hint():
    agent, collector, buf = cue_setup()
    learner = ProcessLearner(agent, PPOConfig.from_cfg({"update_epochs": 1}), compile=False, seed=0)
    try:
        collector.collect(buf)
        buf.reward[0, 0] = float("nan")
        learner.update(buf)  # the error comes with the next call that waits for this update
        with pytest.raises(NonFiniteError, match="agent.lr"):
            learner.finish()
        collector.collect(buf)  # the process lives on: a finite segment learns again
        learner.update(buf)
        learner.finish()
        assert all(torch.isfinite(p).all() for p in agent.parameters())
    finally:
        learner.close()


def test_a_learner_process_that_died_is_a_clear_error():
    agent, collector, buf = cue_setup()
    learner = ProcessLearner(agent, PPOConfig.from_cfg({"update_epochs": 1}), compile=False, seed=0)
    learner._process.kill()
    learner._process.join()
    collector.collect(buf)
    with pytest.raises(RuntimeError, match="learner process ended unexpectedly.*agent.overlap=thread"):
        learner.update(buf)
        learner.finish()
    learner.close()  # closing a dead learner is quiet


def test_a_process_learner_is_cpu_only_and_overlap_takes_four_values():
    agent, _, _ = cue_setup()
    cfg = PPOConfig.from_cfg({})
    with pytest.raises(ValueError, match="agent.overlap=thread"):
        ProcessLearner(agent.to("meta"), cfg, compile=False, seed=0)
    with pytest.raises(ValueError, match="choose one of false, true .*process"):
        make_learner(agent, cfg, "processes", compile=False, seed=0)


def test_the_process_learner_returns_the_features_the_tracker_asks_for():
    agent, collector, buf = cue_setup()
    learner = ProcessLearner(agent, PPOConfig.from_cfg({"update_epochs": 1}), compile=False, seed=0)
    try:
        collector.collect(buf)
        learner.update(buf, features=True)
        stats = learner.finish()
        assert set(stats["features"]) == {"layer0"}
        assert stats["features"]["layer0"].shape[1] == 32 and np.isfinite(stats["features"]["layer0"].numpy()).all()
    finally:
        learner.close()
