"""Every value of a ``lifelong run`` config is checked before work starts (lifelong/config_schema.py).

The configs are composed the way ``lifelong run`` composes them (Hydra's compose API over the
shipped ``lifelong.configs``), then validated; a refusal is one line naming the key, the value and
what is allowed.
"""
from __future__ import annotations

import copy
from dataclasses import fields
from types import SimpleNamespace
from typing import get_args, get_type_hints

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lifelong.config_files import config_dir, group_choices
from lifelong.agents.build import config_fingerprint, run_info
from lifelong.config_schema import (
    ADDED_SETTINGS,
    AgentConfig,
    ConfigError,
    RunConfig,
    TrackerConfig,
    validate_run_config,
    with_added_settings,
)


@pytest.fixture(scope="module")
def composed():
    """``composed(*overrides)``: the run config Hydra composes for those command-line overrides."""
    with initialize_config_module(config_module="lifelong.configs", version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


def refusal(cfg) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_run_config(cfg)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_a_refusal_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_the_shipped_default_config_is_valid(composed):
    validate_run_config(composed())


@pytest.mark.parametrize("memory", group_choices("memory"))
def test_every_shipped_memory_config_is_valid(composed, memory):
    validate_run_config(composed(f"memory={memory}"))


@pytest.mark.parametrize("stream", group_choices("stream"))
def test_every_shipped_stream_config_is_valid(composed, stream):
    validate_run_config(composed(f"stream={stream}", "total_steps=1000000"))


def test_the_schema_has_exactly_the_keys_of_the_shipped_files():
    """A key added to configs/config.yaml or configs/agent/ppo.yaml needs its rule here too."""
    shipped = OmegaConf.load(config_dir() / "config.yaml")
    top = set(shipped) - {"defaults", "hydra"}
    assert top | {"memory", "stream", "agent"} == {f.name for f in fields(RunConfig)}
    assert set(shipped.tracker) == {f.name for f in fields(TrackerConfig)}
    assert set(OmegaConf.load(config_dir() / "agent" / "ppo.yaml")) == {f.name for f in fields(AgentConfig)}


@pytest.mark.parametrize("schema", [RunConfig, TrackerConfig, AgentConfig])
def test_every_numeric_setting_has_a_range(schema):
    hints = get_type_hints(schema)
    numeric = [f.name for f in fields(schema) if {int, float} & {hints[f.name], *get_args(hints[f.name])}]
    assert numeric
    assert [name for name in numeric if schema.__dataclass_fields__[name].metadata.get("allowed") is None] == []


REFUSED = {
    # unknown keys, wherever they are
    "+agent.typo=1": "unknown key agent.typo=1: agent takes acting_threads, adam_eps",
    "+tracker.typo=1": "unknown key tracker.typo=1: tracker takes adaptation_k",
    "+typo=1": "unknown key typo=1: the config takes agent, checkpoint_every",
    "+memory.typo=1": "unknown key memory.typo=1: GatedDeltaNet takes _target_, allow_neg_eigval, backend",
    "+memory.d_model=64": "unknown key memory.d_model=64: GatedDeltaNet takes",
    # wrong types
    "num_envs=2.5": "num_envs=2.5 must be an integer",
    "seed=abc": "seed='abc' must be an integer",
    "compile=1": "compile=1 must be true or false",
    "agent.lr=fast": "agent.lr='fast' must be a number",
    "agent.target_kl=high": "agent.target_kl='high' must be a number or null",
    "memory.num_heads=2.5": "memory.num_heads=2.5 must be an integer",
    "memory.use_gate=yes": "memory.use_gate='yes' must be true or false",
    # top-level ranges
    "seed=-1": "seed=-1 is out of range: seed must be in [0, 4294967295]",
    "seed=4294967295": "seed=4294967295: lifetime i is seeded seed + i, so seed + num_envs - 1 must be <= 4294967295",
    "num_envs=0": "num_envs=0 is out of range: num_envs must be >= 1",
    "total_steps=0": "total_steps=0 is out of range: total_steps must be >= 1",
    "total_steps=1000": "total_steps=1000 is less than one segment of learning (num_envs x segment_length = 1024): raise it",
    "checkpoint_every=-1": "checkpoint_every=-1 is out of range: checkpoint_every must be >= 0",
    "checkpoint_minutes=-0.5": "checkpoint_minutes=-0.5 is out of range: checkpoint_minutes must be >= 0",
    "checkpoint_keep=0": "checkpoint_keep=0 is out of range: checkpoint_keep must be >= 1",
    "device=tpu": "device='tpu' is unknown: choose device from auto, cpu, cuda, cuda:N",
    "device=cuda:x": "device='cuda:x' is unknown: choose device from auto, cpu, cuda, cuda:N",
    # tracker
    "tracker.probe_every=-1": "tracker.probe_every=-1 is out of range: tracker.probe_every must be >= 0",
    "tracker.probe_episodes=0": "tracker.probe_episodes=0 is out of range: tracker.probe_episodes must be >= 1",
    "tracker.curve_probe_episodes=0": "tracker.curve_probe_episodes=0 is out of range: tracker.curve_probe_episodes must be >= 1",
    "tracker.bootstrap_samples=50": "tracker.bootstrap_samples=50 is out of range: tracker.bootstrap_samples must be >= 100",
    "tracker.dormant_tau=-0.1": "tracker.dormant_tau=-0.1 is out of range: tracker.dormant_tau must be >= 0",
    "tracker.adaptation_k=0": "tracker.adaptation_k=0 is out of range: tracker.adaptation_k must be >= 1",
    "tracker.log_every=-1": "tracker.log_every=-1 is out of range: tracker.log_every must be >= 0",
    "tracker.episode_log_every=-1": "tracker.episode_log_every=-1 is out of range: tracker.episode_log_every must be >= 0",
    "tracker.revisit_window=0": "tracker.revisit_window=0 is out of range: tracker.revisit_window must be >= 1",
    "tracker.dormant_window=0": "tracker.dormant_window=0 is out of range: tracker.dormant_window must be >= 1",
    "tracker.dormant_threshold=1.0": "tracker.dormant_threshold=1 is out of range: tracker.dormant_threshold must be in [0, 1)",
    "tracker.curve_points=0": "tracker.curve_points=0 is out of range: tracker.curve_points must be >= 2",
    "tracker.curve_points=7": "tracker.curve_points=7 must be an even number >= 2",
    # agent
    "agent.d_model=0": "agent.d_model=0 is out of range: agent.d_model must be >= 1",
    "agent.d_model=30": "agent.d_model=30 is not divisible by num_heads=4 (memory=gated_deltanet)",
    "agent.num_layers=0": "agent.num_layers=0 is out of range: agent.num_layers must be >= 1",
    "agent.mlp_ratio=0": "agent.mlp_ratio=0 is out of range: agent.mlp_ratio must be > 0",
    "agent.mlp_ratio=0.001": "agent.mlp_ratio=0.001 x agent.d_model=128 rounds to an MLP of 0 units",
    "agent.segment_length=0": "agent.segment_length=0 is out of range: agent.segment_length must be >= 1",
    "agent.lr=0": "agent.lr=0 is out of range: agent.lr must be > 0",
    "agent.adam_eps=0": "agent.adam_eps=0 is out of range: agent.adam_eps must be > 0",
    "agent.weight_decay=-0.1": "agent.weight_decay=-0.1 is out of range: agent.weight_decay must be >= 0",
    "agent.gamma=1.5": "agent.gamma=1.5 is out of range: agent.gamma must be in [0, 1]",
    "agent.gae_lambda=-0.1": "agent.gae_lambda=-0.1 is out of range: agent.gae_lambda must be in [0, 1]",
    "agent.clip_coef=0": "agent.clip_coef=0 is out of range: agent.clip_coef must be > 0",
    "agent.ent_coef=-0.01": "agent.ent_coef=-0.01 is out of range: agent.ent_coef must be >= 0",
    "agent.vf_coef=-1": "agent.vf_coef=-1 is out of range: agent.vf_coef must be >= 0",
    "agent.max_grad_norm=0": "agent.max_grad_norm=0 is out of range: agent.max_grad_norm must be > 0",
    "agent.update_epochs=0": "agent.update_epochs=0 is out of range: agent.update_epochs must be >= 1",
    "agent.num_minibatches=0": "agent.num_minibatches=0 is out of range: agent.num_minibatches must be >= 1",
    "agent.num_minibatches=3": "agent.num_minibatches=3 does not divide num_envs=8: choose agent.num_minibatches from 1, 2, 4, 8",
    "agent.target_kl=0": "agent.target_kl=0 is out of range: agent.target_kl must be > 0",
    "agent.acting_threads=0": "agent.acting_threads=0 is out of range: agent.acting_threads must be >= 1",
    # memory
    "memory.reset_on=always": "memory.reset_on='always' is unknown: choose memory.reset_on from never, episode, task",
    "memory.num_heads=0": "memory.num_heads=0 is out of range: memory.num_heads must be >= 1",
    "memory.chunk_size=0": "memory.chunk_size=0 is out of range: memory.chunk_size must be >= 1",
    "memory.backend=cuda": "memory.backend='cuda' is unknown: choose memory.backend from auto, torch, triton",
    "memory._target_=nowhere.Mixer": "memory._target_='nowhere.Mixer' cannot be imported (No module named 'nowhere')",
    "memory._target_=torch.nn.Linear": "memory._target_='torch.nn.Linear' is not a MemoryMixer class",
}


@pytest.mark.parametrize("override", REFUSED)
def test_a_bad_value_is_refused_in_one_line_naming_the_key_the_value_and_the_range(composed, override):
    assert REFUSED[override] in refusal(composed(override))


@pytest.mark.parametrize("overrides, message", [
    (["agent.entropy_floor=0.3", "agent.ent_coef=0.1", "agent.ent_coef_max=0.05"],
     "agent.ent_coef_max=0.05 is below agent.ent_coef=0.1"),
    (["memory=gla", "memory.chunk_size=48"], "memory=gla: GLA needs a power-of-two chunk_size (e.g. 16, 32, 64), got 48"),
    (["memory=softmax", "memory.max_cache=0"], "memory=softmax: max_cache must be None"),
    (["memory=mamba2", "memory.dt_min=1.0"], "memory=mamba2: need 0 < dt_min <= dt_max, got dt_min=1.0, dt_max=0.1"),
    (["memory=lola", "memory.selection=best"], "memory=lola: unknown selection 'best'"),
    (["memory=ttt_linear", "+memory.chunk_size=64"], "unknown key memory.chunk_size=64: TTTLinear takes _target_, backend"),
])
def test_a_mixer_refuses_its_own_bad_values_before_any_work(composed, overrides, message):
    assert message in refusal(composed(*overrides))


@pytest.mark.parametrize("override, message", [
    ("~memory.num_heads", "memory.num_heads is missing: GatedDeltaNet needs it (memory=gated_deltanet)"),
    ("~agent.lr", "agent.lr is missing: set agent.lr=<a number>"),
    ("~tracker", "tracker is missing: set tracker=<a mapping>"),
    ("~memory", "memory is missing: set memory=<name> from configs/memory/"),
])
def test_a_key_taken_away_is_refused_naming_it(composed, override, message):
    assert refusal(composed(override)) == message


def test_a_bad_stream_value_is_refused_by_the_stream_schema(composed):
    message = refusal(composed("stream=smoke", "stream.steps_per_task=0"))
    assert message == "stream 'smoke': schedule block durations must be >= 2 steps, got 0"
    # a block in steps holds its autoreset token and at least one step (docs/blocks.md)
    message = refusal(composed("stream=smoke", "stream.steps_per_task=1"))
    assert message == "stream 'smoke': schedule block durations must be >= 2 steps, got 1"
    message = refusal(composed("stream=smoke", "+stream.typo=1"))
    assert message.startswith("stream 'smoke': the stream config has unknown key(s) ['typo']")


def test_a_run_needs_a_stream_counted_in_steps_with_or_without_total_steps(composed):
    episodes = ("stream=smoke", "stream.unit=episodes", "+stream.episodes_per_task=3")  # no shipped stream counts episodes
    for extra in ((), ("total_steps=5000",)):
        message = refusal(composed(*episodes, *extra))
        assert message.startswith("stream 'smoke' counts its blocks in episodes, which the lifetimes reach at different steps")
        assert "docs/blocks.md" in message


def test_total_steps_null_needs_a_pass_of_the_stream_as_long_as_one_segment(composed):
    message = refusal(composed("stream=smoke", "stream.steps_per_task=20", "agent.segment_length=128"))
    assert "(60 steps per lifetime), less than one segment of learning (agent.segment_length=128)" in message


def test_total_steps_of_exactly_one_segment_is_enough(composed):
    validate_run_config(composed("num_envs=2", "agent.segment_length=32", "total_steps=64"))


def test_a_width_that_the_heads_divide_is_accepted(composed):
    validate_run_config(composed("agent.d_model=36", "memory.num_heads=6"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_naming_the_cpu(composed):
    message = refusal(composed("device=cuda"))
    assert message.startswith("device=cuda but torch sees no CUDA GPU") and "device=cpu" in message


@pytest.mark.parametrize("device, accepted", [("cuda", True), ("cuda:0", True), ("cuda:1", False)])
def test_a_cuda_device_must_be_one_this_machine_has(monkeypatch, composed, device, accepted):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    if accepted:
        validate_run_config(composed(f"device={device}"))
    else:
        assert refusal(composed(f"device={device}")) == (
            "device=cuda:1 but this machine has 1 GPU(s): choose device=cuda:N with N in [0, 0]")


def test_validation_leaves_the_global_rng_untouched(composed):
    cfg = composed()
    before = torch.random.get_rng_state()
    validate_run_config(cfg)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("experiment", group_choices("experiment"))
def test_every_shipped_experiment_config_is_valid(composed, experiment):
    validate_run_config(composed(f"+experiment={experiment}"))


def test_the_long_stream_experiment_is_mg_cycle_with_the_entropy_floor(composed):
    cfg = composed("+experiment=long-stream")
    assert cfg.stream.name == "mg-cycle" and cfg.agent.entropy_floor == 0.3


# ---- a run saved before a setting existed -----------------------------------------------------------
def saved_before(cfg, dotted):
    """``cfg`` as a version of lifelong without the setting ``dotted`` saved it (and `resume` loads it)."""
    old = OmegaConf.create(OmegaConf.to_container(cfg))
    *parents, leaf = dotted.split(".")
    del OmegaConf.select(old, ".".join(parents))[leaf]
    return old


@pytest.mark.parametrize("dotted", list(ADDED_SETTINGS))
def test_a_run_saved_before_a_setting_existed_validates_hashes_and_groups_as_that_settings_old_behaviour(composed, dotted):
    new = composed()
    assert OmegaConf.select(new, dotted) == ADDED_SETTINGS[dotted]  # the shipped default is the old behaviour
    old = saved_before(new, dotted)
    assert "missing" in refusal(old)
    filled = with_added_settings(old)
    validate_run_config(filled)
    assert OmegaConf.select(filled, dotted) == ADDED_SETTINGS[dotted] and saved_before(filled, dotted) == old
    assert config_fingerprint(old) == config_fingerprint(new) == config_fingerprint(filled)
    settings = SimpleNamespace(seed=0, total_steps=1000)
    assert run_info(old, settings)["config_key"] == run_info(new, settings)["config_key"]
    other = copy.deepcopy(new)
    OmegaConf.update(other, dotted, not ADDED_SETTINGS[dotted])
    assert config_fingerprint(other) != config_fingerprint(new)
    assert run_info(other, settings)["config_key"] != run_info(new, settings)["config_key"]
