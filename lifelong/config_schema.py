"""The schema of a ``lifelong run`` config: every value checked before any work starts.

:func:`validate_run_config` takes the config Hydra composed (``configs/config.yaml``, its ``memory``,
``stream`` and ``agent`` groups and the command-line overrides, ``+agent.typo=1`` included) and
raises :class:`ConfigError` with one line naming the key, the value and what is allowed.

The top level, ``tracker:`` and ``agent:`` are the dataclasses below: a field per key, its type the
allowed type, ``allowed(...)`` its range. ``memory:`` is checked against its mixer's constructor
(:mod:`lifelong.memory_schema`) and ``stream:`` by the stream schema
(:func:`lifelong.envs.make.validate_stream_config`). The YAML files keep the defaults, so the
schema is not registered with Hydra's ConfigStore: the memory group has one schema per mixer, and
ranges are beyond structured configs anyway.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lifelong.config_checks import (
    Allowed,
    ConfigError,
    above,
    allowed,
    at_least,
    between,
    one_of,
    parse_section,
    show,
)
from lifelong.envs.make import StreamSpec, validate_stream_config
from lifelong.memory_schema import MemoryConfig, check_mixer_builds, parse_memory

__all__ = ["ConfigError", "RunConfig", "validate_run_config"]

MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; lifetime i is seeded seed + i
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
OVERLAP_CHOICES = (False, True, "thread", "process")  # agent.overlap: agents.build.make_learner


def parse_stream(raw: Any, key: str) -> StreamSpec:
    """The stream's :class:`~lifelong.envs.make.StreamSpec` (tasks, one pass of the schedule)."""
    try:
        return validate_stream_config(raw)
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0]) from None


@dataclass(frozen=True)
class TrackerConfig:
    """``tracker:`` (probes and diagnostics; each key is described in configs/config.yaml)."""

    probe_every: int = allowed(at_least(0))             # 0: no periodic probes
    probe_episodes: int = allowed(at_least(1))
    curve_probe_episodes: int = allowed(at_least(1))
    bootstrap_samples: int = allowed(at_least(100))
    adaptation_k: int = allowed(at_least(1))
    replay_episodes: list[int] | None = allowed()
    recovery_level: float = allowed(between(0, 1))
    log_every: int = allowed(at_least(0))               # 0: after every segment
    episode_log_every: int = allowed(at_least(0))
    revisit_window: int = allowed(at_least(1))
    dormant_window: int = allowed(at_least(1))
    dormant_threshold: float = allowed(between(0, 1, high_open=True))
    dormant_tau: float = allowed(at_least(0))
    curve_points: int = allowed(at_least(2))            # and even: see check_cross


@dataclass(frozen=True)
class GuardConfig:
    """``guard:`` (divergence limits checked after every segment; configs/config.yaml describes each)."""

    max_loss: float | None = allowed(above(0))          # null: no limit
    max_grad_norm: float | None = allowed(above(0))     # null: no limit
    max_state_norm: float | None = allowed(above(0))    # null: no limit
    on_divergence: str = allowed(one_of("stop", "rollback"))
    rollback_lr_factor: float = allowed(Allowed(low=0, high=1, low_open=True, high_open=True))
    max_rollbacks: int = allowed(at_least(0))


@dataclass(frozen=True)
class AgentConfig:
    """``agent:`` (configs/agent/ppo.yaml): the backbone and its PPO learner."""

    d_model: int = allowed(at_least(1))
    num_layers: int = allowed(at_least(1))
    mlp_ratio: float = allowed(above(0))
    segment_length: int = allowed(at_least(1))
    lr: float = allowed(above(0))
    adam_eps: float = allowed(above(0))
    weight_decay: float = allowed(at_least(0))
    gamma: float = allowed(between(0, 1))
    gae_lambda: float = allowed(between(0, 1))
    bootstrap_time_limits: bool = allowed()             # agents.rollout.RolloutCollector
    clip_coef: float = allowed(above(0))
    clip_vloss: bool = allowed()
    ent_coef: float = allowed(at_least(0))
    vf_coef: float = allowed(at_least(0))
    max_grad_norm: float = allowed(above(0))
    update_epochs: int = allowed(at_least(1))
    num_minibatches: int = allowed(at_least(1))         # and dividing num_envs
    norm_adv: bool = allowed()
    target_kl: float | None = allowed(above(0))         # null: no early stop
    acting_threads: int | None = allowed(at_least(1))   # null: every thread
    overlap: bool | str = allowed(one_of(*OVERLAP_CHOICES))  # agents.build.make_learner
    entropy_floor: float | None = allowed(between(0, 1))  # fraction of log|A|; null: a fixed ent_coef
    ent_coef_max: float = allowed(at_least(0))          # the floor's coefficient stays within [ent_coef, this]


@dataclass(frozen=True)
class RunConfig:
    """The whole composed config (``configs/config.yaml`` and its groups)."""

    seed: int = allowed(between(0, MAX_SEED))
    device: str = allowed()                             # auto | cpu | cuda | cuda:N: see check_device
    total_steps: int | None = allowed(at_least(1))      # null: one pass of the schedule; see check_cross
    num_envs: int = allowed(at_least(1))
    compile: bool = allowed()
    checkpoint_every: int = allowed(at_least(0))        # 0: no checkpoints by steps
    checkpoint_minutes: float = allowed(at_least(0))    # 0: no checkpoints by time
    checkpoint_keep: int = allowed(at_least(1))
    reference: bool = allowed()
    progress: bool = allowed()
    overwrite: bool = allowed()
    resume_existing: bool = allowed()
    debug: bool = allowed()
    tracker: TrackerConfig
    guard: GuardConfig
    agent: AgentConfig
    memory: MemoryConfig = field(metadata={"parse": parse_memory})
    stream: StreamSpec = field(metadata={"parse": parse_stream})


