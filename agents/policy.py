"""The lifelong agent (DESIGN.md section 5): input embedding -> memory backbone -> policy/value heads.

Per token the input is ``encoder(obs) + action_emb[prev_action] + prev_reward * w_r + boundary * w_b``;
``prev_action == num_actions`` means "no previous action" (first token of an episode). Acting runs one
token per lifetime through ``Backbone.step`` under ``torch.inference_mode``; learning runs whole
segments through the chunked ``Backbone.forward`` (:meth:`LifelongAgent.evaluate`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium import spaces

from lifelong.agents.encoders import ObservationEncoder, build_encoder
from lifelong.memory_layers.backbone import Backbone
from lifelong.memory_layers.modules import ParamCache, eager_acting, packed_linears
from lifelong.memory_layers.registry import build_backbone
from lifelong.memory_layers.state import tree_leaves, tree_map

Memory = tuple  # one mixer state per layer


class ActOutput(NamedTuple):
    action: torch.Tensor  # [B] long
    log_prob: torch.Tensor  # [B] float
    value: torch.Tensor  # [B] float
    memory: Memory  # the backbone state after this token


class EvalOutput(NamedTuple):
    log_probs: torch.Tensor  # [B, T, A] log-softmax of the policy logits
    value: torch.Tensor  # [B, T]
    memory: Memory  # state after the last token


def _all_inference(memory: Memory) -> bool:
    """Whether every tensor of a memory (a tuple of per-layer NamedTuples of tensors) is an inference
    tensor; the plain loop costs a fraction of a pytree walk, which matters once per acted token."""
    for layer in memory:
        for t in (layer if isinstance(layer, tuple) else (layer,)):
            if isinstance(t, torch.Tensor):
                if not t.is_inference():
                    return False
            elif isinstance(t, (tuple, list, dict)):
                return all(x.is_inference() for x in tree_leaves(memory))
    return True


def gumbel_max_sample(log_probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One categorical sample per row of ``log_probs`` ``[B, A]`` -> ``[B]`` long, from uniform
    ``noise`` ``[B, A]`` in [0, 1) (Gumbel-max trick: argmax of log p - log(-log u))."""
    return torch.argmax(log_probs - torch.log(-torch.log(noise.clamp(1e-20, 1.0))), dim=-1)


