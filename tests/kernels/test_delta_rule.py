"""The delta-rule kernels: chunked form and single-token step against the naive recurrence,
and the naive recurrence against flash-linear-attention's own torch references."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

from lifelong.kernels.delta_rule import (
    delta_rule,
    delta_rule_step,
    gated_delta_rule,
    gated_delta_rule_chunk,
    gated_delta_rule_reference,
    gated_delta_rule_step,
)

B, H, K, V = 2, 2, 16, 8


def make_inputs(T: int, gated: bool = True, neg_eigval: bool = False, requires_grad: bool = False):
    """q, k (L2-normalised), v, g (log decay, mostly near 0) or None, beta, a non-zero state."""
    q = torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H) + 2.0) if gated else None
    beta = torch.rand(B, T, H) * (2.0 if neg_eigval else 1.0)
    state = torch.randn(B, H, K, V) * 0.5
    tensors = [q, k, v, g, beta, state]
    if requires_grad:
        tensors = [t.requires_grad_() if t is not None else None for t in tensors]
    return tensors


def loss_of(o: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """A loss that weighs every output and state entry differently (fixed weights)."""
    gen = torch.Generator().manual_seed(123)
    wo = torch.randn(o.shape, generator=gen)
    ws = torch.randn(S.shape, generator=gen)
    return (o * wo).sum() + (S * ws).sum()


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 32), (100, 64), (5, 16)])
def test_chunk_forward_and_final_state_match_the_reference(gated, T, chunk_size):
    q, k, v, g, beta, S0 = make_inputs(T, gated)
    o_ref, S_ref = gated_delta_rule_reference(q, k, v, g, beta, S0)
    o, S = gated_delta_rule_chunk(q, k, v, g, beta, S0, chunk_size=chunk_size)
    assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V) and S.dtype == torch.float32
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "S")


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 32)])
def test_chunk_gradients_match_the_reference_for_every_input(gated, T, chunk_size):
    ins_ref = make_inputs(T, gated, requires_grad=True)
    ins_chk = [t.detach().clone().requires_grad_() if t is not None else None for t in ins_ref]
    loss_of(*gated_delta_rule_reference(*ins_ref)).backward()
    loss_of(*gated_delta_rule_chunk(*ins_chk, chunk_size=chunk_size)).backward()
    names = ["q", "k", "v", "g", "beta", "initial state"]
    for name, a, b in zip(names, ins_chk, ins_ref):
        if b is None:
            continue
        tol = TOL_GATE_GRAD if name in ("g", "beta") else TOL_CHUNKED
        assert_close_rms(a.grad, b.grad, tol, f"grad {name}")


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
def test_a_loop_of_steps_equals_the_reference(gated):
    T = 37
    q, k, v, g, beta, S = make_inputs(T, gated, neg_eigval=True)
    o_ref, S_ref = gated_delta_rule_reference(q, k, v, g, beta, S)
    outs = []
    for t in range(T):
        o_t, S = gated_delta_rule_step(
            q[:, t], k[:, t], v[:, t], None if g is None else g[:, t], beta[:, t], S
        )
        outs.append(o_t)
    assert_close_rms(torch.stack(outs, 1), o_ref, TOL_RECURRENT, "o")
    assert_close_rms(S, S_ref, TOL_RECURRENT, "S")


def test_reference_matches_fla_naive_recurrent_gated_delta_rule():
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    q, k, v, g, beta, S0 = make_inputs(63)
    o_ref, S_ref = gated_delta_rule_reference(q, k, v, g, beta, S0, scale=0.3)
    o_fla, S_fla = naive_recurrent_gated_delta_rule(
        q, k, v, beta, g, scale=0.3, initial_state=S0, output_final_state=True
    )
    assert_close_rms(o_ref, o_fla, TOL_RECURRENT, "o vs fla")
    assert_close_rms(S_ref, S_fla, TOL_RECURRENT, "S vs fla")


def test_chunk_matches_fla_naive_chunk_gated_delta_rule_with_a_partial_chunk():
    from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule

    q, k, v, g, beta, S0 = make_inputs(100)
    o, S = gated_delta_rule_chunk(q, k, v, g, beta, S0, chunk_size=32)
    o_fla, S_fla = naive_chunk_gated_delta_rule(
        q, k, v, g, beta, chunk_size=32, initial_state=S0, output_final_state=True
    )
    # fla's naive chunk form ends on a padded chunk whose g = 0 tokens leave S unchanged.
    assert_close_rms(o, o_fla, TOL_CHUNKED, "o vs fla chunk")
    assert_close_rms(S, S_fla, TOL_CHUNKED, "S vs fla chunk")


def test_deltanet_matches_fla_delta_rule_recurrence():
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    q, k, v, _, beta, S0 = make_inputs(63, gated=False)
    o, S = delta_rule(q, k, v, beta, S0, chunk_size=16, backend="torch")
    to_bhtd = lambda x: x.transpose(1, 2).contiguous()  # fla's naive DeltaNet is [B, H, T, D]
    o_fla, S_fla = delta_rule_recurrence(to_bhtd(q), to_bhtd(k), to_bhtd(v), to_bhtd(beta), S0)
    assert_close_rms(o, o_fla.transpose(1, 2), TOL_CHUNKED, "o vs fla")
    assert_close_rms(S, S_fla, TOL_CHUNKED, "S vs fla")


def test_no_gate_is_the_same_as_a_zero_log_decay():
    q, k, v, g, beta, S0 = make_inputs(40)
    o0, S0_ = delta_rule(q, k, v, beta, S0, chunk_size=16)
    o1, S1 = gated_delta_rule(q, k, v, torch.zeros_like(g), beta, S0, chunk_size=16)
    assert_close_rms(o0, o1, 1e-6, "o")
    assert_close_rms(S0_, S1, 1e-6, "S")
    s_a = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], S0)
    s_b = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], torch.zeros_like(g[:, 0]), beta[:, 0], S0)
    assert_close_rms(s_a[1], s_b[1], 1e-6, "step S")


def test_a_strong_write_on_a_unit_key_stores_the_value_exactly():
    """beta = 1, ||k|| = 1: after the update S^T k = v (the delta rule solves the regression)."""
    k = F.normalize(torch.randn(1, 1, 1, K), dim=-1)
    v = torch.randn(1, 1, 1, V)
    S0 = torch.randn(1, 1, K, V)
    _, S = gated_delta_rule_reference(k, k, v, None, torch.ones(1, 1, 1), S0)
    recalled = torch.einsum("k,kv->v", k[0, 0, 0], S[0, 0])
    assert torch.allclose(recalled, v[0, 0, 0], atol=1e-5)


def test_splitting_a_sequence_carries_the_state_exactly():
    q, k, v, g, beta, S0 = make_inputs(63)
    o, S = gated_delta_rule_chunk(q, k, v, g, beta, S0, chunk_size=16)
    a = 29
    o_a, S_a = gated_delta_rule_chunk(q[:, :a], k[:, :a], v[:, :a], g[:, :a], beta[:, :a], S0, chunk_size=16)
    o_b, S_b = gated_delta_rule_chunk(q[:, a:], k[:, a:], v[:, a:], g[:, a:], beta[:, a:], S_a, chunk_size=16)
    assert_close_rms(torch.cat([o_a, o_b], 1), o, TOL_CHUNKED, "o")
    assert_close_rms(S_b, S, TOL_CHUNKED, "S")


def test_ops_do_not_modify_their_inputs():
    ins = make_inputs(20)
    copies = [t.clone() for t in ins]
    gated_delta_rule(*ins, chunk_size=8)
    gated_delta_rule_step(ins[0][:, 0], ins[1][:, 0], ins[2][:, 0], ins[3][:, 0], ins[4][:, 0], ins[5])
    assert all(torch.equal(a, b) for a, b in zip(ins, copies))


def test_none_state_starts_from_zeros_and_zero_length_returns_the_state():
    q, k, v, g, beta, S0 = make_inputs(10)
    o_none, S_none = gated_delta_rule(q, k, v, g, beta, None)
    o_zero, S_zero = gated_delta_rule(q, k, v, g, beta, torch.zeros_like(S0))
    assert torch.equal(o_none, o_zero) and torch.equal(S_none, S_zero)
    o_empty, S_same = gated_delta_rule(q[:, :0], k[:, :0], v[:, :0], g[:, :0], beta[:, :0], S0)
    assert o_empty.shape == (B, 0, H, V) and torch.equal(S_same, S0)


def test_a_long_stream_with_negative_eigenvalues_stays_finite():
    """1e5 tokens, beta in (0, 2), strong and weak decays: no inf or NaN, state stays bounded."""
    T, h, d = 100_000, 2, 8
    q = torch.randn(1, T, h, d)
    k = F.normalize(torch.randn(1, T, h, d), dim=-1)
    v = torch.randn(1, T, h, d) * 10
    g = torch.cat([torch.full((1, T, 1), -1e-4), -torch.rand(1, T, 1) * 20], dim=-1)
    beta = torch.rand(1, T, h) * 2
    o, S = gated_delta_rule_chunk(q, k, v, g, beta, None, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert S.abs().max() < 1e4


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"k": torch.randn(B, 7, H, K + 1)}, "q and k must have the same shape"),
        ({"beta": torch.rand(B, 7)}, "beta must be"),
        ({"g": torch.rand(B, 7, H, K)}, "one log-decay per head"),
        ({"state": torch.zeros(B, H, V, K)}, r"state must be \[B, H, K, V\]"),
        ({"q": torch.randn(B, H, K), "k": torch.randn(B, H, K)}, "use the \\*_step op"),
    ],
)
def test_bad_shapes_raise_a_message_naming_the_layout(bad, match):
    q, k, v, g, beta, S0 = make_inputs(7)
    args = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state": S0, **bad}
    with pytest.raises(ValueError, match=match):
        gated_delta_rule(**args)


def test_unknown_backend_is_rejected():
    q, k, v, g, beta, S0 = make_inputs(4)
    with pytest.raises(ValueError, match="unknown backend"):
        gated_delta_rule(q, k, v, g, beta, S0, backend="cuda")


def test_triton_backend_dispatches_to_the_triton_module_with_a_zero_gate_for_deltanet(monkeypatch):
    """The dispatcher imports kernels.delta_rule.triton lazily and always hands it a gate tensor."""
    calls = {}

    def fake_chunk(q, k, v, g, beta, state, *, scale, chunk_size):
        calls["chunk"] = (g.clone(), chunk_size, scale)
        return v.clone(), state.clone()

    def fake_step(q, k, v, g, beta, state, *, scale):
        calls["step"] = g.clone()
        return v.clone(), state.clone()

    fake = types.ModuleType("lifelong.kernels.delta_rule.triton")
    fake.gated_delta_rule_triton = fake_chunk
    fake.gated_delta_rule_step_triton = fake_step
    monkeypatch.setitem(sys.modules, "lifelong.kernels.delta_rule.triton", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, _, beta, S0 = make_inputs(9, gated=False)
    delta_rule(q, k, v, beta, None, chunk_size=16, backend="triton")
    g_seen, chunk_size, scale = calls["chunk"]
    assert torch.equal(g_seen, torch.zeros(B, 9, H)) and chunk_size == 16 and scale is None
    delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], S0, backend="triton")
    assert torch.equal(calls["step"], torch.zeros(B, H))
