"""The one acting loop (DESIGN.md sections 5, 6, 8): training, probes and reference runs act through it.

:class:`Rollout` steps a NEXT_STEP-autoreset vector env (B lifetimes) one token per lifetime and holds
the token rules, written once here:

* the first token of an episode has ``prev_action = n`` (none; ``n`` = the action count),
  ``prev_reward = 0`` and ``boundary = True``; any other token carries the previous action and reward;
* the step after an episode's last step is the vector env's reset step: its action is a filler and
  its transition is not real (``valid = False``), and the token after it starts the next episode.

:class:`RolloutCollector` is training's use of it: it owns the acting memory (carried from segment to
segment, reset only for the ``memory.reset_on`` ablations) and the action-sampling generator, and
records segments into a :class:`RolloutBuffer`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils import _pytree as pytree

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.policy import ActOutput, LifelongAgent, Memory
from lifelong.agents.ppo import NONFINITE_HINT, NonFiniteError
from lifelong.memory_layers.registry import RESET_CHOICES
from lifelong.memory_layers.state import clone_state, state_is_finite

Info = dict[str, Any]


def info_at(info: Info, key: str, i: int, default: Any = None) -> Any:
    """Value of ``key`` for sub-env ``i`` in a vector env's info dict (respecting the ``_key`` mask)."""
    if key not in info:
        return default
    mask = info.get(f"_{key}")
    if mask is not None and not bool(mask[i]):
        return default
    value = info[key][i]
    return value.item() if isinstance(value, np.generic) else value


def info_flags(info: Info, key: str, num_envs: int) -> np.ndarray:
    """``[num_envs]`` bool: the boolean ``key`` of every sub-env (False where absent or masked out by
    ``_key``): :func:`info_at` vectorised."""
    flags = info.get(key)
    if flags is None:
        return np.zeros(num_envs, dtype=bool)
    out = np.array(flags, dtype=bool).reshape(num_envs)
    mask = info.get(f"_{key}")
    if mask is not None:
        out &= np.asarray(mask, dtype=bool).reshape(num_envs)
    return out


def sub_env_attr(vec_env: Any, i: int, name: str) -> Any:
    """Attribute ``name`` of sub-env ``i``, looking through Gymnasium wrappers."""
    env = vec_env.envs[i]
    return env.get_wrapper_attr(name) if hasattr(env, "get_wrapper_attr") else getattr(env, name)


def reset_where(agent: Any, memory: Memory, mask: torch.Tensor) -> Memory:
    """``memory`` with the lifetimes where ``mask`` ``[B]`` is True cleared (``agent.reset_memory``);
    unchanged, with no op dispatched, when none is."""
    return agent.reset_memory(memory, mask) if bool(mask.any()) else memory


