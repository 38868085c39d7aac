"""PPO over rollout segments with truncated backprop through the memory (DESIGN.md section 5).

The learner recomputes each segment from its detached start state with the chunked backbone (one
call over ``[B, T]``, no Python loop over time). Minibatches split the lifetimes (batch dim), never
time, so every minibatch replays whole segments from their own start state.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.policy import LifelongAgent
from lifelong.config_files import group_dir
from lifelong.memory_layers.state import tree_map

NONFINITE_HINT = (
    "Likely fixes: lower agent.lr (e.g. agent.lr=1e-4), lower agent.max_grad_norm, lower the memory's "
    "initial gates (a slower decay / smaller write strength in configs/memory/<name>.yaml), or switch "
    "mixer (memory=<name>)."
)


class NonFiniteError(FloatingPointError):
    """The memory state or the loss became NaN/inf: the lifetime stops instead of continuing silently."""


@dataclass
class PPOConfig:
    """PPO hyper-parameters: the keys of ``configs/agent/ppo.yaml``, which holds their defaults."""

    lr: float
    adam_eps: float
    weight_decay: float
    gamma: float
    gae_lambda: float
    clip_coef: float
    clip_vloss: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    update_epochs: int
    num_minibatches: int
    norm_adv: bool
    target_kl: float | None

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "PPOConfig":
        """This class's fields from an agent config (other keys, e.g. d_model, are ignored); a field
        the config leaves out takes its value from the shipped ``configs/agent/ppo.yaml``."""
        merged = OmegaConf.merge(OmegaConf.load(group_dir("agent") / "ppo.yaml"), cfg)
        return cls(**{f.name: merged[f.name] for f in fields(cls)})


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (same shape)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def ppo_loss(
    agent: LifelongAgent,
    buf: RolloutBuffer,
    index: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    reset: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO loss on the lifetimes ``index`` of ``buf`` (whole segments). Returns the loss and
    detached statistics. advantages/returns ``[B, T]``; filler tokens are masked out."""
    obs = {k: v[index] for k, v in buf.obs.items()}
    memory = tree_map(lambda t: t[index], buf.memory_start)
    out = agent.evaluate(obs, buf.prev_action[index], buf.prev_reward[index], buf.boundary[index], memory,
                         None if reset is None else reset[index])
    valid = buf.valid[index]
    action = buf.action[index]
    new_logp = out.log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    log_ratio = new_logp - buf.log_prob[index]
    ratio = log_ratio.exp()
    adv = advantages[index]
    if cfg.norm_adv:
        mean = masked_mean(adv, valid)
        std = masked_mean((adv - mean) ** 2, valid).sqrt()
        adv = (adv - mean) / (std + 1e-8)
    pg_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)), valid)
    value = out.value
    ret = returns[index]
    if cfg.clip_vloss:
        old_value = buf.value[index]
        clipped = old_value + (value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * masked_mean(torch.max((value - ret) ** 2, (clipped - ret) ** 2), valid)
    else:
        v_loss = 0.5 * masked_mean((value - ret) ** 2, valid)
    entropy = masked_mean(-(out.log_probs.exp() * out.log_probs).sum(-1), valid)
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
    with torch.no_grad():
        stats = {
            "losses/policy": pg_loss.detach(),
            "losses/value": v_loss.detach(),
            "losses/entropy": entropy.detach(),
            "losses/approx_kl": masked_mean((ratio - 1) - log_ratio, valid),
            "losses/clipfrac": masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), valid),
        }
    return loss, stats


class FeatureSampler:
    """Forward hooks on each block's MLP activation: keeps up to ``max_rows`` rows ``[N, hidden]``."""

    def __init__(self, agent: LifelongAgent, max_rows: int = 512) -> None:
        self.max_rows = max_rows
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for i, block in enumerate(agent.backbone.blocks):
            activation = block.mlp[1]
            self._handles.append(activation.register_forward_hook(self._hook(f"layer{i}")))

    def _hook(self, name: str) -> Callable:
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            flat = out.detach().reshape(-1, out.shape[-1])
            stride = max(1, flat.shape[0] // self.max_rows)
            self.features[name] = flat[::stride][: self.max_rows].clone()

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class PPOLearner:
    """Owns the optimizer; :meth:`update` runs the PPO epochs on one full segment."""

    def __init__(self, agent: LifelongAgent, cfg: PPOConfig, *, compile: bool, seed: int) -> None:
        self.agent = agent
        self.cfg = cfg
        params = [p for p in agent.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                                          fused=fused)
        self._loss_fn = torch.compile(ppo_loss, dynamic=False) if compile else ppo_loss
        self.last_grad_norm = 0.0
        # minibatch order comes from the learner's own generator (independent of the global RNG)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.optimizer.load_state_dict(sd["optimizer"])
        self.generator.set_state(sd["generator"].cpu())  # a CPU state, wherever map_location put it

    def update(
        self, buf: RolloutBuffer, reset: torch.Tensor | None = None, features: bool = False
    ) -> dict[str, Any]:
        """PPO epochs on ``buf`` (complete, with ``next_value``). ``reset`` ``[B, T]``: memory resets
        for the reset ablations (None: never). With ``features`` the result also holds
        ``"features"``: MLP activations ``{layer: [N, hidden]}`` from the first forward pass.
        Raises :class:`NonFiniteError` if the loss or the gradients are not finite."""
        cfg = self.cfg
        advantages, returns = buf.advantages(cfg.gamma, cfg.gae_lambda)
        num_envs = buf.num_envs
        if cfg.num_minibatches < 1 or num_envs % cfg.num_minibatches != 0:
            raise ValueError(
                f"agent.num_minibatches={cfg.num_minibatches} must divide num_envs={num_envs} "
                "(minibatches split the lifetimes, never time)"
            )
        mb_size = num_envs // cfg.num_minibatches
        sampler = FeatureSampler(self.agent) if features else None
        totals: dict[str, float] = {}
        count = 0
        grad_norm = torch.zeros(())
        stop = False
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(num_envs, generator=self.generator).to(buf.valid.device)
            for start in range(0, num_envs, mb_size):
                index = perm[start : start + mb_size]
                loss, stats = self._loss_fn(self.agent, buf, index, advantages, returns, cfg, reset)
                if sampler is not None:
                    sampler.remove()
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"the PPO loss became {float(loss.detach())}. {NONFINITE_HINT}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise NonFiniteError(f"the gradient norm became {float(grad_norm)}. {NONFINITE_HINT}")
                self.optimizer.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
                if cfg.target_kl is not None and float(stats["losses/approx_kl"]) > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        result: dict[str, Any] = {k: v / count for k, v in totals.items()}
        valid = buf.valid
        var_ret = returns[valid].var() if valid.sum() > 1 else torch.zeros(())
        result["losses/explained_variance"] = float(
            1 - (returns - buf.value)[valid].var() / var_ret if var_ret > 0 else 0.0
        )
        self.last_grad_norm = float(grad_norm)
        result["losses/grad_norm"] = self.last_grad_norm
        if sampler is not None:
            result["features"] = sampler.features
        return result
