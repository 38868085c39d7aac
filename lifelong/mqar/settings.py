"""The schema of a ``lifelong mqar`` config (``configs/mqar/config.yaml``): every value checked
before any work starts, one line naming the key, the value and what is allowed (as ``lifelong run``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from lifelong.config_checks import ConfigError, above, allowed, at_least, between, parse_section, show
from lifelong.memory_schema import MemoryConfig, check_mixer_builds, parse_memory
from lifelong.mqar.data import MQARSettingError, MQARSpec

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class TaskSettings:
    """``task:`` one MQAR task (lifelong/mqar/data.py)."""

    vocab_size: int = allowed(at_least(1))
    seq_len: int = allowed(at_least(1))
    num_pairs: int | list = allowed()   # an int, or a list: train on an equal mixture, test each
    power_a: float = allowed(above(0))

    @property
    def pairs(self) -> list[int]:
        """The numbers of pairs trained and tested (one, or the mixture's, sorted)."""
        return sorted(set(self.num_pairs)) if isinstance(self.num_pairs, list) else [self.num_pairs]

    @property
    def specs(self) -> list[MQARSpec]:
        return [MQARSpec(self.vocab_size, self.seq_len, p, float(self.power_a)) for p in self.pairs]


@dataclass(frozen=True)
class ModelSettings:
    """``model:`` embedding -> blocks -> head (lifelong/mqar/model.py)."""

    d_model: int = allowed(at_least(1))
    num_layers: int = allowed(at_least(1))
    mlp_ratio: float = allowed(above(0))
    short_conv: int = allowed(at_least(0))


@dataclass(frozen=True)
class TrainSettings:
    """``train:`` the optimizer, the schedule and the data sizes."""

    steps: int = allowed(at_least(1))
    batch_size: int = allowed(at_least(1))
    lr: float = allowed(above(0))
    weight_decay: float = allowed(at_least(0))
    warmup_frac: float = allowed(between(0, 1, high_open=True))
    grad_clip: float | None = allowed(above(0))
    num_train: int = allowed(at_least(1))
    num_test: int = allowed(at_least(1))
    eval_every: int = allowed(at_least(0))
    eval_batch_size: int = allowed(at_least(1))


@dataclass(frozen=True)
class MQARSettings:
    """The whole composed ``lifelong mqar`` config."""

    seed: int = allowed(between(0, MAX_SEED))
    device: str = allowed()
    threads: int | None = allowed(at_least(1))
    progress: bool = allowed()
    overwrite: bool = allowed()
    debug: bool = allowed()
    label: str | None = allowed()       # the mixer's name in results and reports (null: see mixer_label)
    task: TaskSettings
    model: ModelSettings
    train: TrainSettings
    memory: MemoryConfig = field(metadata={"parse": parse_memory})

    @property
    def mixer_label(self) -> str:
        """The mixer as results and reports name it: ``label``, else the memory name (with LoLA's
        selection rule, e.g. ``lola-random``)."""
        if self.label:
            return self.label
        selection = self.memory.kwargs.get("selection")
        return f"{self.memory.name}-{selection}" if selection is not None else self.memory.name


def check_cross(s: MQARSettings) -> None:
    """The checks that involve more than one key."""
    pairs = s.task.num_pairs
    if isinstance(pairs, list) and (not pairs or any(isinstance(p, bool) or not isinstance(p, int) for p in pairs)):
        raise ConfigError(f"task.num_pairs={show(pairs)} must be an integer or a non-empty list of integers "
                          "(e.g. task.num_pairs=[4,8,16]: an equal mixture, each tested apart)")
    try:
        for spec in s.task.specs:
            spec.check(prefix="task.")
    except MQARSettingError as error:
        raise ConfigError(str(error)) from None
    d = s.model.d_model
    if round(d * s.model.mlp_ratio) < 1:
        raise ConfigError(f"model.mlp_ratio={show(s.model.mlp_ratio)} x model.d_model={d} rounds to an MLP of "
                          "0 units: raise model.mlp_ratio")


def parse_settings(cfg: DictConfig | dict) -> MQARSettings:
    """The composed config as :class:`MQARSettings` (:class:`ConfigError`, one line, if a value is refused).
    ``model.d_model`` against ``memory.num_heads`` is checked where ``lifelong run``'s width is
    (``check_mixer_builds``)."""
    from lifelong.config_schema import check_device, plain_config

    raw = plain_config(cfg) if isinstance(cfg, DictConfig) else cfg
    settings = parse_section(MQARSettings, raw)
    check_device(settings.device)
    check_cross(settings)
    check_mixer_builds(settings.memory, settings.model.d_model, width_key="model.d_model")
    return settings
