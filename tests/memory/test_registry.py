"""Building mixers from their configs."""
import pytest

from lifelong.memory_layers.registry import available_mixers, build_backbone, load_memory_config


def test_unknown_mixer_names_the_valid_choices():
    with pytest.raises(ValueError, match="unknown mixer 'nope'.*gated_deltanet"):
        load_memory_config("nope")


def test_every_config_names_itself_and_a_target():
    for name in available_mixers():
        cfg = load_memory_config(name)
        assert cfg.name == name, f"configs/memory/{name}.yaml says name: {cfg.name}"
        assert "_target_" in cfg and cfg.reset_on in ("never", "episode", "task")


def test_a_backbone_stacks_the_configured_mixer():
    backbone = build_backbone(load_memory_config("gated_deltanet"), d_model=32, num_layers=3, mlp_ratio=2.0)
    state = backbone.init_state(2, "cpu")
    assert len(backbone.blocks) == 3 and len(state) == 3
