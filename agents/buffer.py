"""Rollout segments and generalised advantage estimation with NEXT_STEP autoreset.

Time line of one lifetime under NEXT_STEP autoreset: a step that ends an episode (``done``) is
followed by a *filler* token: its observation is the episode's last one, the action passed is
ignored and the env answers with the next episode's first observation and reward 0. The memory sees
every token; the RL losses drop the filler (``valid = False``) and GAE never bootstraps across an
episode end (a truncated episode bootstraps from the value of the final observation, which is the
value computed at the filler token).

Tensors are batch-first, ``[B, T]`` (the layout the chunked backbone learns from).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lifelong.memory_layers.state import tree_map

Memory = tuple
#: the per-token fields of a segment, each ``[B, T]``
_FIELDS = ("prev_action", "prev_reward", "boundary", "reset", "action", "log_prob", "value", "reward", "done",
           "terminated", "valid")


@dataclass
class RolloutBuffer:
    """One segment of ``T`` tokens for ``B`` lifetimes, filled column by column while acting.

    obs: dict of ``[B, T, ...]``; prev_action ``[B, T]`` long; prev_reward, log_prob, value, reward
    ``[B, T]`` float; boundary (first token of an episode), reset (memory cleared before the token),
    done (terminated or truncated at this step), terminated, valid (not a filler) ``[B, T]`` bool;
    ``memory_start``: the detached backbone state before token 0; ``next_value`` ``[B]``: the value of
    the token after the segment (bootstrap).
    """

    num_envs: int
    length: int
    device: torch.device | str = "cpu"
    obs: dict[str, torch.Tensor] = field(default_factory=dict)
    memory_start: Memory | None = None
    next_value: torch.Tensor | None = None
    step: int = 0

    def __post_init__(self) -> None:
        with torch.inference_mode(False):  # normal tensors even when made while acting
            self._allocate()

    def _allocate(self) -> None:
        shape = (self.num_envs, self.length)
        f = dict(device=self.device)
        self.prev_action = torch.zeros(shape, dtype=torch.long, **f)
        self.prev_reward = torch.zeros(shape, **f)
        self.boundary = torch.zeros(shape, dtype=torch.bool, **f)
        self.reset = torch.zeros(shape, dtype=torch.bool, **f)
        self.action = torch.zeros(shape, dtype=torch.long, **f)
        self.log_prob = torch.zeros(shape, **f)
        self.value = torch.zeros(shape, **f)
        self.reward = torch.zeros(shape, **f)
        self.done = torch.zeros(shape, dtype=torch.bool, **f)
        self.terminated = torch.zeros(shape, dtype=torch.bool, **f)
        self.valid = torch.zeros(shape, dtype=torch.bool, **f)

    def start(self, memory: Memory) -> None:
        """Begin a segment from ``memory`` (stored detached, as a normal tensor outside inference mode)."""
        self.memory_start = tree_map(lambda t: t.detach().clone(), memory)
        self.next_value = None
        self.step = 0
        self._host = None  # the numpy views of the fields, made at the segment's first write

    def _host_views(self) -> dict[str, Any] | None:
        """Numpy views of a CPU buffer's fields (None on other devices): a column written through
        numpy costs a microsecond, through torch indexing two ops."""
        host = getattr(self, "_host", None)
        if host is None:
            if torch.device(self.device).type != "cpu":
                host = False
            else:
                host = {name: getattr(self, name).numpy() for name in _FIELDS}
                host.update({f"obs/{k}": v.numpy() for k, v in self.obs.items()})
            self._host = host
        return host or None

    @torch.no_grad()
    def add_input(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        boundary: torch.Tensor,
        reset: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:
        """Record the inputs of token ``self.step`` (each ``[B, ...]``)."""
        t = self.step
        if t >= self.length:
            raise IndexError(f"segment is full ({self.length} tokens); call start() for the next one")
        for key, value in obs.items():
            if key not in self.obs:
                with torch.inference_mode(False):  # a normal tensor (the learner differentiates through it)
                    self.obs[key] = torch.zeros((self.num_envs, self.length, *value.shape[1:]), dtype=value.dtype,
                                                device=self.device)
                self._host = None
        host = self._host_views()
        if host is not None and all(x.device.type == "cpu" for x in (prev_action, *obs.values())):
            for key, value in obs.items():
                host[f"obs/{key}"][:, t] = value.numpy()
            for name, value in (("prev_action", prev_action), ("prev_reward", prev_reward), ("boundary", boundary),
                                ("reset", reset), ("valid", valid)):
                host[name][:, t] = value.numpy()
            return
        for key, value in obs.items():
            self.obs[key][:, t] = value
        self.prev_action[:, t] = prev_action
        self.prev_reward[:, t] = prev_reward
        self.boundary[:, t] = boundary
        self.reset[:, t] = reset
        self.valid[:, t] = valid

    @torch.no_grad()
    def add_output(
        self,
        action: torch.Tensor,
        log_prob: torch.Tensor,
        value: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """Record the agent's output and the env's answer for token ``self.step``, then advance."""
        t = self.step
        host = self._host_views()
        if host is not None and action.device.type == "cpu":
            for name, value in (("action", action), ("log_prob", log_prob), ("value", value), ("reward", reward),
                                ("terminated", terminated)):
                host[name][:, t] = value.numpy()
            host["done"][:, t] = terminated.numpy() | truncated.numpy()
            self.step += 1
            return
        self.action[:, t] = action
        self.log_prob[:, t] = log_prob
        self.value[:, t] = value
        self.reward[:, t] = reward
        self.terminated[:, t] = terminated
        self.done[:, t] = terminated | truncated
        self.step += 1

    def clone(self) -> "RolloutBuffer":
        """A copy that shares no storage with this buffer (a segment handed to a learner thread)."""
        copy = RolloutBuffer(self.num_envs, self.length, self.device)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(copy, name, value.clone())
        copy.next_value = None if self.next_value is None else self.next_value.clone()
        copy.obs = {k: v.clone() for k, v in self.obs.items()}
        copy.memory_start = None if self.memory_start is None else tree_map(torch.clone, self.memory_start)
        copy.step = self.step
        return copy

    @property
    def full(self) -> bool:
        return self.step == self.length

    def advantages(self, gamma: float, gae_lambda: float,
                   value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the segment -> (advantages, returns) ``[B, T]``; zero where not valid. ``value``
        ``[B, T]``: the values to bootstrap from (default: the acted ones, ``self.value``)."""
        if not self.full or self.next_value is None:
            raise RuntimeError("the segment is not complete: fill all tokens and set next_value first")
        return compute_gae(self.reward, self.value if value is None else value, self.next_value, self.done,
                           self.terminated, self.valid, gamma, gae_lambda)


