"""Associative recall (MQAR-style) as a Gymnasium env: a memory-capacity probe for the same agent.

One episode, one token per step (``obs = {"token": int}``):

1. write: ``num_pairs`` pairs, each shown as two tokens, key then value;
2. gap: ``gap`` filler tokens;
3. query: each stored key once, in random order, as a *query* token; the action on that step is
   the answer, a value index in ``[0, num_values)``; a right answer earns ``1 / num_queries``.

Actions outside the query steps are ignored (reward 0). The episode ends (terminated) after the
last query, with ``info["success"]`` = fraction of queries answered right: an optimal policy gets
1, a random one ``1 / num_values`` on average.

Vocabulary (``vocab_size = 1 + 2 * num_keys + num_values``), fixed by ``num_keys`` and
``num_values`` so that tasks with different pair counts and gaps share one observation and action
space: ``0`` filler, ``1 .. num_keys`` keys (write), ``num_keys + 1 ..`` values,
``num_keys + num_values + 1 ..`` keys (query).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FILLER = 0


class AssociativeRecallEnv(gym.Env):
    """Key/value pairs, a gap, then queries; reward for recalling the stored value.

    ``num_queries`` stored keys are queried (None: every one); a stream sets the parameters from its
    config (``envs.stream_config``: ``RecallTask`` and ``RecallVocab``).
    """

    metadata = {"render_modes": []}

    def __init__(self, num_pairs: int, gap: int, num_keys: int, num_values: int, num_queries: int | None) -> None:
        if num_keys < 1 or num_values < 2:
            raise ValueError(f"recall needs num_keys >= 1 and num_values >= 2, got {num_keys}, {num_values}")
        if not 1 <= num_pairs <= num_keys:
            raise ValueError(
                f"recall num_pairs={num_pairs} must be in [1, num_keys={num_keys}]: raise num_keys or lower num_pairs"
            )
        if gap < 0:
            raise ValueError(f"recall gap must be >= 0, got {gap}")
        num_queries = num_pairs if num_queries is None else int(num_queries)
        if not 1 <= num_queries <= num_pairs:
            raise ValueError(f"recall num_queries={num_queries} must be in [1, num_pairs={num_pairs}]")
        self.num_pairs, self.gap, self.num_queries = int(num_pairs), int(gap), num_queries
        self.num_keys, self.num_values = int(num_keys), int(num_values)
        self.vocab_size = 1 + 2 * self.num_keys + self.num_values
        self.observation_space = spaces.Dict({"token": spaces.Discrete(self.vocab_size)})
        self.action_space = spaces.Discrete(self.num_values)
        self.episode_length = 2 * self.num_pairs + self.gap + self.num_queries
        self._tokens = np.zeros(self.episode_length, dtype=np.int64)
        self._answers = np.full(self.episode_length, -1, dtype=np.int64)  # value index at query steps
        self._t = 0
        self._correct = 0

    # token ids
    def key_token(self, key: int) -> int:
        return 1 + key

    def value_token(self, value: int) -> int:
        return 1 + self.num_keys + value

    def query_token(self, key: int) -> int:
        return 1 + self.num_keys + self.num_values + key

    def token_kind(self, token: int) -> str:
        """``"filler" | "key" | "value" | "query"`` for a token id."""
        if token == FILLER:
            return "filler"
        if token <= self.num_keys:
            return "key"
        if token <= self.num_keys + self.num_values:
            return "value"
        return "query"

    def _obs(self) -> dict[str, int]:
        return {"token": int(self._tokens[self._t])}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        keys = rng.choice(self.num_keys, size=self.num_pairs, replace=False)
        values = rng.integers(self.num_values, size=self.num_pairs)
        tokens, answers = self._tokens, self._answers
        answers[:] = -1
        for i, (k, v) in enumerate(zip(keys, values)):
            tokens[2 * i] = self.key_token(int(k))
            tokens[2 * i + 1] = self.value_token(int(v))
        start = 2 * self.num_pairs
        tokens[start:start + self.gap] = FILLER
        start += self.gap
        order = rng.permutation(self.num_pairs)[: self.num_queries]
        for j, i in enumerate(order):
            tokens[start + j] = self.query_token(int(keys[i]))
            answers[start + j] = int(values[i])
        self._t = 0
        self._correct = 0
        return self._obs(), {}

    def step(self, action: Any):
        if self._t >= self.episode_length:
            raise RuntimeError("recall episode is over: call reset() before step()")
        answer = int(self._answers[self._t])
        reward = 0.0
        if answer >= 0 and int(action) == answer:
            reward = 1.0 / self.num_queries
            self._correct += 1
        self._t += 1
        terminated = self._t >= self.episode_length
        info: dict[str, Any] = {}
        if terminated:
            info["success"] = self._correct / self.num_queries
            obs = {"token": FILLER}
        else:
            obs = self._obs()
        return obs, reward, terminated, False, info
