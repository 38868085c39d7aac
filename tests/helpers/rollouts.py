"""Random-action play used by the env checkpoint tests."""
from __future__ import annotations

import numpy as np


def play(env, steps: int, rng: np.random.Generator) -> list:
    """``steps`` random actions in ``env``; returns every step's result and every reset's, in order."""
    out = []
    for _ in range(steps):
        result = env.step(int(rng.integers(env.action_space.n)))
        out.append(result)
        if result[2] or result[3]:
            out.append(env.reset())
    return out
