"""In-context versus in-weight forgetting: the switch-replay probe (issue #14).

With learning frozen, every lifetime replays a task switch through a *copy* of its memory: task A for
``episodes[0]`` episodes, then B for ``episodes[1]``, then A again for ``episodes[2]``. The same
replay runs a second time with the memory reset at the return to A. Both run in one batch of 2B
lifetimes (the memory repeated; the second half is reset on its switch token).

- **carried**: how A's success recovers after the switch with the memory the lifetime built up.
  What in-context learning kept, plus what the weights know.
- **reset**: the same with a fresh memory at the return. Only the weights remain (in-weight).

The difference between the two curves is what the memory carries across the switch. When the
weights alone solve A, the two curves agree. A recovery is the first episode k (1-based) after the
return whose success, averaged over lifetimes, reaches ``recovery_level`` times A's success over the
replay's first visit (NaN when A was never solved there, or when it is not reached within
``episodes[2]``).

The probe leaves the lifetime's memory, the weights, the training flag and the global torch RNG as
they were (it samples from a forked RNG), like every probe.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lifelong.agents.policy import Memory
from lifelong.agents.rollout import Rollout, info_at
from lifelong.memory_layers.state import tree_leaves
from lifelong.tracking.confidence import entry_ci
from lifelong.tracking.probes import LifetimeSeededVectorEnv, clear_at_episode_starts, repeat_state

__all__ = ["SwitchReplay", "recovery_episode"]

ReplayEnvFactory = Callable[[Any, Sequence[tuple[str, int]], int], gym.Env]


def recovery_episode(success_after: Sequence[float], before: float, level: float) -> float:
    """First k (1-based) with ``success_after[k-1] >= level * before``; NaN if none or ``before`` is 0/NaN."""
    if not math.isfinite(before) or before <= 0:
        return math.nan
    for k, value in enumerate(success_after, start=1):
        if value >= level * before:
            return float(k)
    return math.nan


@dataclass(frozen=True)
class SwitchReplay:
    """``replay(agent, memory, tasks=(A, B), seed) -> dict``; see the module docstring.

    ``make_env(stream_cfg, blocks, seed)`` builds one lifetime's replay stream
    (``envs.make.make_replay_env``)."""

    stream_cfg: Any
    device: torch.device | str
    make_env: ReplayEnvFactory
    episodes: tuple[int, int, int] = (4, 4, 8)
    recovery_level: float = 0.9
    bootstrap_samples: int = 1000
    reset_each_episode: bool = False  # memory.reset_on=episode: both halves clear the memory every episode

    def __post_init__(self) -> None:
        if len(self.episodes) != 3 or min(self.episodes) < 1:
            raise ValueError(f"tracker.replay_episodes must be three counts >= 1 (A, B, A again), got {list(self.episodes)}")

    @torch.inference_mode()
    def __call__(self, agent: Any, memory: Memory, tasks: tuple[str, str], seed: int) -> dict[str, Any]:
        """Returns ``{"tasks": [A, B], "episodes": [nA, nB, nA2], "before": A's success on its first
        visit, "carried"/"reset": {"success": [k-th episode after the return, mean over lifetimes],
        "low"/"high": its 95% CI, "recovery_episodes", "success_matrix" [B][nA2]}}``."""
        leaves = tree_leaves(memory)
        if not leaves:
            raise ValueError("memory has no tensors: pass the lifetime's memory")
        a, b = tasks
        n_a, n_b, n_back = (int(n) for n in self.episodes)
        batch = int(leaves[0].shape[0])
        blocks = [(a, n_a), (b, n_b), (a, n_back)]
        fns = [partial(self.make_env, self.stream_cfg, blocks, seed + i % batch) for i in range(2 * batch)]
        venv = LifetimeSeededVectorEnv(fns, batch)  # lifetime b's two copies play the same episodes
        was_training = bool(getattr(agent, "training", False))
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        agent.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                success = self._run(agent, repeat_state(memory, 2), venv, seed, batch, n_a + n_b + n_back)
        finally:
            venv.close()
            agent.train(was_training)
        before = float(success[:batch, :n_a].mean())  # the halves differ only by their sampled actions until the return
        out: dict[str, Any] = {"tasks": [a, b], "episodes": [n_a, n_b, n_back], "before": before,
                               "recovery_level": self.recovery_level}
        rng = np.random.default_rng(seed)
        for name, rows in (("carried", success[:batch]), ("reset", success[batch:])):
            after = rows[:, n_a + n_b:]
            lows, highs = zip(*(entry_ci(after[:, [k]], n_boot=self.bootstrap_samples, rng=rng) for k in range(n_back)))
            mean = after.mean(0)
            out[name] = {"success": mean.tolist(), "low": list(lows), "high": list(highs),
                         "recovery_episodes": recovery_episode(mean, before, self.recovery_level),
                         "success_matrix": after.tolist()}
        return out

    def _run(self, agent: Any, memory: Memory, venv: gym.vector.VectorEnv, seed: int, batch: int,
             episodes: int) -> np.ndarray:
        """Act until every lifetime ran ``episodes``; success ``[2B, episodes]``. The second half's memory
        is reset on the token that starts its third block (the return to A)."""
        rollout = Rollout(venv, agent, self.device)
        rollout.reset(seed)
        total = 2 * batch
        finished = np.zeros(total, dtype=int)
        success = np.zeros((total, episodes))
        running = np.zeros(total)
        while (finished < episodes).any():
            if self.reset_each_episode:
                memory = clear_at_episode_starts(agent, memory, rollout)
            t = rollout.step(memory)
            memory = t.memory
            valid = t.tokens.valid.cpu().numpy()
            reward = t.reward.cpu().numpy().astype(float)
            done = (t.terminated | t.truncated).cpu().numpy()
            running += np.where(valid, reward, 0.0)
            for i in np.flatnonzero(done & valid & (finished < episodes)):
                success[i, finished[i]] = float(info_at(t.info, "episode_success", i, running[i] > 0))
                finished[i] += 1
            running[done] = 0.0
            returning = np.array([i >= batch and bool(info_at(t.info, "task_switch", i, False))
                                  and int(info_at(t.info, "block_index", i, 0)) == 2 for i in range(total)])
            if returning.any():
                memory = agent.reset_memory(memory, torch.as_tensor(returning, device=self.device))
        return success