def check_device(device: str) -> None:
    """``auto``, ``cpu``, or a CUDA device that this machine has."""
    import torch

    kind, colon, index = device.partition(":")
    if device in ("auto", "cpu"):
        return
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ConfigError(f"device={show(device)} is unknown: choose device from {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device} but torch sees no CUDA GPU on this machine: use device=cpu (or device=auto)")
    count = torch.cuda.device_count()
    if colon and int(index) >= count:
        raise ConfigError(f"device={device} but this machine has {count} GPU(s): choose device=cuda:N with "
                          f"N in [0, {count - 1}]")


def resolve_device(device: str) -> "torch.device":
    """``auto``: a GPU when there is one, the CPU otherwise; any other value is a torch device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_cross(run: RunConfig) -> None:
    """The checks that involve more than one key."""
    agent, tracker, stream = run.agent, run.tracker, run.stream
    if run.seed + run.num_envs - 1 > MAX_SEED:
        raise ConfigError(f"seed={run.seed}: lifetime i is seeded seed + i, so seed + num_envs - 1 must be "
                          f"<= {MAX_SEED}: lower seed")
    if run.num_envs % agent.num_minibatches:
        divisors = [n for n in range(1, run.num_envs + 1) if run.num_envs % n == 0]
        raise ConfigError(f"agent.num_minibatches={agent.num_minibatches} does not divide num_envs={run.num_envs}: "
                          f"choose agent.num_minibatches from {', '.join(map(str, divisors))}")
    segment = run.num_envs * agent.segment_length
    if run.total_steps is not None and run.total_steps < segment:
        raise ConfigError(f"total_steps={run.total_steps} is less than one segment of learning "
                          f"(num_envs x segment_length = {segment}): raise it")
    if stream.schedule.unit != "steps":
        raise ConfigError(f"stream {stream.name!r} counts its blocks in {stream.schedule.unit}, which the lifetimes reach "
                          f"at different steps; blocks must cover the same env steps in every lifetime (docs/blocks.md): "
                          f"give the stream `unit: steps` and `steps_per_task`")
    if run.total_steps is None and stream.schedule.length < agent.segment_length:
        raise ConfigError(f"total_steps=null runs one pass of stream {stream.name!r} ({stream.schedule.length} steps "
                          f"per lifetime), less than one segment of learning (agent.segment_length="
                          f"{agent.segment_length}): set total_steps or lengthen the stream")
    if tracker.curve_points % 2:
        raise ConfigError(f"tracker.curve_points={tracker.curve_points} must be an even number >= 2")
    if round(agent.d_model * agent.mlp_ratio) < 1:
        raise ConfigError(f"agent.mlp_ratio={show(agent.mlp_ratio)} x agent.d_model={agent.d_model} rounds to an "
                          "MLP of 0 units: raise agent.mlp_ratio")
    if agent.entropy_floor is not None and agent.ent_coef_max < agent.ent_coef:
        raise ConfigError(f"agent.ent_coef_max={show(agent.ent_coef_max)} is below agent.ent_coef="
                          f"{show(agent.ent_coef)}: the entropy floor raises the coefficient from ent_coef up to "
                          "ent_coef_max, so set ent_coef_max >= ent_coef")


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config resolved into plain containers (Hydra's own ``hydra:`` section left out)."""
    values = {}
    for key in cfg:
        if key == "hydra":
            continue
        try:
            node = cfg[key]
            if isinstance(node, (DictConfig, ListConfig)):
                node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as error:
            raise ConfigError(f"{key} cannot be resolved: {str(error).splitlines()[0]}") from None
        values[key] = node
    return values


def parse_run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as a :class:`RunConfig`, every value checked (:class:`ConfigError` if one is refused)."""
    run = parse_section(RunConfig, plain_config(cfg))
    check_device(run.device)
    check_cross(run)
    check_mixer_builds(run.memory, run.agent.d_model)
    return run


def validate_run_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: the key, the value, what is allowed) unless every value
    of the composed ``lifelong run`` config is valid. Call it before any work starts."""
    parse_run_config(cfg)


#: settings added after runs were saved, each with the value that computes what a run saved without
#: it computed. `lifelong resume` fills them in; the checkpoint fingerprint and summary.json's
#: config_key leave a setting out at that value, so an older run resumes from its checkpoints and is
#: grouped with new runs that compute the same.
ADDED_SETTINGS: dict[str, Any] = {"agent.bootstrap_time_limits": True}
_ABSENT = object()


def with_added_settings(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a saved run's config) with every :data:`ADDED_SETTINGS` key it lacks set to its value."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in ADDED_SETTINGS.items():
        if OmegaConf.select(cfg, dotted, default=_ABSENT) is _ABSENT:
            OmegaConf.update(cfg, dotted, value, force_add=True)
    return cfg


def without_added_defaults(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain config (nested dicts) less every :data:`ADDED_SETTINGS` key that holds its value: what
    a hash of the configuration is taken over."""
    out = dict(plain)
    for dotted, value in ADDED_SETTINGS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for name in parents:
            if not isinstance(node.get(name), dict):
                break
            node[name] = dict(node[name])
            node = node[name]
        else:
            if leaf in node and node[leaf] == value:
                del node[leaf]
    return out
