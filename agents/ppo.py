"""PPO over rollout segments with truncated backprop through the memory (DESIGN.md section 5).

The learner recomputes each segment from its detached start state with the chunked backbone (one
call over ``[B, T]``, no Python loop over time). Minibatches split the lifetimes (batch dim), never
time, so every minibatch replays whole segments from their own start state.
"""
from __future__ import annotations

import copy
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping

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


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Subnormal floats (below ``torch.finfo(float32).tiny``) read and written as zero on this thread
    (the CPU's flush-to-zero and denormals-are-zero modes), then back to IEEE behaviour. The learner
    runs in it: a Mamba2 agent after 10^6 env steps learned 11-15% slower than at 10^4 steps with
    subnormals, 0.97-1.02x with them flushed (README, "Speed: constant cost"). Threads other than the
    caller's (torch's intra-op workers) keep IEEE behaviour."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


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
    entropy_floor: float | None
    ent_coef_max: float

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
    index: torch.Tensor | None,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    reset: torch.Tensor | None,
    ent_coef: torch.Tensor | None = None,
    prox_log_prob: torch.Tensor | None = None,
    old_value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO loss on the lifetimes ``index`` of ``buf`` (whole segments; None: all of them).
    Returns the loss and detached statistics. advantages/returns ``[B, T]``; filler tokens are masked out.
    ``ent_coef`` (a 0-d tensor, so a compiled loss does not recompile when it changes): the entropy
    bonus's weight, by default ``cfg.ent_coef``.

    ``prox_log_prob`` ``[B, T]`` (the lagged learners): the decoupled objective of Hilton, Cobbe and
    Schulman 2021 ("Batch size-invariance for policy optimization", eq. 2): the ratio is taken to the
    proximal policy (the learner's weights when the update starts) and clipped there, and each token
    is weighted by proximal / behaviour probability (the acting weights were one update older).
    ``old_value`` ``[B, T]``: the values the value clipping is anchored to (default: the acted ones)."""
    take = (lambda t: t) if index is None else (lambda t: t[index])  # None: every lifetime, no copies
    obs = {k: take(v) for k, v in buf.obs.items()}
    memory = tree_map(take, buf.memory_start)
    out = agent.evaluate(obs, take(buf.prev_action), take(buf.prev_reward), take(buf.boundary), memory,
                         None if reset is None else take(reset))
    valid = take(buf.valid)
    action = take(buf.action)
    new_logp = out.log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    behaviour_logp = take(buf.log_prob)
    if prox_log_prob is None:
        log_ratio = new_logp - behaviour_logp
        weight = None
    else:
        prox = take(prox_log_prob)
        log_ratio = new_logp - prox
        weight = (prox - behaviour_logp).exp()
    ratio = log_ratio.exp()
    adv = take(advantages)
    if cfg.norm_adv:
        mean = masked_mean(adv, valid)
        std = masked_mean((adv - mean) ** 2, valid).sqrt()
        adv = (adv - mean) / (std + 1e-8)
    pg_terms = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
    pg_loss = masked_mean(pg_terms if weight is None else weight * pg_terms, valid)
    value = out.value
    ret = take(returns)
    if cfg.clip_vloss:
        old_value = take(buf.value if old_value is None else old_value)
        clipped = old_value + (value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * masked_mean(torch.max((value - ret) ** 2, (clipped - ret) ** 2), valid)
    else:
        v_loss = 0.5 * masked_mean((value - ret) ** 2, valid)
    entropy = masked_mean(-(out.log_probs.exp() * out.log_probs).sum(-1), valid)
    loss = pg_loss + cfg.vf_coef * v_loss - (cfg.ent_coef if ent_coef is None else ent_coef) * entropy
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


ENT_COEF_STEP = 1.5  # factor by which the entropy floor's controller moves the coefficient per update


def next_ent_coef(coef: float, entropy: float, num_actions: int, cfg: PPOConfig) -> float:
    """The entropy coefficient for the next update under ``cfg.entropy_floor`` (None: ``cfg.ent_coef``).

    The floor is a target entropy, a fraction of the largest one, ``H_min = entropy_floor * log |A|``.
    As in the automatic temperature of SAC (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
    Applications", eq. 18; Christodoulou 2019 for discrete actions) the coefficient rises while the
    policy's entropy is below the target. Our extension: the target is a floor, not a set point. The
    coefficient is multiplied by ``ENT_COEF_STEP`` after an update whose mean entropy was below
    ``H_min`` and divided by it otherwise, kept within ``[ent_coef, ent_coef_max]``; above the floor PPO
    is unchanged. Why: a mastered task drives the entropy to ~0.001 nats, where the gradient of the
    entropy bonus vanishes, and a next task that this policy does not solve by chance pays no reward
    to learn from (README, mg-cycle).
    """
    if cfg.entropy_floor is None:
        return cfg.ent_coef
    target = cfg.entropy_floor * math.log(num_actions)
    coef = coef * ENT_COEF_STEP if entropy < target else coef / ENT_COEF_STEP
    return min(max(coef, cfg.ent_coef), max(cfg.ent_coef_max, cfg.ent_coef))


class PPOLearner:
    """Owns the optimizer; :meth:`update` runs the PPO epochs on one full segment. With
    ``entropy_floor`` set it also owns the entropy coefficient (:func:`next_ent_coef`), checkpointed."""

    STATE_KEYS = ("optimizer", "generator", "ent_coef")  # what state_dict holds

    def __init__(self, agent: LifelongAgent, cfg: PPOConfig, *, compile: bool, seed: int,
                 decoupled: bool = False) -> None:
        self.agent = agent
        self.cfg = cfg
        self.decoupled = decoupled  # the lagged learners': see ppo_loss and proximal_targets
        params = [p for p in agent.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                                          fused=fused)
        self._loss_fn = torch.compile(ppo_loss, dynamic=False) if compile else ppo_loss
        self.last_grad_norm = 0.0
        self.ent_coef = float(cfg.ent_coef)
        # minibatch order comes from the learner's own generator (independent of the global RNG)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                 "ent_coef": self.ent_coef}
        assert tuple(state) == self.STATE_KEYS
        return state

    def load_state_dict(self, sd: dict) -> None:
        # a copy: torch's Optimizer.load_state_dict keeps the given tensors as its state and steps them in
        # place, which would change a snapshot held by the caller (loaded twice, it would differ)
        self.optimizer.load_state_dict(copy.deepcopy(sd["optimizer"]))
        self.ent_coef = float(sd.get("ent_coef", self.cfg.ent_coef))  # checkpoints before the floor: the fixed one
        self.generator.set_state(sd["generator"].cpu())  # a CPU state, wherever map_location put it

    @torch.no_grad()
    def proximal_targets(
        self, buf: RolloutBuffer, reset: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a segment acted by older weights: (log-probs of the taken actions, values, advantages,
        returns), each ``[B, T]``, under the weights the update starts from (the proximal policy). The
        advantages are GAE on these values (the bootstrap value of the next segment stays the acted
        one), so the value targets follow the learner, not the acting copy one update behind."""
        out = self.agent.evaluate(buf.obs, buf.prev_action, buf.prev_reward, buf.boundary, buf.memory_start, reset)
        log_prob = out.log_probs.gather(-1, buf.action.unsqueeze(-1)).squeeze(-1)
        value = out.value.where(buf.valid, buf.value)  # filler tokens keep theirs (masked out anyway)
        advantages, returns = buf.advantages(self.cfg.gamma, self.cfg.gae_lambda, value)
        return log_prob, value, advantages, returns

    def update(
        self, buf: RolloutBuffer, reset: torch.Tensor | None = None, features: bool = False
    ) -> dict[str, Any]:
        """PPO epochs on ``buf`` (complete, with ``next_value``). ``reset`` ``[B, T]``: memory resets
        for the reset ablations (None: never). With ``features`` the result also holds
        ``"features"``: MLP activations ``{layer: [N, hidden]}`` from the first forward pass.
        Raises :class:`NonFiniteError` if the loss or the gradients are not finite. Runs with
        subnormal floats flushed to zero (:func:`flushed_denormals`)."""
        with flushed_denormals():
            return self._update(buf, reset, features)

    def _update(self, buf: RolloutBuffer, reset: torch.Tensor | None, features: bool) -> dict[str, Any]:
        cfg = self.cfg
        prox_log_prob = old_value = None
        if self.decoupled:
            prox_log_prob, old_value, advantages, returns = self.proximal_targets(buf, reset)
        else:
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
        ent_coef = torch.tensor(self.ent_coef, device=buf.valid.device)
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(num_envs, generator=self.generator).to(buf.valid.device)
            for start in range(0, num_envs, mb_size):
                # one minibatch of every lifetime: the loss is a mean over all of them, in any order
                index = None if mb_size == num_envs else perm[start : start + mb_size]
                loss, stats = self._loss_fn(self.agent, buf, index, advantages, returns, cfg, reset, ent_coef,
                                            prox_log_prob, old_value)
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
        result["losses/ent_coef"] = self.ent_coef  # the coefficient this update used
        self.ent_coef = next_ent_coef(self.ent_coef, result["losses/entropy"], self.agent.num_actions, cfg)
        valid = buf.valid
        var_ret = returns[valid].var() if valid.sum() > 1 else torch.zeros(())
        predicted = buf.value if old_value is None else old_value
        result["losses/explained_variance"] = float(
            1 - (returns - predicted)[valid].var() / var_ret if var_ret > 0 else 0.0
        )
        self.last_grad_norm = float(grad_norm)
        result["losses/grad_norm"] = self.last_grad_norm
        if sampler is not None:
            result["features"] = sampler.features
        return result


class LaggedLearner:
    """What the two lagged learners (``agent.overlap``) share: :class:`OverlappedLearner` learns on a
    second thread, :class:`~lifelong.agents.process_learner.ProcessLearner` in a second process.

    A drop-in for :class:`PPOLearner` (the lifetime's ``Learner`` protocol). ``agent`` is the acting
    agent (the collector's); the learner trains its own copy ``learn_agent``, so acting never reads
    weights that are being updated. ``update(buf)`` waits for the update of the previous segment,
    copies its weights into ``agent``, starts the update on a copy of ``buf`` in the background and
    returns the previous update's statistics (``{}`` after the first segment). Segment k+1 is
    therefore acted by the weights from before the update on segment k: one update of policy lag,
    which the decoupled objective accounts for (``PPOLearner(decoupled=True)``, :func:`ppo_loss`).
    Subclasses start an update (:meth:`_start`) and wait for it (:meth:`_wait`).
    """

    def __init__(self, agent: LifelongAgent) -> None:
        self.agent = agent
        compiled = agent.__dict__.pop("_act_core", None)  # a compiled acting step stays with the acting agent
        try:
            self.learn_agent = copy.deepcopy(agent)
        finally:
            if compiled is not None:
                agent._act_core = compiled
        self._stats: dict[str, Any] = {}  # the last finished update's, not yet returned

    def _start(self, buf: RolloutBuffer, reset: torch.Tensor | None, features: bool) -> None:
        """Start learning from ``buf`` (a copy this learner owns) in the background."""
        raise NotImplementedError

    def _wait(self) -> dict[str, Any] | None:
        """Wait for the pending update (re-raising its error); its statistics, None if none was pending."""
        raise NotImplementedError

    def _settle(self) -> None:
        stats = self._wait()
        if stats is not None:
            self._stats = stats

    @torch.no_grad()
    def _sync_weights(self) -> None:
        for acting, learned in zip(self.agent.parameters(), self.learn_agent.parameters(), strict=True):
            acting.copy_(learned)

    def update(self, buf: RolloutBuffer, reset: torch.Tensor | None = None, features: bool = False) -> dict[str, Any]:
        """Start learning from ``buf`` (complete) in the background; returns the previous update's stats."""
        self._settle()
        stats, self._stats = self._stats, {}
        self._sync_weights()
        self._start(buf.clone(), None if reset is None else reset.clone(), features)
        return stats

    def settle(self) -> None:
        """Wait for the pending update and copy its weights into the acting agent (before a probe or
        at the lifetime's end); its statistics stay for the next :meth:`update` to return."""
        self._settle()
        self._sync_weights()

    def finish(self) -> dict[str, Any]:
        """Wait for the pending update and copy its weights into the acting agent; returns its stats."""
        self.settle()
        stats, self._stats = self._stats, {}
        return stats


class OverlappedLearner(LaggedLearner):
    """PPO on a second thread (``agent.overlap=thread``): learns from segment k while the collector
    acts segment k+1 (:class:`LaggedLearner`).

    ``threads`` torch threads are used by each side (acting and learning); with the default 1 the two
    sides use one core each, and every op runs single-threaded, so a seed gives one lifetime (an
    overlapped lifetime differs from a sequential one, which stays the default). ``state_dict``
    first waits for the pending update, so a checkpoint holds a settled state and resumes identically.
    """

    def __init__(self, agent: LifelongAgent, cfg: PPOConfig, *, compile: bool, seed: int, threads: int = 1,
                 switch_interval: float | None = 0.0005, decoupled: bool = True) -> None:
        super().__init__(agent)
        self.inner = PPOLearner(self.learn_agent, cfg, compile=compile, seed=seed, decoupled=decoupled)
        self.cfg = cfg
        self.threads = threads
        torch.set_num_threads(threads)
        if switch_interval is not None:
            # the learner thread takes the GIL back between its ops without waiting out 5 ms of env stepping
            sys.setswitchinterval(min(sys.getswitchinterval(), switch_interval))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-learner")
        self._pending: Future | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.inner.optimizer

    @property
    def last_grad_norm(self) -> float:
        return self.inner.last_grad_norm

    def _run(self, buf: RolloutBuffer, reset: torch.Tensor | None, features: bool) -> dict[str, Any]:
        torch.set_num_threads(self.threads)
        return self.inner.update(buf, reset=reset, features=features)

    def _start(self, buf: RolloutBuffer, reset: torch.Tensor | None, features: bool) -> None:
        self._pending = self._pool.submit(self._run, buf, reset, features)

    def _wait(self) -> dict[str, Any] | None:
        if self._pending is None:
            return None
        future, self._pending = self._pending, None
        return future.result()

    def state_dict(self) -> dict:
        self._settle()
        return {**self.inner.state_dict(), "learn_agent": self.learn_agent.state_dict(), "stats": self._stats}

    def load_state_dict(self, sd: dict) -> None:
        if self._pending is not None:  # an update of a state being replaced: wait for it, drop it
            self._pending.exception()
            self._pending = None
        self.inner.load_state_dict(sd)
        self.learn_agent.load_state_dict(sd["learn_agent"])
        self._stats = dict(sd.get("stats", {}))
