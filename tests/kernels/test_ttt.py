"""TTT-Linear kernels: the mini-batch dual form against the token loop, the token loop against
flash-linear-attention's ``fla.ops.ttt.naive``, and the inner update against autograd."""
from __future__ import annotations

import pytest
import torch
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

from lifelong.kernels.ttt import (
    TTTState,
    ln_fwd,
    ttt_linear,
    ttt_linear_chunk,
    ttt_linear_reference,
    ttt_linear_step,
    zero_ttt_state,
)

B, H, D = 2, 2, 8


def make_inputs(T: int):
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    eta = torch.rand(B, T, H) * 0.2
    ln_w = 1.0 + 0.3 * torch.randn(H, D)
    ln_b = 0.3 * torch.randn(H, D)
    return q, k, v, eta, ln_w, ln_b


def make_state(pos=(0, 0), pending: bool = True) -> TTTState:
    """Random weights; a pending mini-batch (random gradient sums) when pos > 0."""
    s = zero_ttt_state(B, H, D, "cpu")
    gw = torch.randn(B, H, D, D) * 0.1 if pending else s.grad_W
    gb = torch.randn(B, H, 1, D) * 0.1 if pending else s.grad_b
    p = torch.tensor(pos)
    keep = (p > 0).view(B, 1, 1, 1)
    return TTTState(torch.randn(B, H, D, D) * 0.3, torch.randn(B, H, 1, D) * 0.3,
                    gw * keep, gb * keep, p)


def run(fn, q, k, v, eta, ln_w, ln_b, state, m=16, scale=None):
    return fn(q, k, v, eta, state, ln_weight=ln_w, ln_bias=ln_b, mini_batch_size=m, scale=scale)


def assert_states_close(a: TTTState, b: TTTState, tol: float) -> None:
    assert torch.equal(a.pos, b.pos)
    for name in ("W", "b", "grad_W", "grad_b"):
        x, y = getattr(a, name), getattr(b, name)
        if y.abs().max() == 0:
            assert x.abs().max() < 1e-6, f"{name} should be zero"
        else:
            assert_close_rms(x, y, tol, name)


@pytest.mark.parametrize("T,m", [(63, 16), (100, 16), (37, 8), (5, 16)])
@pytest.mark.parametrize("pos", [(0, 0), (3, 11)], ids=["aligned", "mid-minibatch"])
def test_dual_form_matches_the_token_loop(T, m, pos):
    q, k, v, eta, ln_w, ln_b = make_inputs(T)
    state = make_state(tuple(p % m for p in pos))
    o_ref, s_ref = run(ttt_linear_reference, q, k, v, eta, ln_w, ln_b, state, m)
    o, s = run(ttt_linear_chunk, q, k, v, eta, ln_w, ln_b, state, m)
    assert o.shape == (B, T, H, D)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_states_close(s, s_ref, TOL_CHUNKED)


def test_dual_form_gradients_match_the_token_loop_for_every_input():
    T = 45
    ins = list(make_inputs(T))
    state = make_state((5, 0))
    leaves_ref = [t.clone().requires_grad_() for t in ins] + [t.clone().requires_grad_() for t in state[:4]]
    leaves_chk = [t.detach().clone().requires_grad_() for t in leaves_ref]
    gen = torch.Generator().manual_seed(7)
    wo = torch.randn(B, T, H, D, generator=gen)
    ws = [torch.randn(t.shape, generator=gen) for t in state[:4]]

    def loss(leaves, fn):
        st = TTTState(*leaves[6:], state.pos)
        o, s = run(fn, *leaves[:6], st)
        return (o * wo).sum() + sum((x * w).sum() for x, w in zip(s[:4], ws))

    loss(leaves_ref, ttt_linear_reference).backward()
    loss(leaves_chk, ttt_linear_chunk).backward()
    names = ["q", "k", "v", "eta", "ln_weight", "ln_bias", "W0", "b0", "grad_W0", "grad_b0"]
    for name, a, b in zip(names, leaves_chk, leaves_ref):
        tol = TOL_GATE_GRAD if name == "eta" else TOL_CHUNKED
        assert_close_rms(a.grad, b.grad, tol, f"grad {name}")


