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
from lifelong.agents.ppo import OverlappedLearner, PPOConfig, PPOLearner
from lifelong.agents.process_learner import ProcessLearner
from lifelong.agents.rollout import RolloutCollector, sub_env_attr
from lifelong.config_schema import OVERLAP_CHOICES, resolve_device, without_added_defaults
from lifelong.envs.make import make_replay_env, make_task_env, make_vector_env
from lifelong.tracking.blocks import BlockLedger
from lifelong.tracking.probes import StreamProber
from lifelong.tracking.replay import SwitchReplay
from lifelong.tracking.tracker import Tracker


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lifetime_settings(vec_env: Any, run_dir: Path | str, seed: int, total_steps: int | None, log_every: int,
                      checkpoint_every: int, checkpoint_minutes: float, checkpoint_keep: int,
                      config_fingerprint: str) -> LifetimeSettings:
    """The settings of a lifetime on ``vec_env``: its tasks and schedule come from sub-env 0;
    ``total_steps=None`` is one pass of the schedule, for every lifetime. The schedule must count
    steps: blocks are synchronous across lifetimes (docs/blocks.md)."""
    pass_steps = sub_env_attr(vec_env, 0, "schedule_steps")
    if pass_steps is None:
        raise ValueError(
            "this stream counts its blocks in episodes, which the lifetimes of a vector env reach at different "
            "steps; a lifetime needs blocks that cover the same env steps in every lifetime (docs/blocks.md): "
            "give the stream `unit: steps` and `steps_per_task` (or schedule.durations in steps)"
        )
    if total_steps is None:
        total_steps = int(pass_steps) * int(vec_env.num_envs)
    return LifetimeSettings(
        run_dir=Path(run_dir),
        seed=seed,
        total_steps=int(total_steps),
        task_names=tuple(str(name) for name in sub_env_attr(vec_env, 0, "task_names")),
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
    plain = without_added_defaults(plain)  # a run saved before a setting existed keeps its fingerprint
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: keys that never change what a run computes or how it is compared: left out of summary.json's config
RUN_ONLY_KEYS = ("seed", "progress", "debug", "overwrite", "resume_existing", "checkpoint_every", "checkpoint_minutes",
                 "checkpoint_keep", "hydra")


def run_config(cfg: DictConfig, settings: LifetimeSettings) -> dict[str, Any]:
    """The whole resolved configuration except the seed and the keys of :data:`RUN_ONLY_KEYS`, with
    ``total_steps`` resolved: runs with equal run configs differ only by their seed."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    config = {k: v for k, v in plain.items() if k not in RUN_ONLY_KEYS}
    config["total_steps"] = settings.total_steps
    return config


def run_info(cfg: DictConfig, settings: LifetimeSettings) -> dict[str, Any]:
    """What ``summary.json`` says about the run for ``lifelong compare``: seed, the run config, its
    key (equal keys: the same experiment, another seed), the mixer and stream names."""
    config = run_config(cfg, settings)
    keyed = without_added_defaults(config)  # grouped with runs saved before a setting existed
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"seed": settings.seed, "memory": str(cfg.memory.name), "stream": str(cfg.stream.name),
            "config_key": key, "config": config}


def hparams(cfg: DictConfig, settings: LifetimeSettings) -> dict[str, Any]:
    """The run's hyper-parameters for TensorBoard's HParams tab and summary.json: the whole run config
    (nested; flattened to dotted keys in TensorBoard: the mixer is ``memory.name``, the stream
    ``stream.name``), its key and the seed."""
    info = run_info(cfg, settings)
    return {**info["config"], "seed": info["seed"], "config_key": info["config_key"]}


def make_learner(agent: LifelongAgent, cfg: PPOConfig, overlap: bool | str, *, compile: bool,
                 seed: int) -> PPOLearner | OverlappedLearner | ProcessLearner:
    """The learner ``agent.overlap`` names: ``false`` learns between segments (:class:`PPOLearner`);
    ``thread`` (or ``true``) on a second thread and ``process`` in a second process, one update
    behind the acting (:class:`OverlappedLearner`, :class:`ProcessLearner`: the same lifetime for a
    seed; the process one, which shares no interpreter lock with the acting, about 6% faster on CPU)."""
    if overlap not in OVERLAP_CHOICES:
        raise ValueError(f"agent.overlap={overlap!r}: choose one of false, true (= thread), thread, process")
    if overlap is False:
        return PPOLearner(agent, cfg, compile=compile, seed=seed)
    if overlap == "process":
        return ProcessLearner(agent, cfg, compile=compile, seed=seed)
    return OverlappedLearner(agent, cfg, compile=compile, seed=seed)


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
    ppo_cfg = PPOConfig.from_cfg(agent_cfg)
    learner = make_learner(agent, ppo_cfg, agent_cfg.get("overlap", False), compile=compile_, seed=seed)
    acting_threads = agent_cfg.acting_threads
    collector = RolloutCollector(vec_env, agent, str(cfg.memory.reset_on), device,
                                 None if acting_threads is None else int(acting_threads),
                                 bool(agent_cfg.bootstrap_time_limits))
    buffer = RolloutBuffer(num_envs, segment_length, device)
    ledger = BlockLedger.of(sub_env_attr(vec_env, 0, "schedule"), num_envs)
    tracker = Tracker.from_config(run_dir, settings.task_names, hparams(cfg, settings), cfg.tracker, ledger,
                                  run_info(cfg, settings))
    reset_each_episode = str(cfg.memory.reset_on) == "episode"  # probes act as the lifetime acts
    prober = StreamProber(cfg.stream, device, make_task_env, reset_each_episode=reset_each_episode)
    episodes = cfg.tracker.replay_episodes
    replay = None if episodes is None else SwitchReplay(cfg.stream, device, make_replay_env, tuple(int(n) for n in episodes),
                                                        float(cfg.tracker.recovery_level), int(cfg.tracker.bootstrap_samples),
                                                        reset_each_episode)
    return Lifetime(agent, collector, buffer, learner, tracker, prober, settings, DivergenceGuard.from_config(cfg.guard),
                    replay)
