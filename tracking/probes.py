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
from lifelong.agents.rollout import ActingAgent, Rollout, info_at, reset_where
from lifelong.memory_layers.state import tree_leaves, tree_map

__all__ = ["StreamProber", "probe_task", "clear_at_episode_starts", "episodes_per_lifetime", "repeat_state", "LifetimeSeededVectorEnv"]

EnvFactory = Callable[[Any, str, int], gym.Env]


def episodes_per_lifetime(episodes: int, lifetimes: int) -> int:
    """Episodes each lifetime runs so that a task gets at least ``episodes`` in all (ceil division)."""
    if episodes < 1 or lifetimes < 1:
        raise ValueError(f"probe episodes and lifetimes must be >= 1, got {episodes} and {lifetimes}")
    return -(-int(episodes) // int(lifetimes))


@torch.inference_mode()
def probe_task(
    agent: ActingAgent,
    memory: Memory,
    venv: gym.vector.VectorEnv,
    episodes: int,
    seed: int,
    device: torch.device | str,
    deterministic: bool = False,
    reset_each_episode: bool = False,
) -> dict[str, Any]:
    """Run every lifetime of ``memory`` (batch B = ``venv.num_envs``) for ``episodes`` episodes each.
    ``reset_each_episode``: clear a lifetime's memory on every episode's first token, as the training
    loop does for ``memory.reset_on=episode`` (an agent trained so is probed as it acts).

    Returns ``{"success", "return", "steps", "episodes", "episode_returns" [E], "episode_success" [E],
    "success_matrix" [B][E], "return_matrix" [B][E], "lifetime_steps" [B]}``: the means, the mean over lifetimes of the k-th
    episode, and every episode's result (row b = lifetime b). A lifetime that has run its episodes
    keeps acting (the batch steps together) but nothing more of it is counted.
    """
    rollout = Rollout(venv, agent, device)
    rollout.reset(seed)
    B = rollout.num_envs
    finished = np.zeros(B, dtype=int)
    running = np.zeros(B)
    returns = np.zeros((B, episodes))
    successes = np.zeros((B, episodes))
    lifetime_steps = np.zeros(B, dtype=np.int64)
    while (finished < episodes).any():
        if reset_each_episode:
            memory = clear_at_episode_starts(agent, memory, rollout)
        t = rollout.step(memory, deterministic=deterministic)
        memory = t.memory
        valid = t.tokens.valid.cpu().numpy()
        reward = t.reward.cpu().numpy().astype(float)
        done = (t.terminated | t.truncated).cpu().numpy()
        active = finished < episodes
        lifetime_steps += valid & active
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
        "steps": int(lifetime_steps.sum()),
        "lifetime_steps": lifetime_steps.tolist(),
        "episodes": B * episodes,
        "episode_returns": returns.mean(0).tolist(),
        "episode_success": successes.mean(0).tolist(),
        "success_matrix": successes.tolist(),
        "return_matrix": returns.tolist(),
    }


def clear_at_episode_starts(agent: Any, memory: Memory, rollout: Rollout) -> Memory:
    """``memory`` with the lifetimes whose next token starts an episode cleared (``reset_on=episode``)."""
    return reset_where(agent, memory, rollout.tokens.boundary)


def _split_result(result: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """The result of a batch of ``parts`` x B lifetimes (task-major) as ``parts`` results of B each."""
    steps = np.asarray(result["lifetime_steps"]).reshape(parts, -1).sum(1)
    success = np.asarray(result["success_matrix"]).reshape(parts, -1, len(result["episode_success"]))
    returns = np.asarray(result["return_matrix"]).reshape(success.shape)
    out = []
    for p in range(parts):
        out.append({
            "success": float(success[p].mean()), "return": float(returns[p].mean()), "steps": int(steps[p]),
            "lifetime_steps": np.asarray(result["lifetime_steps"]).reshape(parts, -1)[p].tolist(),
            "episodes": int(success[p].size), "episode_returns": returns[p].mean(0).tolist(),
            "episode_success": success[p].mean(0).tolist(), "success_matrix": success[p].tolist(),
            "return_matrix": returns[p].tolist(),
        })
    return out


def repeat_state(memory: Memory, times: int) -> Memory:
    """``times`` copies of every lifetime's state stacked on the batch dim (copy-major: row
    ``c * B + b`` is lifetime b's c-th copy); shares no storage with ``memory``."""
    return tree_map(lambda x: torch.cat([x.detach()] * times, 0) if isinstance(x, torch.Tensor) else x, memory)


class LifetimeSeededVectorEnv(SyncVectorEnv):
    """``copies x lifetimes`` envs (copy-major; a copy is a task for the prober) whose ``reset(seed=s)``
    seeds copy t's env of lifetime b with ``s + b``, as a vector env of B envs alone would
    (SyncVectorEnv: ``s + t*B + b``)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], lifetimes: int) -> None:
        super().__init__(env_fns, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.lifetimes = int(lifetimes)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i % self.lifetimes for i in range(self.num_envs)]
        return super().reset(seed=seed, options=options)


@dataclass(frozen=True)
class StreamProber:
    """Probes tasks of one stream: ``prober(agent, memory, tasks, seed, episodes) -> {task: result}``.

    ``make_env(stream_cfg, task_name, seed)`` builds one task env (``envs.make.make_task_env`` for
    the configured streams). Every task and every lifetime runs in one batch (one vector env of
    ``len(tasks) x B`` task envs, the memory repeated per task), so a probe costs one acting loop
    however many tasks it covers. ``episodes`` is the number per task summed over the B lifetimes
    (each lifetime runs ``ceil(episodes / B)``); a result is :func:`probe_task`'s dict for the task's
    B lifetimes, its ``steps`` counting that task's real env steps.
    """

    stream_cfg: Any
    device: torch.device | str
    make_env: EnvFactory
    deterministic: bool = False
    reset_each_episode: bool = False  # memory.reset_on=episode: probe as the agent acts (see probe_task)

    def __call__(self, agent: ActingAgent, memory: Memory, tasks: Sequence[str], seed: int,
                 episodes: int) -> dict[str, dict[str, Any]]:
        """Probe every task in ``tasks`` from a copy of ``memory`` (per-layer states ``[B, ...]``);
        ``memory`` and the agent's parameters, training flag and the global torch RNG are left as they were.
        Lifetime b's env of every task is seeded ``seed + b`` (the same episodes whatever the task list)."""
        leaves = tree_leaves(memory)
        if not leaves:
            raise ValueError("memory has no tensors: pass agent.initial_memory(B, device) or the lifetime's memory")
        tasks = list(dict.fromkeys(tasks))
        if not tasks:
            return {}
        batch = int(leaves[0].shape[0])
        per_lifetime = episodes_per_lifetime(episodes, batch)
        was_training = bool(getattr(agent, "training", False))
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        if hasattr(agent, "eval"):
            agent.eval()
        fns = [partial(self.make_env, self.stream_cfg, task, seed + b) for task in tasks for b in range(batch)]
        venv = LifetimeSeededVectorEnv(fns, batch)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                result = probe_task(agent, repeat_state(memory, len(tasks)), venv, per_lifetime,
                                    seed, self.device, self.deterministic, self.reset_each_episode)
        finally:
            venv.close()
            if hasattr(agent, "train"):
                agent.train(was_training)
        return dict(zip(tasks, _split_result(result, len(tasks))))
