"""Building a :class:`~lifelong.agents.loop.Lifetime` from the Hydra config (``configs/config.yaml``).

``build_lifetime(cfg, run_dir)`` is the one place where the config becomes objects: the vector env of
the stream, the agent, the learner, the collector and its buffer, the tracker and the prober. The
objects are made in a fixed order after seeding every RNG, so a seed gives one lifetime.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.guard import DivergenceGuard
from lifelong.agents.loop import Lifetime, LifetimeSettings
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import PPOConfig, PPOLearner
from lifelong.agents.rollout import RolloutCollector, sub_env_attr
from lifelong.envs.make import make_task_env, make_vector_env
from lifelong.tracking.probes import StreamProber
from lifelong.tracking.tracker import Tracker


def resolve_device(device: str) -> torch.device:
    """``auto``: a GPU when there is one, the CPU otherwise; any other value is a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lifetime_settings(vec_env: Any, run_dir: Path | str, seed: int, total_steps: int | None, log_every: int,
                      checkpoint_every: int, checkpoint_minutes: float, checkpoint_keep: int,
                      config_fingerprint: str) -> LifetimeSettings:
    """The settings of a lifetime on ``vec_env``: its tasks and schedule come from sub-env 0;
    ``total_steps=None`` is one pass of a schedule counted in steps, for every lifetime."""
    if total_steps is None:
        pass_steps = sub_env_attr(vec_env, 0, "schedule_steps")
        if pass_steps is None:
            raise ValueError(
                "total_steps=null needs a stream whose schedule is counted in steps; this stream counts "
                "episodes: set total_steps=<env steps summed over all lifetimes>"
            )
        total_steps = int(pass_steps) * int(vec_env.num_envs)
    return LifetimeSettings(
        run_dir=Path(run_dir),
        seed=seed,
        total_steps=int(total_steps),
        task_names=tuple(str(name) for name in sub_env_attr(vec_env, 0, "task_names")),
        block_tasks=tuple(str(name) for name, _ in sub_env_attr(vec_env, 0, "schedule")),
        log_every=int(log_every),
        checkpoint_every=int(checkpoint_every),
        checkpoint_minutes=float(checkpoint_minutes),
        checkpoint_keep=int(checkpoint_keep),
        config_fingerprint=config_fingerprint,
    )


#: keys that change how a run is shown or saved, never what it computes: left out of the fingerprint
PRESENTATION_KEYS = ("progress", "debug", "overwrite", "resume_existing", "checkpoint_every", "checkpoint_minutes", "checkpoint_keep",
                     "device", "compile", "hydra")


def config_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything in ``cfg`` that decides what the lifetime computes."""
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in PRESENTATION_KEYS}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hparams(cfg: DictConfig, settings: LifetimeSettings) -> dict[str, Any]:
    """The run's hyper-parameters for the tracker (TensorBoard's HParams tab, summary.json)."""
    return {
        "memory": str(cfg.memory.name),
        "stream": str(cfg.stream.name),
        "d_model": int(cfg.agent.d_model),
        "num_layers": int(cfg.agent.num_layers),
        "num_envs": int(cfg.num_envs),
        "segment_length": int(cfg.agent.segment_length),
        "lr": float(cfg.agent.lr),
        "reset_on": str(cfg.memory.reset_on),
        "seed": settings.seed,
        "total_steps": settings.total_steps,
    }


def build_lifetime(cfg: DictConfig, run_dir: Path | str) -> Lifetime:
    """The lifetime ``cfg`` describes (keys of ``configs/config.yaml``), writing into ``run_dir``
    (TensorBoard logs, summary.json, checkpoints/). Raises ValueError / TypeError on a bad config."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(str(cfg.device))
    seed = int(cfg.seed)
    seed_everything(seed)
    agent_cfg = cfg.agent
    num_envs = int(cfg.num_envs)
    segment_length = int(agent_cfg.segment_length)
    if segment_length < 1:
        raise ValueError(f"agent.segment_length must be >= 1, got {segment_length}")
    vec_env = make_vector_env(cfg.stream, num_envs, seed)
    settings = lifetime_settings(vec_env, run_dir, seed, cfg.total_steps, int(cfg.tracker.log_every),
                                 int(cfg.checkpoint_every), float(cfg.checkpoint_minutes), int(cfg.checkpoint_keep),
                                 config_fingerprint(cfg))
    agent = LifelongAgent(vec_env.single_observation_space, vec_env.single_action_space, cfg.memory,
                          int(agent_cfg.d_model), int(agent_cfg.num_layers), float(agent_cfg.mlp_ratio)).to(device)
    compile_ = bool(cfg.compile)
    if compile_:
        agent.compile_acting()
    learner = PPOLearner(agent, PPOConfig.from_cfg(agent_cfg), compile=compile_, seed=seed)
    acting_threads = agent_cfg.acting_threads
    collector = RolloutCollector(vec_env, agent, str(cfg.memory.reset_on), device,
                                 None if acting_threads is None else int(acting_threads))
    buffer = RolloutBuffer(num_envs, segment_length, device)
    tracker = Tracker.from_config(run_dir, settings.task_names, hparams(cfg, settings), cfg.tracker)
    prober = StreamProber(cfg.stream, int(cfg.tracker.probe_episodes), device, make_task_env)
    return Lifetime(agent, collector, buffer, learner, tracker, prober, settings, DivergenceGuard.from_config(cfg.guard))
