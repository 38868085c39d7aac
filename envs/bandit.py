"""A Bernoulli multi-armed bandit as a Gymnasium env with a token observation.

An episode is ``pulls`` pulls (default 1: every pull is its own episode, so all the exploration that
pays off happens across episodes, in the agent's never-reset memory). A pull of arm ``a`` pays 1 with
probability ``probs[a]``, else 0. The episode ends (terminated) after the last pull with
``info["success"]`` = the fraction of its pulls that chose the best arm (``argmax probs``, unique):
an oracle gets 1, any policy that cannot tell the tasks apart ``1 / arms`` averaged over tasks whose
best arms cover every arm once.

Observation: ``{"token": t}``, ``t`` the number of pulls already made in the episode (0 on reset and
after the last pull), in ``Discrete(pulls)``: the token layout of the recall tasks, encoded by the
agent's token encoder. Nothing in it depends on the arm probabilities; what an agent learns about
them comes only from the rewards it has seen. Rewards are drawn from the env's own RNG (``np_random``,
seeded by the stream), so a restored env continues identically.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def check_probs(probs: tuple[float, ...]) -> int:
    """Raise ``ValueError`` (one line) unless ``probs`` are >= 2 probabilities with one largest; return its arm."""
    if len(probs) < 2:
        raise ValueError(f"a bandit needs at least 2 arms, got probs {list(probs)}")
    if not all(0.0 <= p <= 1.0 for p in probs):
        raise ValueError(f"arm probabilities must be in [0, 1], got {list(probs)}")
    best = max(probs)
    if sum(p == best for p in probs) != 1:
        raise ValueError(f"one arm must have the largest probability (the best arm), got {list(probs)}")
    return int(probs.index(best))


def arm_probs(arms: int, best_arm: int, p_best: float, p_other: float) -> tuple[float, ...]:
    """``arms`` probabilities: ``p_best`` for ``best_arm``, ``p_other`` for the others."""
    if arms < 2:
        raise ValueError(f"arms must be >= 2, got {arms}")
    if not 0 <= best_arm < arms:
        raise ValueError(f"best_arm must be in [0, arms={arms}), got {best_arm}")
    if not p_best > p_other:
        raise ValueError(f"p_best must be larger than p_other, got p_best={p_best}, p_other={p_other}")
    probs = tuple(float(p_best) if a == best_arm else float(p_other) for a in range(arms))
    check_probs(probs)
    return probs


class BernoulliBanditEnv(gym.Env):
    """``len(probs)`` Bernoulli arms, ``pulls`` pulls an episode (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, probs: tuple[float, ...], pulls: int = 1) -> None:
        probs = tuple(float(p) for p in probs)
        self.best_arm = check_probs(probs)
        if int(pulls) < 1:
            raise ValueError(f"pulls must be >= 1, got {pulls}")
        self.probs = np.asarray(probs, dtype=np.float64)
        self.pulls = int(pulls)
        self.observation_space = spaces.Dict({"token": spaces.Discrete(self.pulls)})
        self.action_space = spaces.Discrete(len(probs))
        self._t = 0
        self._best_pulls = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._best_pulls = 0
        return {"token": 0}, {}

    def step(self, action: Any):
        if self._t >= self.pulls:
            raise RuntimeError("bandit episode is over: call reset() before step()")
        arm = int(action)
        reward = float(self.np_random.random() < self.probs[arm])
        self._best_pulls += int(arm == self.best_arm)
        self._t += 1
        terminated = self._t >= self.pulls
        info: dict[str, Any] = {}
        if terminated:
            info["success"] = self._best_pulls / self.pulls
        return {"token": 0 if terminated else self._t}, reward, terminated, False, info
