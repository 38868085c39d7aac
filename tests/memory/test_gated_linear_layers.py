"""Layer-specific properties of the gated linear mixers (the generic contract is test_contract.py):
Mamba2's scalar decay and its initialisation, GLA's per-channel low-rank gate, and linear
attention's state that never forgets."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lifelong.memory_layers.gla import GLA
from lifelong.memory_layers.linear_attention import LinearAttention
from lifelong.memory_layers.mamba2 import GLAState, Mamba2
from lifelong.memory_layers.registry import build_mixer, load_memory_config
from lifelong.memory_layers.state import clone_state

D, H = 32, 4
DH = D // H


def warm(mixer, batch: int = 2, T: int = 9):
    with torch.no_grad():
        return mixer(torch.randn(batch, T, D), mixer.init_state(batch, "cpu"))[1]


# ---- Mamba2 -----------------------------------------------------------------------------------


def test_mamba2_init_puts_dt_and_a_in_their_configured_ranges():
    m = Mamba2(256, 64, dt_min=1e-3, dt_max=0.1, a_min=1.0, a_max=16.0)
    dt = F.softplus(m.dt_bias.detach())
    A = m.A_log.detach().exp()
    assert dt.shape == A.shape == (64,)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert A.min() >= 1.0 and A.max() <= 16.0
    assert dt.max() / dt.min() > 10, "dt should spread log-uniformly over the range"


def test_mamba2_decay_is_a_scalar_per_head_strictly_inside_0_1():
    m = Mamba2(D, H)
    q, k, v, g = m.project(torch.randn(3, 17, D) * 3)
    assert q.shape == k.shape == (3, 17, H, DH) and v.shape == (3, 17, H, DH)
    assert g.shape == (3, 17, H)
    alpha = g.exp()
    assert (alpha > 0).all() and (alpha < 1).all()


def test_mamba2_queries_and_keys_are_unit_norm_per_head():
    m = Mamba2(D, H)
    q, k, _, _ = m.project(torch.randn(2, 5, D))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2, 5, H))
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(2, 5, H))


def test_mamba2_project_and_output_accept_one_token_or_a_sequence():
    """Palimpsa subclasses Mamba2 and reuses project/output on both layouts."""
    m = Mamba2(D, H)
    x = torch.randn(2, 6, D)
    seq = m.project(x)
    tok = m.project(x[:, 3])
    for a, b in zip(tok, seq):
        torch.testing.assert_close(a, b[:, 3])
    o = torch.randn(2, 6, H, DH)
    torch.testing.assert_close(m.output(o[:, 3], x[:, 3]), m.output(o, x)[:, 3])


def test_mamba2_state_decays_by_exp_of_minus_a_dt_on_empty_input():
    """x = 0 writes nothing (SiLU(0) = 0 keys), so S_T = exp(-T A softplus(dt_bias)) S_0 per head."""
    m = Mamba2(D, H)
    state0 = warm(m)
    T = 13
    with torch.no_grad():
        _, state = m(torch.zeros(2, T, D), clone_state(state0))
        alpha = torch.exp(-m.A_log.exp() * F.softplus(m.dt_bias))  # [H]
    expected = state0.S * alpha.pow(T)[None, :, None, None]
    torch.testing.assert_close(state.S, expected)
    assert isinstance(state, GLAState) and state.S.dtype == torch.float32


def test_mamba2_gate_parameters_receive_gradients():
    m = Mamba2(D, H)
    y, _ = m(torch.randn(2, 20, D), warm(m))
    y.pow(2).mean().backward()
    for name in ("dt_bias", "A_log"):
        grad = getattr(m, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert m.dt_proj.weight.grad.abs().sum() > 0


def test_mamba2_rejects_inverted_init_ranges():
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        Mamba2(D, H, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="a_min <= a_max"):
        Mamba2(D, H, a_min=0.0)


# ---- GLA --------------------------------------------------------------------------------------


def test_gla_gate_is_per_key_channel_from_a_low_rank_projection():
    m = GLA(D, H, gate_low_rank_dim=5, gate_normalizer=16.0)
    assert m.g_proj[0].weight.shape == (5, D) and m.g_proj[1].weight.shape == (D, 5)
    x = torch.randn(2, 7, D) * 4
    _, k, _, g = m.project(x)
    assert g.shape == k.shape == (2, 7, H, DH)
    expected = F.logsigmoid(m.g_proj(x)).unflatten(-1, (H, DH)) / 16.0
    torch.testing.assert_close(g, expected)
    assert (g < 0).all(), "decays must be in (0, 1)"


def test_gla_gate_normalizer_slows_forgetting():
    """alpha = sigmoid(.)^(1/normalizer): a larger normaliser keeps more of the state."""
    x = torch.randn(2, 7, D)
    torch.manual_seed(3)
    fast = GLA(D, H, gate_normalizer=1.0)
    torch.manual_seed(3)
    slow = GLA(D, H, gate_normalizer=16.0)
    g_fast, g_slow = fast.project(x)[3], slow.project(x)[3]
    torch.testing.assert_close(g_slow * 16.0, g_fast)
    assert (g_slow.exp() > g_fast.exp()).all()


def test_gla_state_decays_channel_by_channel_on_empty_input():
    """x = 0 writes nothing (k = 0) and every key channel decays at its own rate exp(g)."""
    m = GLA(D, H)
    state0 = warm(m)
    T = 11
    with torch.no_grad():
        _, state = m(torch.zeros(2, T, D), clone_state(state0))
        g = (F.logsigmoid(m.g_proj[1].bias) / m.gate_normalizer).view(H, DH)  # x = 0: only the bias
    torch.testing.assert_close(state.S, state0.S * (T * g).exp()[None, :, :, None])
    assert g.std() > 0, "channels should decay at different rates"


def test_gla_needs_a_power_of_two_chunk_size():
    with pytest.raises(ValueError, match="power-of-two chunk_size"):
        GLA(D, H, chunk_size=48)


# ---- linear attention -------------------------------------------------------------------------


def test_linear_attention_state_norm_grows_without_decay():
    m = LinearAttention(D, H)
    state = m.init_state(2, "cpu")
    norms, z_norms = [], []
    with torch.no_grad():
        for _ in range(10):  # S is a sum of 16 * n random outer products: its norm grows ~ sqrt(n)
            _, state = m(torch.randn(2, 16, D), state)
            metrics = m.state_metrics(state)
            norms.append(metrics["state_norm"])
            z_norms.append(metrics["normalizer_norm"])
    assert all(b > a for a, b in zip(z_norms, z_norms[1:])), z_norms
    assert norms[-1] > 2 * norms[0], norms


def test_linear_attention_remembers_everything_on_empty_input():
    """x = 0: phi(k) = elu(0) + 1 = 1 and v = 0, so S is unchanged and z grows by exactly T."""
    m = LinearAttention(D, H)
    state0 = warm(m)
    T = 10
    with torch.no_grad():
        _, state = m(torch.zeros(2, T, D), clone_state(state0))
    torch.testing.assert_close(state.S, state0.S)
    torch.testing.assert_close(state.z, state0.z + T)


def test_linear_attention_features_are_positive_so_the_normaliser_is():
    m = LinearAttention(D, H)
    q, k, _ = m.project(torch.randn(2, 9, D) * 10)
    assert (q > 0).all() and (k > 0).all()
    y, state = m(torch.randn(2, 9, D) * 10, m.init_state(2, "cpu"))
    assert torch.isfinite(y).all() and (state.z > 0).all()


def test_linear_attention_output_does_not_depend_on_the_scale_of_the_query_features():
    """o = S^T phi(q) / z^T phi(q): scaling phi(q) leaves it unchanged, so there is no 1/sqrt(K)."""
    from lifelong.kernels.gated_linear import linear_attn

    q, k, v = torch.rand(1, 8, 2, 4) + 0.1, torch.rand(1, 8, 2, 4) + 0.1, torch.randn(1, 8, 2, 4)
    o1, _ = linear_attn(q, k, v, None)
    o2, _ = linear_attn(q * 7.0, k, v, None)
    torch.testing.assert_close(o1, o2)


# ---- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("mamba2", Mamba2), ("gla", GLA), ("linear_attention", LinearAttention)]
)
def test_configs_build_the_layer_with_the_documented_defaults(name, cls):
    cfg = load_memory_config(name)
    assert cfg.name == name and cfg.reset_on == "never"
    assert cfg.num_heads == 4 and cfg.chunk_size == 64 and cfg.backend == "auto"
    mixer = build_mixer(cfg, d_model=64)
    assert type(mixer) is cls and mixer.num_heads == 4 and mixer.chunk_size == 64
    assert mixer.state_metrics(mixer.init_state(1, "cpu"))["state_bytes"] == 4 * 16 * 16 * 4 + (
        4 * 16 * 4 if name == "linear_attention" else 0
    )
    assert math.isfinite(mixer.state_metrics(warm_any(mixer))["state_norm"])


def warm_any(mixer):
    with torch.no_grad():
        return mixer(torch.randn(1, 5, mixer.d_model), mixer.init_state(1, "cpu"))[1]


def test_feature_map_is_elu_plus_one():
    from lifelong.memory_layers.linear_attention import elu_feature_map

    x = torch.linspace(-15, 15, 301)
    torch.testing.assert_close(elu_feature_map(x), F.elu(x) + 1)
