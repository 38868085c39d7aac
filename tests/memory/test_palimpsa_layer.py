"""The Palimpsa layer: metaplasticity off is Mamba2, precision and importance stay in range, the
prior precision is learned, and the Triton path agrees with the torch path."""
from __future__ import annotations

import pytest
import torch

from lifelong.kernels.palimpsa import PalimpsaState
from lifelong.memory_layers.mamba2 import Mamba2
from lifelong.memory_layers.palimpsa import Palimpsa
from lifelong.memory_layers.registry import build_mixer, load_memory_config

from helpers.tolerances import rel_rms

D, H, T = 32, 4, 37



def test_without_metaplasticity_the_layer_is_mamba2_given_mamba2_weights():
    mamba = Mamba2(D, H, chunk_size=16)
    layer = Palimpsa(D, H, metaplasticity=False, chunk_size=16)
    layer.load_state_dict(mamba.state_dict(), strict=True)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        y_mamba, s_mamba = mamba(x, mamba.init_state(2, "cpu"))
        y, state = layer(x, layer.init_state(2, "cpu"))
        y_step_mamba, _ = mamba.step(x[:, 0], s_mamba)
        y_step, _ = layer.step(x[:, 0], state)
    assert rel_rms(y, y_mamba) < 1e-5
    assert rel_rms(state.M, s_mamba.S) < 1e-5
    assert torch.count_nonzero(state.I_tilde) == 0
    assert rel_rms(y_step, y_step_mamba) < 1e-5


def test_metaplasticity_changes_the_outputs_of_the_same_mamba2_weights():
    layer = Palimpsa(D, H, metaplasticity=True)
    plain = Palimpsa(D, H, metaplasticity=False)
    plain.load_state_dict(layer.state_dict(), strict=False)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        y, _ = layer(x, layer.init_state(2, "cpu"))
        y_plain, _ = plain(x, plain.init_state(2, "cpu"))
    assert rel_rms(y, y_plain) > 1e-3


def test_importance_rates_are_in_the_unit_interval_per_head_and_value_channel():
    layer = Palimpsa(D, H)
    x = torch.randn(2, T, D) * 10
    q, k, v, g = layer.project(x)
    b = layer.importance(x, v)
    assert b.shape == (2, T, H, D // H)
    assert bool(((b >= 0) & (b <= 1)).all())


def test_precision_metrics_stay_at_or_above_the_prior():
    layer = Palimpsa(D, H, prior_precision=0.5)
    with torch.no_grad():
        _, state = layer(torch.randn(3, 90, D), layer.init_state(3, "cpu"))
    metrics = layer.state_metrics(state)
    assert {"state_norm", "state_erank", "precision_mean", "precision_min", "precision_max"} <= set(metrics)
    assert metrics["precision_min"] >= 0.5 - 1e-6
    assert metrics["precision_min"] <= metrics["precision_mean"] <= metrics["precision_max"]
    assert metrics["precision_max"] > 0.5, "90 important writes must raise some precision above the prior"


def test_a_fresh_state_has_the_prior_precision_everywhere():
    layer = Palimpsa(D, H, prior_precision=2.0)
    metrics = layer.state_metrics(layer.init_state(2, "cpu"))
    assert metrics["precision_min"] == pytest.approx(2.0) and metrics["precision_max"] == pytest.approx(2.0)
    assert metrics["state_norm"] == 0.0


def test_the_prior_precision_is_positive_learned_and_initialised_from_the_config():
    layer = Palimpsa(D, H, prior_precision=3.0)
    assert torch.allclose(layer.prior_precision(), torch.full((H,), 3.0))
    y, state = layer(torch.randn(2, T, D), layer.init_state(2, "cpu"))
    (y.pow(2).mean() + state.M.pow(2).mean()).backward()
    grad = layer.prior_precision_raw.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert layer.b_proj.weight.grad.abs().sum() > 0


def test_the_config_builds_a_metaplastic_palimpsa_with_its_state():
    cfg = load_memory_config("palimpsa")
    layer = build_mixer(cfg, d_model=D)
    assert isinstance(layer, Palimpsa) and layer.metaplasticity and cfg.reset_on == "never"
    state = layer.init_state(2, "cpu")
    assert isinstance(state, PalimpsaState)
    assert state.M.shape == state.I_tilde.shape == (2, cfg.num_heads, D // cfg.num_heads, D // cfg.num_heads)


def test_non_positive_prior_precision_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="prior_precision must be positive"):
        Palimpsa(D, H, prior_precision=0.0)


@pytest.mark.triton
def test_triton_backend_matches_the_torch_backend_forward_and_step():
    torch.manual_seed(0)
    layer = Palimpsa(64, 4)
    layer_triton = Palimpsa(64, 4, backend="triton")
    layer_triton.load_state_dict(layer.state_dict())
    x = torch.randn(1, 20, 64)
    with torch.no_grad():
        y, state = layer(x, layer.init_state(1, "cpu"))
        y_tr, state_tr = layer_triton(x, layer_triton.init_state(1, "cpu"))
        y_step, _ = layer.step(x[:, 0], state)
        y_step_tr, _ = layer_triton.step(x[:, 0], state_tr)
    assert rel_rms(y_tr, y) < 5e-3
    assert rel_rms(state_tr.I_tilde, state.I_tilde) < 5e-3
    assert rel_rms(y_step_tr, y_step) < 1e-3
