"""Periodic probes (DESIGN.md section 7): evaluate the agent on a list of tasks, learning off, on a
*copy* of the lifetime memory, so the lifetime context is never contaminated.

Each of the B lifetimes in ``memory`` runs on its own copy of its state against its own env of the
task (a NEXT_STEP-autoreset ``SyncVectorEnv``, sub-env b seeded ``seed + b``), for ``episodes``
episodes per task, starting from the lifetime's memory every time (tasks do not see each other).
The probe acts through the training loop's :class:`~lifelong.agents.rollout.Rollout`, so its tokens
follow the same rules (previous action / reward, boundary flag, NEXT_STEP filler). Probe env steps
(real transitions only) are counted and returned apart from the lifetime's steps. Sampling uses a
forked torch RNG seeded ``seed``, so a probe neither consumes nor perturbs the lifetime's random stream.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from lifelong.agents.policy import Memory
from lifelong.agents.rollout import ActingAgent, Rollout, info_at
from lifelong.memory_layers.state import clone_state, tree_leaves

__all__ = ["StreamProber", "probe_task"]

EnvFactory = Callable[[Any, str, int], gym.Env]


@torch.inference_mode()
def probe_task(
    agent: ActingAgent,
    memory: Memory,
    venv: gym.vector.VectorEnv,
    episodes: int,
    seed: int,
    device: torch.device | str,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Run every lifetime of ``memory`` (batch B = ``venv.num_envs``) for ``episodes`` episodes.

    Returns ``{"success", "return", "steps", "episodes", "episode_returns" [k], "episode_success" [k]}``
    where the lists hold the mean over lifetimes of the k-th episode (k = 1..episodes).
    """
    rollout = Rollout(venv, agent, device)
    rollout.reset(seed)
    B = rollout.num_envs
    finished = np.zeros(B, dtype=int)
    running = np.zeros(B)
    returns = np.zeros((B, episodes))
    successes = np.zeros((B, episodes))
    steps = 0
    while (finished < episodes).any():
        t = rollout.step(memory, deterministic=deterministic)
        memory = t.memory
        valid = t.tokens.valid.cpu().numpy()
        reward = t.reward.cpu().numpy().astype(float)
        done = (t.terminated | t.truncated).cpu().numpy()
        active = finished < episodes
        steps += int((valid & active).sum())
        running += np.where(valid, reward, 0.0)
        for i in np.flatnonzero(done & valid & active):
            ep_return = float(info_at(t.info, "episode_return", i, running[i]))
            ep_success = float(info_at(t.info, "episode_success", i, ep_return > 0))
            returns[i, finished[i]] = ep_return
            successes[i, finished[i]] = ep_success
            finished[i] += 1
        running[done] = 0.0
    return {
        "success": float(successes.mean()),
        "return": float(returns.mean()),
        "steps": steps,
        "episodes": B * episodes,
        "episode_returns": returns.mean(0).tolist(),
        "episode_success": successes.mean(0).tolist(),
    }


@dataclass(frozen=True)
class StreamProber:
    """Probes tasks of one stream: ``prober(agent, memory, tasks, seed) -> {task: probe_task dict}``.

    ``make_env(stream_cfg, task_name, seed)`` builds one task env (``envs.make.make_task_env`` for
    the configured streams); ``episodes`` per task per lifetime (``tracker.probe_episodes``).
    """

    stream_cfg: Any
    episodes: int
    device: torch.device | str
    make_env: EnvFactory
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"tracker.probe_episodes must be >= 1, got {self.episodes}")

    def __call__(self, agent: ActingAgent, memory: Memory, tasks: Sequence[str],
                 seed: int) -> dict[str, dict[str, Any]]:
        """Probe every task in ``tasks`` from a copy of ``memory`` (per-layer states ``[B, ...]``);
        ``memory`` and the agent's parameters, training flag and the global torch RNG are left as they were."""
        leaves = tree_leaves(memory)
        if not leaves:
            raise ValueError("memory has no tensors: pass agent.initial_memory(B, device) or the lifetime's memory")
        batch = int(leaves[0].shape[0])
        was_training = bool(getattr(agent, "training", False))
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        results: dict[str, dict[str, Any]] = {}
        if hasattr(agent, "eval"):
            agent.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for task in tasks:
                    fns = [partial(self.make_env, self.stream_cfg, task, seed + b) for b in range(batch)]
                    venv = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
                    try:
                        results[task] = probe_task(agent, clone_state(memory), venv, self.episodes, seed,
                                                   self.device, self.deterministic)
                    finally:
                        venv.close()
        finally:
            if hasattr(agent, "train"):
                agent.train(was_training)
        return results