@pytest.mark.parametrize("T", [64, 100])
def test_token_loop_matches_fla_naive_ttt_linear(T):
    """fla's output is o + LN(o) of our raw readout; its final state is comparable when T % 16 == 0
    (fla pads a partial last mini-batch and lets the padding's gradients into the bias)."""
    from fla.ops.ttt.naive import chunk_ttt_linear_ref

    q, k, v, eta, ln_w, ln_b = make_inputs(T)
    s0 = make_state(pending=False)
    o, s = run(ttt_linear_reference, q, k, v, eta, ln_w, ln_b, s0, 16, scale=0.5)
    o_fla, W_fla, b_fla = chunk_ttt_linear_ref(
        q.clone(), k.clone(), v.clone(), ln_w, ln_b, eta[..., None].clone(), scale=0.5, eps=1e-6,
        mini_batch_size=16, initial_state=s0.W.clone(), initial_state_bias=s0.b.clone(),
        output_final_state=True,
    )
    o_resid = o + ln_fwd(o.transpose(1, 2), ln_w[:, None], ln_b[:, None], 1e-6).transpose(1, 2)
    assert_close_rms(o_resid, o_fla, TOL_RECURRENT, "o + LN(o) vs fla")
    if T % 16 == 0:
        assert_close_rms(s.W, W_fla, TOL_RECURRENT, "W vs fla")
        assert_close_rms(s.b, b_fla, TOL_RECURRENT, "b vs fla")
        assert int(s.pos.max()) == 0 and s.grad_W.abs().max() == 0


def test_a_completed_minibatch_is_one_gradient_step_taken_at_its_start_weights():
    """W_m = W0 - eta_m * sum_s dl_s/dW (W0), b likewise, with the gradient from autograd."""
    m = 6
    q, k, v, eta, ln_w, ln_b = make_inputs(m)
    s0 = make_state(pending=False)
    W0 = s0.W.clone().requires_grad_()
    b0 = s0.b.clone().requires_grad_()
    z = k.transpose(1, 2) @ W0 + b0  # [B, H, m, D]
    target = (v - k).transpose(1, 2)
    loss = 0.5 * (ln_fwd(z, ln_w[:, None], ln_b[:, None], 1e-6) - target).pow(2).sum()
    gW, gb = torch.autograd.grad(loss, (W0, b0))
    e_last = eta[:, -1, :, None, None]
    _, s = run(ttt_linear_chunk, q, k, v, eta, ln_w, ln_b, s0, m)
    assert_close_rms(s.W, s0.W - e_last * gW, TOL_RECURRENT, "W")
    assert_close_rms(s.b, s0.b - e_last * gb, TOL_RECURRENT, "b")
    assert int(s.pos.max()) == 0


def test_readout_uses_the_running_minibatch_gradient_with_the_tokens_own_rate():
    """Token t reads scale q_t (W0 - eta_t sum_{s<=t} G_s k_s) + b0 - eta_t sum_{s<=t} G_s."""
    m = 16
    q, k, v, eta, ln_w, ln_b = make_inputs(3)
    s0 = make_state(pending=False)
    o, s = run(ttt_linear_chunk, q, k, v, eta, ln_w, ln_b, s0, m, scale=1.0)
    # After 3 of 16 tokens nothing is committed, and the pending sums explain the last readout.
    assert torch.equal(s.W, s0.W) and torch.equal(s.pos, torch.tensor([3, 3]))
    e = eta[:, 2, :, None, None]
    expected = (q[:, 2, :, None, :] @ (s0.W - e * s.grad_W) + s0.b - e * s.grad_b)[..., 0, :]
    assert_close_rms(o[:, 2], expected, TOL_RECURRENT, "o_t")


