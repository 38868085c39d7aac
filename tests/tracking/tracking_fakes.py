"""Tiny stand-ins following the cross-package interfaces (docs/interfaces.md): a one-layer recurrent
agent with a real memory state and a corridor env that reports ``episode_success`` like the
stream envs, so the tracker and the probes are tested without the agents / envs packages."""
from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium import spaces

from lifelong.memory_layers.state import State


class FakeState(NamedTuple):
    S: torch.Tensor  # [B, H, K, V]


class FakeAct(NamedTuple):
    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    memory: tuple


class FakeAgent(nn.Module):
    """Obs ``{"pos": [B] int}`` + prev action/reward/boundary -> a decaying outer-product memory."""

    def __init__(self, num_actions: int = 3, d: int = 8) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.d = d
        self.pos_emb = nn.Embedding(16, d)
        self.act_emb = nn.Embedding(num_actions + 1, d)
        self.w_r = nn.Parameter(torch.randn(d))
        self.w_b = nn.Parameter(torch.randn(d))
        self.policy = nn.Linear(2 * d, num_actions)
        self.value = nn.Linear(2 * d, 1)

    def initial_memory(self, batch_size: int, device) -> tuple[State, ...]:
        return (FakeState(torch.zeros(batch_size, 2, self.d // 2, self.d // 2, device=device)),)

    def reset_memory(self, memory: tuple, mask: torch.Tensor) -> tuple:
        """Zero state for the lifetimes where ``mask`` ``[B]`` is True (``reset_on`` ablations)."""
        (state,) = memory
        return (FakeState(torch.where(mask[:, None, None, None], torch.zeros_like(state.S), state.S)),)

    def obs_to_tensor(self, obs: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=device) for k, v in obs.items()}

    @torch.inference_mode()
    def act(self, obs, prev_action, prev_reward, boundary, memory, deterministic: bool = False,
            generator: torch.Generator | None = None) -> FakeAct:
        x = self.pos_emb(obs["pos"].long()) + self.act_emb(prev_action) + prev_reward[:, None] * self.w_r
        x = x + boundary[:, None].float() * self.w_b  # [B, d]
        (state,) = memory
        k = x.view(x.shape[0], 2, -1)
        S = 0.9 * state.S + k[..., :, None] * torch.tanh(k)[..., None, :]
        read = torch.einsum("bhkv,bhk->bhv", S, k).reshape(x.shape[0], -1)
        h = torch.cat([x, read], -1)
        logits = self.policy(h).log_softmax(-1)
        if deterministic:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.exp(), 1, generator=generator)[:, 0]
        return FakeAct(action, logits.gather(-1, action[:, None])[:, 0], self.value(h)[:, 0], (FakeState(S),))


class Corridor(gym.Env):
    """Reach position ``goal`` by action 1 (forward); action ``bad`` ends the episode with reward 0.

    Success reward is 1 - 0.5 * t / max_steps, like MiniGrid; info carries ``episode_*`` at the end.
    """

    metadata: dict = {}

    def __init__(self, goal: int = 3, bad: int = 2, max_steps: int = 8) -> None:
        self.observation_space = spaces.Dict({"pos": spaces.Discrete(16)})
        self.action_space = spaces.Discrete(3)
        self.goal, self.bad, self.max_steps = goal, bad, max_steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t, self.ret = 0, 0, 0.0
        return {"pos": np.int64(self.pos)}, {}

    def step(self, action):
        self.t += 1
        action = int(action)
        reward, terminated = 0.0, False
        if action == 1:
            self.pos += 1
        if self.pos >= self.goal:
            reward, terminated = 1.0 - 0.5 * self.t / self.max_steps, True
        elif action == self.bad:
            terminated = True
        truncated = not terminated and self.t >= self.max_steps
        self.ret += reward
        info = {}
        if terminated or truncated:
            info = {"episode_return": self.ret, "episode_length": self.t, "episode_success": float(self.ret > 0)}
        return {"pos": np.int64(self.pos)}, reward, terminated, truncated, info


def make_corridor(stream_cfg, task_name: str, seed: int) -> gym.Env:
    """``envs.make.make_task_env`` stand-in: task "A" is a 2-cell corridor, "B" a 4-cell one."""
    return Corridor(goal={"A": 2, "B": 4}[task_name], bad=2 if task_name == "A" else 0)
