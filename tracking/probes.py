"""Periodic probes (DESIGN.md section 7): evaluate the agent on a list of tasks, learning off, on a
*copy* of the lifetime memory, so the lifetime context is never contaminated.

Each of the B lifetimes in ``memory`` runs on its own copy of its state against its own env of the
task (a NEXT_STEP-autoreset ``SyncVectorEnv`` seeded ``seed + b``), for ``episodes`` episodes per
task, starting from the lifetime's memory every time (tasks do not see each other). The token
conventions are those of the training loop: the first token of an episode has ``prev_action = n``
(none), ``prev_reward = 0`` and ``boundary = True``; the token after an episode's last step is the
filler on which the vector env resets. Probe env steps (real transitions only) are counted and
returned apart from the lifetime's steps. Sampling uses a forked torch RNG seeded ``seed``, so a
probe neither consumes nor perturbs the lifetime's random stream.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from lifelong.memory_layers.base import clone_state, tree_leaves

__all__ = ["run_probe", "probe_task"]

EnvFactory = Callable[[Any, str, int], gym.Env]


def _default_env_factory() -> EnvFactory:
    from lifelong.envs.make import make_task_env

    return make_task_env


def _info_at(info: dict, key: str, i: int) -> Any:
    """Entry ``i`` of a vector-env info key, or None where the env did not report it."""
    if key not in info:
        return None
    mask = info.get(f"_{key}")
    if mask is not None and not bool(mask[i]):
        return None
    return info[key][i]


@torch.inference_mode()
def probe_task(
    agent: Any,
    memory: tuple,
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
    B = venv.num_envs
    num_actions = getattr(agent, "num_actions", None)
    if num_actions is None:
        num_actions = int(venv.single_action_space.n)
    obs, _ = venv.reset(seed=seed)
    prev_action = torch.full((B,), num_actions, dtype=torch.long, device=device)
    prev_reward = torch.zeros(B, device=device)
    boundary = torch.ones(B, dtype=torch.bool, device=device)
    valid = np.ones(B, dtype=bool)
    finished = np.zeros(B, dtype=int)
    running = np.zeros(B)
    returns = np.zeros((B, episodes))
    successes = np.zeros((B, episodes))
    steps = 0
    while (finished < episodes).any():
        out = agent.act(agent.obs_to_tensor(obs, device), prev_action, prev_reward, boundary, memory,
                        deterministic=deterministic)
        memory = out.memory
        action = out.action
        obs, reward, terminated, truncated, info = venv.step(action.cpu().numpy())
        reward = np.asarray(reward, dtype=float)
        active = finished < episodes
        steps += int((valid & active).sum())
        running += np.where(valid, reward, 0.0)
        done = np.asarray(terminated) | np.asarray(truncated)
        for i in np.flatnonzero(done & valid & active):
            ep_return = _info_at(info, "episode_return", i)
            ep_return = float(running[i]) if ep_return is None else float(ep_return)
            ep_success = _info_at(info, "episode_success", i)
            ep_success = float(ep_return > 0) if ep_success is None else float(ep_success)
            returns[i, finished[i]] = ep_return
            successes[i, finished[i]] = ep_success
            finished[i] += 1
        running[done] = 0.0
        first = torch.as_tensor(~valid, device=device)
        reward_t = torch.as_tensor(reward, dtype=torch.float32, device=device)
        prev_action = torch.where(first, torch.full_like(action, num_actions), action)
        prev_reward = torch.where(first, torch.zeros_like(reward_t), reward_t)
        boundary = first
        valid = ~done
    return {
        "success": float(successes.mean()),
        "return": float(returns.mean()),
        "steps": steps,
        "episodes": B * episodes,
        "episode_returns": returns.mean(0).tolist(),
        "episode_success": successes.mean(0).tolist(),
    }


def run_probe(
    agent: Any,
    memory: tuple,
    stream_cfg: Any,
    task_names: Sequence[str],
    episodes: int,
    seed: int,
    device: torch.device | str,
    *,
    deterministic: bool = False,
    make_env: EnvFactory | None = None,
) -> dict[str, dict[str, Any]]:
    """Probe every task in ``task_names`` from a copy of ``memory`` (per-layer states ``[B, ...]``).

    ``make_env(stream_cfg, task_name, seed)`` builds one task env (default
    ``envs.make.make_task_env``). Returns ``{task: probe_task(...) dict}``; ``memory`` and the
    agent's parameters, training flag and the global torch RNG are left as they were.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1 (tracker.probe_episodes), got {episodes}")
    leaves = tree_leaves(memory)
    if not leaves:
        raise ValueError("memory has no tensors: pass agent.initial_memory(B, device) or the lifetime's memory")
    batch = int(leaves[0].shape[0])
    make_env = make_env or _default_env_factory()
    was_training = bool(getattr(agent, "training", False))
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    results: dict[str, dict[str, Any]] = {}
    if hasattr(agent, "eval"):
        agent.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for task in task_names:
                fns = [partial(make_env, stream_cfg, task, seed + b) for b in range(batch)]
                venv = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
                try:
                    results[task] = probe_task(agent, clone_state(memory), venv, episodes, seed, device, deterministic)
                finally:
                    venv.close()
    finally:
        if hasattr(agent, "train"):
            agent.train(was_training)
    return results