def test_step_matches_the_sequence_op_on_one_token():
    q, k, v, eta, ln_w, ln_b = make_inputs(1)
    state = make_state((15, 4))  # lifetime 0 completes its mini-batch on this token
    o_step, s_step = ttt_linear_step(q[:, 0], k[:, 0], v[:, 0], eta[:, 0], state, ln_weight=ln_w, ln_bias=ln_b)
    o_seq, s_seq = ttt_linear(q, k, v, eta, state, ln_weight=ln_w, ln_bias=ln_b)
    assert_close_rms(o_step, o_seq[:, 0], TOL_RECURRENT, "o")
    assert_states_close(s_step, s_seq, TOL_RECURRENT)
    assert s_step.pos.tolist() == [0, 5] and s_step.grad_W[0].abs().max() == 0


def test_splitting_a_sequence_at_odd_points_equals_the_whole():
    q, k, v, eta, ln_w, ln_b = make_inputs(63)
    state = make_state((7, 0))
    o, s = run(ttt_linear, q, k, v, eta, ln_w, ln_b, state)
    pieces, st = [], state
    for a, b in [(0, 13), (13, 14), (14, 50), (50, 63)]:
        o_p, st = run(ttt_linear, q[:, a:b], k[:, a:b], v[:, a:b], eta[:, a:b], ln_w, ln_b, st)
        pieces.append(o_p)
    assert_close_rms(torch.cat(pieces, 1), o, TOL_CHUNKED, "o")
    assert_states_close(st, s, TOL_CHUNKED)


def test_state_size_is_constant_and_inputs_are_not_modified():
    q, k, v, eta, ln_w, ln_b = make_inputs(40)
    state = make_state((2, 9))
    copies = [t.clone() for t in state]
    _, s = run(ttt_linear, q, k, v, eta, ln_w, ln_b, state)
    assert [t.shape for t in s] == [t.shape for t in state]
    assert [t.dtype for t in s] == [torch.float32] * 4 + [torch.long]
    assert all(torch.equal(a, b) for a, b in zip(state, copies))


def test_a_long_stream_stays_finite():
    """1e5 tokens through the dual form with large inputs: no inf or NaN."""
    T, m = 100_000, 64
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, T, 1, 4, generator=g) * 3 for _ in range(3))
    eta = torch.rand(1, T, 1, generator=g)
    ln_w, ln_b = torch.ones(1, 4), torch.zeros(1, 4)
    o, s = ttt_linear_chunk(q, k, v, eta, None, ln_weight=ln_w, ln_bias=ln_b, mini_batch_size=m)
    assert torch.isfinite(o).all()
    assert all(torch.isfinite(t).all() for t in s[:4])


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"v": torch.randn(B, 7, H, D + 1)}, "K = V"),
        ({"eta": torch.rand(B, 7)}, "eta must be"),
        ({"ln_weight": torch.ones(D)}, r"ln_weight and ln_bias must be \[H, V\]"),
        ({"state": zero_ttt_state(B + 1, H, D, "cpu")}, r"state.W must be \[B, H, D, D\]"),
        ({"mini_batch_size": 0}, "mini_batch_size must be >= 1"),
    ],
)
def test_bad_inputs_raise_a_message_naming_the_fix(bad, match):
    q, k, v, eta, ln_w, ln_b = make_inputs(7)
    args = {"q": q, "k": k, "v": v, "eta": eta, "state": None, "ln_weight": ln_w, "ln_bias": ln_b, **bad}
    with pytest.raises(ValueError, match=match):
        ttt_linear(**args)


def test_a_state_from_a_larger_minibatch_is_rejected():
    q, k, v, eta, ln_w, ln_b = make_inputs(4)
    with pytest.raises(ValueError, match="mini_batch_size"):
        run(ttt_linear, q, k, v, eta, ln_w, ln_b, make_state((20, 0)), m=16)


def test_triton_backend_is_refused_with_a_message():
    q, k, v, eta, ln_w, ln_b = make_inputs(4)
    with pytest.raises(NotImplementedError, match="no Triton kernel"):
        ttt_linear(q, k, v, eta, None, ln_weight=ln_w, ln_bias=ln_b, backend="triton")
