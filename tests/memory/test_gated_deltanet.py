"""GatedDeltaNet / DeltaNet layer specifics (the generic protocol is in test_contract.py)."""
from __future__ import annotations

import pytest
import torch

from lifelong.memory_layers.gated_deltanet import LOG_DECAY_MIN, DeltaState, GatedDeltaNet
from lifelong.memory_layers.registry import build_mixer, load_memory_config

D, H = 32, 4


def silence_writes(mixer: GatedDeltaNet) -> None:
    """beta ~ 1e-13: tokens no longer write, so only the decay can change the state."""
    with torch.no_grad():
        mixer.beta_proj.weight.zero_()
        mixer.beta_proj.bias.fill_(-30.0)


def random_state(batch: int) -> DeltaState:
    return DeltaState(torch.randn(batch, H, D // H, D // H))


def test_configs_build_deltanet_without_gate_and_gated_deltanet_with_it():
    gdn = build_mixer(load_memory_config("gated_deltanet"), d_model=D)
    dn = build_mixer(load_memory_config("deltanet"), d_model=D)
    assert isinstance(gdn, GatedDeltaNet) and gdn.use_gate
    assert isinstance(dn, GatedDeltaNet) and not dn.use_gate
    assert not hasattr(dn, "A_log") and not hasattr(dn, "dt_proj")


def test_deltanet_state_does_not_decay_when_nothing_is_written():
    mixer = GatedDeltaNet(D, H, use_gate=False)
    silence_writes(mixer)
    S0 = random_state(2)
    with torch.no_grad():
        _, S = mixer(torch.randn(2, 50, D), S0)
    assert torch.allclose(S.S, S0.S, rtol=1e-5, atol=1e-6)


def test_gated_deltanet_state_decays_when_nothing_is_written():
    mixer = GatedDeltaNet(D, H, use_gate=True)
    silence_writes(mixer)
    S0 = random_state(2)
    with torch.no_grad():
        _, S = mixer(torch.randn(2, 50, D), S0)
    per_head_ratio = S.S.norm(dim=(-2, -1)) / S0.S.norm(dim=(-2, -1))
    assert (per_head_ratio < 0.999).all()


@pytest.mark.parametrize("neg_eigval,upper", [(False, 1.0), (True, 2.0)])
def test_beta_lies_in_zero_one_or_zero_two_with_negative_eigenvalues(neg_eigval, upper):
    mixer = GatedDeltaNet(D, H, allow_neg_eigval=neg_eigval)
    with torch.no_grad():
        mixer.beta_proj.bias.fill_(6.0)  # saturate towards the upper bound
        beta = mixer._project(torch.randn(3, 10, D))[4]
    assert beta.shape == (3, 10, H)
    assert (beta > 0).all() and (beta < upper).all()
    assert beta.max() > 0.99 * upper


def test_log_decay_is_nonpositive_and_floored_even_for_extreme_inputs():
    mixer = GatedDeltaNet(D, H)
    with torch.no_grad():
        mixer.A_log.fill_(5.0)  # A = e^5
        g = mixer._project(torch.randn(2, 9, D) * 1e3)[3]
    assert g.shape == (2, 9, H)
    assert torch.isfinite(g).all() and (g <= 0).all() and (g >= LOG_DECAY_MIN).all()


def test_queries_and_keys_are_unit_norm_per_head():
    mixer = GatedDeltaNet(D, H)
    q, k = mixer._project(torch.randn(2, 5, D))[:2]
    assert q.shape == (2, 5, H, D // H)
    assert torch.allclose(q.norm(dim=-1), torch.ones(2, 5, H), atol=1e-5)
    assert torch.allclose(k.norm(dim=-1), torch.ones(2, 5, H), atol=1e-5)


@pytest.mark.parametrize("use_gate", [True, False])
def test_every_parameter_receives_a_gradient(use_gate):
    mixer = GatedDeltaNet(D, H, use_gate=use_gate, chunk_size=8)
    y, S = mixer(torch.randn(2, 21, D), random_state(2))
    (y.pow(2).mean() + S.S.pow(2).mean()).backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_step_matches_forward_on_one_token_and_returns_a_fresh_state():
    mixer = GatedDeltaNet(D, H, allow_neg_eigval=True)
    x = torch.randn(3, D)
    S0 = random_state(3)
    before = S0.S.clone()
    with torch.no_grad():
        y_step, s_step = mixer.step(x, S0)
        y_fwd, s_fwd = mixer(x[:, None], S0)
    assert torch.allclose(y_step, y_fwd[:, 0], atol=1e-5)
    assert torch.allclose(s_step.S, s_fwd.S, atol=1e-5)
    assert torch.equal(S0.S, before), "the input state was modified in place"


def test_state_metrics_report_norm_and_effective_rank():
    mixer = GatedDeltaNet(D, H)
    metrics = mixer.state_metrics(random_state(2))
    assert metrics["state_norm"] > 0
    assert 1.0 <= metrics["state_erank"] <= D // H
    assert metrics["state_bytes"] == 2 * H * (D // H) ** 2 * 4


def test_wrong_state_or_input_shapes_raise_clear_errors():
    mixer = GatedDeltaNet(D, H)
    with pytest.raises(ValueError, match="init_state"):
        mixer(torch.randn(2, 5, D), mixer.init_state(3, "cpu"))
    with pytest.raises(ValueError, match=r"x must be \[B, T, 32\]"):
        mixer(torch.randn(2, 5, D + 1), mixer.init_state(2, "cpu"))
    with pytest.raises(ValueError, match="one token"):
        mixer.step(torch.randn(2, 1, D), mixer.init_state(2, "cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        GatedDeltaNet(D, H, backend="gpu")