class ActingAgent(Protocol):
    """What the acting loop needs from an agent (``LifelongAgent`` is the real one)."""

    num_actions: int

    def obs_to_tensor(self, obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]: ...

    def act(self, obs: dict[str, torch.Tensor], prev_action: torch.Tensor, prev_reward: torch.Tensor,
            boundary: torch.Tensor, memory: Memory, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput: ...


class Tokens(NamedTuple):
    """The inputs of the next token of every lifetime (each ``[B, ...]``)."""

    obs: dict[str, torch.Tensor]
    prev_action: torch.Tensor  # long; num_actions = none (an episode's first token)
    prev_reward: torch.Tensor  # float; 0 on an episode's first token
    boundary: torch.Tensor  # bool; True on an episode's first token
    valid: torch.Tensor  # bool; False on the NEXT_STEP filler (the reset step after an episode end)


class Transition(NamedTuple):
    """One acted token of every lifetime: its inputs, the agent's output and the env's answer."""

    tokens: Tokens
    action: torch.Tensor  # [B] long
    log_prob: torch.Tensor  # [B]
    value: torch.Tensor  # [B]
    memory: Memory  # after the token
    reward: torch.Tensor  # [B] float32
    terminated: torch.Tensor  # [B] bool
    truncated: torch.Tensor  # [B] bool
    info: Info


class Rollout:
    """Acts in ``vec_env`` (NEXT_STEP autoreset) with ``agent``, one token per lifetime per step."""

    def __init__(self, vec_env: Any, agent: ActingAgent, device: torch.device | str) -> None:
        self.vec_env = vec_env
        self.agent = agent
        self.device = torch.device(device)
        self.num_envs = int(vec_env.num_envs)
        self.tokens: Tokens | None = None
        self._valid = np.ones(self.num_envs, dtype=bool)  # host copy of tokens.valid

    @torch.inference_mode()
    def reset(self, seed: int) -> Info:
        """Reset every env (sub-env i seeded ``seed + i``): the next tokens are episodes' first ones."""
        obs, info = self.vec_env.reset(seed=seed)
        b, n = self.num_envs, self.agent.num_actions
        self.tokens = Tokens(
            obs=self.agent.obs_to_tensor(obs, self.device),
            prev_action=torch.full((b,), n, dtype=torch.long, device=self.device),
            prev_reward=torch.zeros(b, device=self.device),
            boundary=torch.ones(b, dtype=torch.bool, device=self.device),
            valid=torch.ones(b, dtype=torch.bool, device=self.device),
        )
        self._valid = np.ones(b, dtype=bool)
        return info

    @torch.inference_mode()
    def step(self, memory: Memory, deterministic: bool = False,
             generator: torch.Generator | None = None) -> Transition:
        """Act the next token from ``memory`` (sampling with ``generator``; the global torch RNG when
        None), step the env and advance the tokens by the rules above."""
        tokens = self.tokens
        if tokens is None:
            raise RuntimeError("call reset(seed) before stepping")
        out = self.agent.act(tokens.obs, tokens.prev_action, tokens.prev_reward, tokens.boundary, memory,
                             deterministic=deterministic, generator=generator)
        action = out.action.numpy() if out.action.device.type == "cpu" else out.action.cpu().numpy()
        obs, reward, terminated, truncated, info = self.vec_env.step(action)
        # the token rules on the host, in numpy (a few microseconds), then one tensor per field
        first = ~self._valid  # after a filler comes an episode's first observation
        reward = np.asarray(reward, dtype=np.float32).copy()
        terminated = np.asarray(terminated, dtype=bool).copy()
        truncated = np.asarray(truncated, dtype=bool).copy()
        self._valid = ~(terminated | truncated)
        to = self._to_tensor
        reward_t, term_t, trunc_t = to(reward), to(terminated), to(truncated)
        self.tokens = Tokens(
            obs=self.agent.obs_to_tensor(obs, self.device),
            prev_action=to(np.where(first, self.agent.num_actions, action).astype(np.int64)),
            prev_reward=to(np.where(first, np.float32(0.0), reward)),
            boundary=to(first),
            valid=to(self._valid.copy()),
        )
        return Transition(tokens, out.action, out.log_prob, out.value, out.memory, reward_t, term_t, trunc_t, info)

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        """A host array (owned by the caller, never written again) as a tensor on the device."""
        t = torch.from_numpy(array)
        return t if self.device.type == "cpu" else t.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """The next tokens and every env's position and RNG."""
        if self.tokens is None:
            raise RuntimeError("call reset(seed) before saving")
        t = self.tokens
        return {
            "obs": {k: v.clone() for k, v in t.obs.items()},
            "prev_action": t.prev_action.clone(),
            "prev_reward": t.prev_reward.clone(),
            "boundary": t.boundary.clone(),
            "valid": t.valid.clone(),
            "envs": [sub_env_attr(self.vec_env, i, "state_dict")() for i in range(self.num_envs)],
            "vector_autoreset": torch.as_tensor(np.array(getattr(self.vec_env, "_autoreset_envs",
                                                                 np.zeros(self.num_envs, bool)), dtype=bool)),
        }

    @torch.inference_mode()
    def load_state_dict(self, sd: dict[str, Any]) -> None:
        to = lambda t: t.to(self.device).clone()  # noqa: E731  (inference tensors, like the acting ones)
        self.tokens = Tokens({k: to(v) for k, v in sd["obs"].items()}, to(sd["prev_action"]),
                             to(sd["prev_reward"]), to(sd["boundary"]), to(sd["valid"]))
        self._valid = sd["valid"].cpu().numpy().astype(bool)
        for i, env_sd in enumerate(sd["envs"]):
            sub_env_attr(self.vec_env, i, "load_state_dict")(env_sd)
        if hasattr(self.vec_env, "_autoreset_envs"):
            self.vec_env._autoreset_envs = sd["vector_autoreset"].cpu().numpy().astype(bool)


class RolloutCollector:
    """Training's acting: B lifetimes of one :class:`Rollout`, their memory and their sampling RNG.

    The memory is never reset unless ``reset_on`` is ``episode`` (at every boundary token) or ``task``
    (on the first token after a task switch).

    An episode that the task's own time limit truncates (MiniGrid's ``max_steps``) bootstraps from
    the final observation's value when ``bootstrap_time_limits`` (the default, as SB3 does); without
    it the episode is recorded as terminated and its return ends there, as the task's reward (which
    counts the steps against ``max_steps``) says it does, and the agent, which sees every episode
    boundary, can know the time left (Pardo et al. 2018, "Time Limits in Reinforcement Learning",
    sec. 3: a time limit that is part of the task is a terminal state). Bootstrapping let PPO unlearn
    a goal under a short limit sooner than ending the return did (tests/agents/test_time_limits.py);
    ending the return did not relearn the second task of ``mg-shift`` (README, "Time limits"). An
    episode that the stream cuts at a block's end (``info["block_truncated"]``) stays a truncation
    and bootstraps (sec. 4: partial-episode bootstrapping), whatever the setting.
    """

    def __init__(self, vec_env: Any, agent: LifelongAgent, reset_on: str, device: torch.device | str = "cpu",
                 acting_threads: int | None = None, bootstrap_time_limits: bool = True) -> None:
        if reset_on not in RESET_CHOICES:
            raise ValueError(f"memory.reset_on={reset_on!r}: choose one of {RESET_CHOICES}")
        self.rollout = Rollout(vec_env, agent, device)
        self.agent = agent
        self.reset_on = reset_on
        self.device = self.rollout.device
        self.num_envs = self.rollout.num_envs
        # torch threads while acting (one-token ops gain nothing from more; None keeps the global setting)
        self.acting_threads = acting_threads
        self.bootstrap_time_limits = bool(bootstrap_time_limits)
        self.memory: Memory | None = None
        self.generator = torch.Generator(self.device)  # action sampling, seeded by reset(seed)
        self.task_switch = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.info: Info = {}
        with torch.inference_mode():
            self._no_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    @property
    def tokens(self) -> Tokens:
        """The inputs of the next token."""
        if self.rollout.tokens is None:
            raise RuntimeError("call reset(seed) first")
        return self.rollout.tokens

    @contextmanager
    def acting(self) -> Iterator[None]:
        """Inference mode with ``acting_threads`` torch threads. Every acting tensor (memory, inputs) is
        made in here, so a compiled acting step always sees the same kind of tensor (one graph)."""
        threads = torch.get_num_threads()
        if self.acting_threads:
            torch.set_num_threads(self.acting_threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)

    # ---- lifetime start ------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, seed: int) -> Info:
        """Start every lifetime (sub-env i seeded ``seed + i``) with a fresh memory."""
        self.generator.manual_seed(seed)
        info = self.rollout.reset(seed)
        self.task_switch = self._task_switch(info)
        self.memory = self.agent.initial_memory(self.num_envs, self.device)
        self.info = info
        return info

    def _task_switch(self, info: Info) -> torch.Tensor:
        """``[B]`` bool: the lifetimes whose token this step starts a new block."""
        return self.rollout._to_tensor(info_flags(info, "task_switch", self.num_envs))

    def _return_ends(self, t: Transition) -> torch.Tensor:
        """``[B]`` bool: the lifetimes whose return ends at this step: terminated, or (unless
        ``bootstrap_time_limits``) truncated by the task's time limit rather than by the stream's block end."""
        if self.bootstrap_time_limits or not bool(t.truncated.any()):
            return t.terminated
        by_stream = self.rollout._to_tensor(info_flags(t.info, "block_truncated", self.num_envs))
        return t.terminated | (t.truncated & ~by_stream)

    def reset_mask(self) -> torch.Tensor:
        """``[B]`` bool: lifetimes whose memory is cleared before the next token (reset ablations)."""
        if self.reset_on == "episode":
            return self.tokens.boundary.clone()
        if self.reset_on == "task":
            return self.task_switch.clone()
        return torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _reset_where(self, memory: Memory, reset: torch.Tensor) -> Memory:
        """``memory`` with the lifetimes in ``reset`` cleared."""
        return memory if self.reset_on == "never" else reset_where(self.agent, memory, reset)

    # ---- acting --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, buf: RolloutBuffer | None = None) -> tuple[torch.Tensor, Info]:
        """Act one token in every lifetime (recording it in ``buf`` if given). Returns the actions and
        the env's info for the step."""
        if self.memory is None:
            raise RuntimeError("call reset(seed) before stepping")
        if self.reset_on == "never":  # nothing to clear: one shared all-False mask (the buffer copies it)
            reset = self._no_reset
        else:
            reset = self.reset_mask()
            self.memory = self._reset_where(self.memory, reset)
        t = self.rollout.step(self.memory, generator=self.generator)
        if buf is not None:
            buf.add_input(t.tokens.obs, t.tokens.prev_action, t.tokens.prev_reward, t.tokens.boundary, reset,
                          t.tokens.valid)
            buf.add_output(t.action, t.log_prob, t.value, t.reward, self._return_ends(t), t.truncated)
        self.memory = t.memory
        self.task_switch = self._task_switch(t.info)
        self.info = t.info
        return t.action, t.info

    @torch.inference_mode()
    def next_value(self) -> torch.Tensor:
        """Value ``[B]`` of the next token (segment bootstrap), without changing the memory or RNG."""
        t = self.tokens
        memory = self._reset_where(self.memory, self.reset_mask())
        out = self.agent.act(t.obs, t.prev_action, t.prev_reward, t.boundary, memory, deterministic=True)
        return out.value

    def collect(self, buf: RolloutBuffer, on_step: Callable[[Info], None] | None = None) -> None:
        """Fill ``buf`` with one segment from the current memory, then set its bootstrap value.
        ``on_step(info)`` is called after every vector step. Raises :class:`NonFiniteError` if the
        memory becomes non-finite."""
        buf.start(self.memory)
        with self.acting():
            for _ in range(buf.length):
                _, info = self.step(buf)
                if on_step is not None:
                    on_step(info)
            next_value = self.next_value()
        buf.next_value = next_value.clone()  # a normal tensor, made outside inference mode
        self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if the acting memory holds a NaN or an infinity."""
        if not state_is_finite(self.memory):
            raise NonFiniteError(f"the memory state became non-finite while acting. {NONFINITE_HINT}")

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The acting memory (its tensor leaves, a plain list), the sampling RNG and the rollout."""
        return {
            "memory": pytree.tree_leaves(clone_state(self.memory)) if self.memory is not None else None,
            "generator": self.generator.get_state(),
            "task_switch": self.task_switch.clone(),
            "rollout": self.rollout.state_dict(),
        }

    @torch.inference_mode()
    def load_state_dict(self, sd: dict[str, Any]) -> None:
        to = lambda t: t.to(self.device).clone()  # noqa: E731  (inference tensors, like the acting ones)
        self.memory = None if sd["memory"] is None else self._memory_from_leaves([to(t) for t in sd["memory"]])
        self.generator.set_state(sd["generator"].cpu())
        self.task_switch = to(sd["task_switch"])
        self.rollout.load_state_dict(sd["rollout"])

    def _memory_from_leaves(self, leaves: list[torch.Tensor]) -> Memory:
        """A memory of the agent's structure (its layers' state types) holding ``leaves`` in order."""
        template = self.agent.initial_memory(self.num_envs, self.device)
        spec = pytree.tree_structure(template)
        if spec.num_leaves != len(leaves):
            raise ValueError(f"the checkpoint's memory has {len(leaves)} tensors, this agent's {spec.num_leaves}: "
                             "load it into an agent built from the same memory config")
        return pytree.tree_unflatten(leaves, spec)