class LifelongAgent(nn.Module):
    """Observation encoder + previous action/reward/boundary embeddings + memory backbone + heads."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        memory_cfg: Any,
        d_model: int,
        num_layers: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        if not isinstance(action_space, spaces.Discrete) or action_space.start != 0:
            raise ValueError(f"the agent needs a Discrete(n) action space starting at 0, got {action_space}")
        self.num_actions = int(action_space.n)
        self.d_model = d_model
        self.encoder: ObservationEncoder = build_encoder(observation_space, d_model)
        self.prev_action = nn.Embedding(self.num_actions + 1, d_model)  # last row: no previous action
        self.reward_in = nn.Parameter(torch.randn(d_model) * 0.1)
        self.boundary_in = nn.Parameter(torch.randn(d_model) * 0.1)
        nn.init.normal_(self.prev_action.weight, std=0.1)
        self.backbone: Backbone = build_backbone(memory_cfg, d_model, num_layers, mlp_ratio)
        self.policy_head = nn.Linear(d_model, self.num_actions)
        self.value_head = nn.Linear(d_model, 1)
        nn.init.orthogonal_(self.policy_head.weight, gain=0.01)
        nn.init.zeros_(self.policy_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)
        # the eager acting step's derived weights: [reward_in; boundary_in], [policy_head; value_head]
        self._inputs_cache, self._heads_cache = ParamCache(), ParamCache()

    # ---- memory -------------------------------------------------------------------------------
    def initial_memory(self, batch_size: int, device: torch.device | str) -> Memory:
        """A fresh memory: one mixer state per layer, batch ``batch_size``."""
        return self.backbone.init_state(batch_size, device)

    def reset_memory(self, memory: Memory, mask: torch.Tensor) -> Memory:
        """Fresh state for the lifetimes where ``mask`` ``[B]`` is True (reset ablations)."""
        return self.backbone.reset_state(memory, mask)

    def obs_to_tensor(self, obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
        return self.encoder.obs_to_tensor(obs, device)

    # ---- shared pieces ------------------------------------------------------------------------
    def embed(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        boundary: torch.Tensor,
    ) -> torch.Tensor:
        """Inputs with leading dims ``[*]`` (``[B]`` or ``[B, T]``) -> tokens ``[*, D]``."""
        if eager_acting() and prev_action.dim() == 1:  # one token: reward and boundary in one matmul
            x = self.encoder(obs) + F.embedding(prev_action, self.prev_action.weight)
            w = self._inputs_cache.get([self.reward_in, self.boundary_in],
                                       lambda: torch.stack([self.reward_in, self.boundary_in]))
            return torch.addmm(x, torch.stack([prev_reward.to(x.dtype), boundary.to(x.dtype)], dim=1), w)
        x = self.encoder(obs) + self.prev_action(prev_action.long())
        x = x + prev_reward.to(x.dtype).unsqueeze(-1) * self.reward_in
        return x + boundary.to(x.dtype).unsqueeze(-1) * self.boundary_in

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[*, D]`` -> (log-probs ``[*, A]``, value ``[*]``)."""
        heads = [self.policy_head, self.value_head]
        if eager_acting() and h.dim() == 2:  # one token: the weights packed once
            out = packed_linears(h, heads, self._heads_cache).float()
        else:  # both heads in one matmul
            out = F.linear(h, torch.cat([lin.weight for lin in heads]), torch.cat([lin.bias for lin in heads])).float()
        return torch.log_softmax(out[..., :-1], dim=-1), out[..., -1]

    # ---- acting -------------------------------------------------------------------------------
    @torch.inference_mode()
    def act(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        boundary: torch.Tensor,
        memory: Memory,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        """One token per lifetime: obs ``[B, ...]``, prev_action ``[B]`` long, prev_reward ``[B]``,
        boundary ``[B]`` bool -> action, log-prob, value ``[B]`` and the memory after the token.
        Actions are sampled with ``generator`` (the global torch RNG when None)."""
        if not _all_inference(memory):
            memory = tree_map(torch.clone, memory)  # e.g. a probe's copy: one kind of tensor for compile
        noise = None
        if not deterministic:
            noise = torch.rand((prev_action.shape[0], self.num_actions), generator=generator,
                               device=prev_action.device)
        return ActOutput(*self._act_core(obs, prev_action, prev_reward, boundary, memory, noise))

    def _act_core(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        boundary: torch.Tensor,
        memory: Memory,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Memory]:
        """The acting graph (compiled as a whole by :meth:`compile_acting`); ``noise`` ``[B, A]`` uniform
        in [0, 1) samples by Gumbel-max, None takes the argmax."""
        h, memory = self.backbone.step(self.embed(obs, prev_action, prev_reward, boundary), memory)
        log_probs, value = self.heads(h)
        if noise is None:
            action = log_probs.argmax(-1)
        else:
            action = gumbel_max_sample(log_probs, noise)
        return action, log_probs.gather(-1, action[:, None]).squeeze(-1), value, memory

    def compile_acting(self) -> None:
        """``torch.compile`` the acting step (embedding, backbone step, heads and sampling as one graph).
        On the CPU the graph's calls go through Inductor's C++ wrapper instead of its Python one: one
        acting step of the benchmark agent (8 lifetimes, d_model 128, 2 Gated DeltaNet blocks) took
        0.61-0.88 ms against 1.04-1.29 ms (2026-11-29: 300 calls of :meth:`act` after two segments of
        ``benchmarks/throughput.py``'s loop, median of 5 rounds, two runs each; 2-core VM)."""
        on_cpu = all(p.device.type == "cpu" for p in self.parameters())
        self._act_core = torch.compile(self._act_core, dynamic=False, options={"cpp_wrapper": True} if on_cpu else None)

    # ---- learning -----------------------------------------------------------------------------
    def evaluate(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        boundary: torch.Tensor,
        memory: Memory,
        reset: torch.Tensor | None = None,
    ) -> EvalOutput:
        """Whole segments through the chunked backbone: inputs ``[B, T, ...]`` from the state
        ``memory`` at the segment start; ``reset`` ``[B, T]`` bool clears the memory before token t
        (reset ablations only). Returns log-probs ``[B, T, A]``, values ``[B, T]`` and the end state."""
        x = self.embed(obs, prev_action, prev_reward, boundary)
        h, memory = self.backbone(x, memory, reset)
        log_probs, value = self.heads(h)
        return EvalOutput(log_probs, value, memory)