@torch.no_grad()
def compute_gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    valid: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with NEXT_STEP autoreset fillers.

    All inputs ``[B, T]`` except ``next_value`` ``[B]`` (value of the token after the segment).
    For a valid token t: ``delta_t = r_t + gamma * V_{t+1} * (1 - terminated_t) - V_t`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``: an episode end stops the recursion,
    a truncation still bootstraps from the next token's value (the final observation, seen by the
    filler). Filler tokens (``valid = False``) get advantage and return 0.
    Returns (advantages, returns = advantages + values), both ``[B, T]``.
    """
    reward_np = reward.float().cpu().numpy()
    value_np = value.float().cpu().numpy()
    next_values = torch.cat([value[:, 1:], next_value[:, None].to(value.dtype)], dim=1).float().cpu().numpy()
    not_done = (~done).float().cpu().numpy()
    not_term = (~terminated).float().cpu().numpy()
    valid_np = valid.float().cpu().numpy()
    delta = reward_np + gamma * next_values * not_term - value_np
    adv = delta.copy()
    carry = adv[:, -1] * 0.0
    for t in range(reward_np.shape[1] - 1, -1, -1):
        carry = delta[:, t] + gamma * gae_lambda * not_done[:, t] * carry
        carry = carry * valid_np[:, t]
        adv[:, t] = carry
    advantages = torch.from_numpy(adv).to(value.device)
    returns = (advantages + value.float()) * valid.float()
    return advantages, returns
