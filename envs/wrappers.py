"""Shift wrappers: each turns one task into a shifted variant of it, seeded and reproducible.

Every wrapper is an ordinary Gymnasium wrapper usable on any MiniGrid task (and, where the
spaces allow, on any env). The shift kinds and their config keys:

| ``type``                   | wrapper                    | parameters                         |
|----------------------------|----------------------------|------------------------------------|
| ``action_permutation``     | :class:`ActionPermutation`  | ``seed`` (or an explicit ``permutation``) |
| ``observation_permutation``| :class:`ObservationPermutation` | ``seed`` (or ``permutation`` of the 49 cells) |
| ``reward_remap``           | :class:`RewardRemap`        | ``scale`` (sign included), ``shift`` |
| ``dynamics``               | :class:`StochasticActions`  | ``prob``: chance an action is replaced by a random one |

Permutations are fixed by their own ``seed`` (the same in every lifetime: the permutation *is* the
task). The dynamics noise is drawn from a generator re-seeded from the episode seed passed to
``reset(seed=...)``, so each lifetime has its own noise and a restored stream replays it.
"""
from __future__ import annotations

from typing import Any, Callable, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SHIFT_TYPES = ("action_permutation", "observation_permutation", "reward_remap", "dynamics")


class MiniGridObservation(gym.ObservationWrapper):
    """Drop MiniGrid's mission string: obs becomes ``{"image": uint8 [7, 7, 3], "direction": int}``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "image" not in space.spaces or "direction" not in space.spaces:
            raise ValueError(
                f"MiniGridObservation needs a MiniGrid Dict(image, direction, ...) observation, got {space}: "
                "use it on MiniGrid-* envs only"
            )
        self.observation_space = spaces.Dict({"image": space["image"], "direction": space["direction"]})

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {"image": observation["image"], "direction": observation["direction"]}


class EpisodeSuccess(gym.Wrapper):
    """Add ``info["success"]`` (float in [0, 1]) on the step that ends an episode.

    MiniGrid's success is a positive task reward (return > 0); it is measured on the raw reward,
    below any reward remap, so a sign-flipped task still reports whether the goal was reached.
    An env that already sets ``info["success"]`` (the recall env) is left alone.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._return = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._return = 0.0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if (terminated or truncated) and "success" not in info:
            info["success"] = float(self._return > 0)
        return obs, reward, terminated, truncated, info


def _permutation(n: int, seed: int | None, permutation: Any, what: str) -> np.ndarray:
    """A permutation of ``range(n)``: the explicit one if given, else a seeded random one."""
    if permutation is not None:
        perm = np.asarray(list(permutation), dtype=np.int64)
        if perm.shape != (n,) or sorted(perm.tolist()) != list(range(n)):
            raise ValueError(f"{what} permutation must list each of 0..{n - 1} exactly once, got {list(perm)}")
        return perm
    if seed is None:
        raise ValueError(f"{what} permutation needs a `seed` (or an explicit `permutation`)")
    return np.random.default_rng(int(seed)).permutation(n)


class ActionPermutation(gym.ActionWrapper):
    """Action ``a`` taken by the agent reaches the task as ``permutation[a]`` (Discrete spaces)."""

    def __init__(self, env: gym.Env, seed: int | None = None, permutation: Any = None) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"action_permutation needs a Discrete action space, got {env.action_space}")
        self.permutation = _permutation(int(env.action_space.n), seed, permutation, "action")
        self._table = [int(a) for a in self.permutation]  # python ints: the fastest lookup per step

    def action(self, action: Any) -> int:
        return self._table[int(action)]


class ObservationPermutation(gym.ObservationWrapper):
    """A fixed permutation of the cells of the egocentric view: ``image [H, W, C]``, cells H*W.

    Output cell ``i`` (row-major) shows input cell ``permutation[i]``; channels move together.
    """

    def __init__(self, env: gym.Env, seed: int | None = None, permutation: Any = None) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "image" not in space.spaces or len(space["image"].shape) != 3:
            raise ValueError(
                f"observation_permutation needs a Dict observation with an `image` [H, W, C], got {space}"
            )
        h, w, c = space["image"].shape
        self._shape = (h, w, c)
        self.permutation = _permutation(h * w, seed, permutation, "observation")

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        h, w, c = self._shape
        image = observation["image"].reshape(h * w, c)[self.permutation].reshape(h, w, c)
        return {**observation, "image": image}


class RewardRemap(gym.RewardWrapper):
    """``r' = scale * r + shift`` (``scale: -1`` flips the sign of the task's reward)."""

    def __init__(self, env: gym.Env, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(env)
        self.scale = float(scale)
        self.shift = float(shift)

    def reward(self, reward: SupportsFloat) -> float:
        return self.scale * float(reward) + self.shift


class StochasticActions(gym.ActionWrapper):
    """With probability ``prob`` the agent's action is replaced by a uniformly random one (slippery)."""

    def __init__(self, env: gym.Env, prob: float) -> None:
        super().__init__(env)
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"dynamics prob must be in [0, 1], got {prob}")
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"dynamics needs a Discrete action space, got {env.action_space}")
        self.prob = float(prob)
        self._n = int(env.action_space.n)
        self._rng = np.random.default_rng(0)
        self.replaced = False  # whether the last action was replaced (for tests and diagnostics)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng([int(seed), 0x5E1F])  # independent of the task's own RNG
        return self.env.reset(seed=seed, options=options)

    def action(self, action: Any) -> int:
        self.replaced = self.prob > 0.0 and self._rng.random() < self.prob
        return int(self._rng.integers(self._n)) if self.replaced else int(action)


_BUILDERS: dict[str, Callable[..., gym.Env]] = {
    "action_permutation": ActionPermutation,
    "observation_permutation": ObservationPermutation,
    "reward_remap": RewardRemap,
    "dynamics": StochasticActions,
}
_ALLOWED_KEYS: dict[str, set[str]] = {
    "action_permutation": {"seed", "permutation"},
    "observation_permutation": {"seed", "permutation"},
    "reward_remap": {"scale", "shift"},
    "dynamics": {"prob"},
}


def check_shift_spec(spec: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` (one line) if a shift spec names an unknown type or parameter."""
    kind = spec.get("type")
    if kind not in _BUILDERS:
        raise ValueError(f"{where}: unknown shift type {kind!r}: choose type from {', '.join(SHIFT_TYPES)}")
    unknown = set(spec) - {"type"} - _ALLOWED_KEYS[kind]
    if unknown:
        raise ValueError(
            f"{where}: shift {kind!r} has unknown parameter(s) {sorted(unknown)}: "
            f"allowed are {sorted(_ALLOWED_KEYS[kind])}"
        )
    if kind == "dynamics" and "prob" not in spec:
        raise ValueError(f"{where}: shift 'dynamics' needs `prob` (chance of a random action), e.g. prob: 0.1")


def apply_shift(env: gym.Env, spec: dict[str, Any]) -> gym.Env:
    """Wrap ``env`` in the shift described by ``spec`` (``{"type": ..., **params}``)."""
    check_shift_spec(spec, "shift")
    params = {k: v for k, v in spec.items() if k != "type"}
    return _BUILDERS[spec["type"]](env, **params)
