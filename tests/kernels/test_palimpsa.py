"""Palimpsa kernels: the chunked scan and the step op against the naive reference, the ratio form
against DESIGN.md's literal (mu, I) recurrence, and the b = 0 reduction to Mamba2 / simple GLA."""
from __future__ import annotations

import pytest
import torch
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

from lifelong.kernels.palimpsa import (
    PalimpsaState,
    init_palimpsa_state,
    palimpsa,
    palimpsa_chunk,
    palimpsa_mu_form_reference,
    palimpsa_predictive_variance,
    palimpsa_reference,
    palimpsa_step,
)
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

B, H, K, V = 2, 2, 8, 6


def make_inputs(T: int, *, batch: int = B, heads: int = H, key_dim: int = K, value_dim: int = V,
                importance: bool = True) -> dict[str, torch.Tensor]:
    """Random inputs in the ranges the layer produces, plus a warm (non-zero) initial state."""
    return {
        "q": torch.randn(batch, T, heads, key_dim),
        "k": torch.randn(batch, T, heads, key_dim) * 0.5,
        "v": torch.randn(batch, T, heads, value_dim),
        "g": -torch.rand(batch, T, heads) * 0.5,
        "b": torch.rand(batch, T, heads, value_dim) if importance else torch.zeros(batch, T, heads, value_dim),
        "M0": torch.randn(batch, heads, key_dim, value_dim),
        "I0": torch.rand(batch, heads, key_dim, value_dim) * 2,
        "prior": torch.rand(heads) + 0.5,
    }


def run_with_grads(fn, inputs: dict[str, torch.Tensor], weights: list[torch.Tensor], **kwargs):
    """Forward ``fn`` and backprop a random linear functional of (o, M_T, I~_T) into every input."""
    x = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    o, state = fn(x["q"], x["k"], x["v"], x["g"], x["b"], PalimpsaState(x["M0"], x["I0"]),
                  prior_precision=x["prior"], **kwargs)
    loss = (o * weights[0]).sum() + (state.M * weights[1]).sum() + (state.I_tilde * weights[2]).sum()
    loss.backward()
    outputs = {"o": o, "M_T": state.M, "I_tilde_T": state.I_tilde}
    grads = {f"d{name}": t.grad for name, t in x.items()}
    return outputs, grads


GATE_GRADS = ("dg", "db", "dprior")


@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 64), (100, 32)])
def test_chunk_matches_reference_forward_and_every_gradient(T, chunk_size):
    inputs = make_inputs(T)
    weights = [torch.randn(B, T, H, V), torch.randn(B, H, K, V), torch.randn(B, H, K, V)]
    ref_out, ref_grads = run_with_grads(palimpsa_reference, inputs, weights)
    out, grads = run_with_grads(palimpsa_chunk, inputs, weights, chunk_size=chunk_size)
    for name in ref_out:
        assert_close_rms(out[name], ref_out[name], TOL_CHUNKED, name)
    for name in ref_grads:
        assert_close_rms(grads[name], ref_grads[name], TOL_GATE_GRAD if name in GATE_GRADS else TOL_CHUNKED, name)


@pytest.mark.parametrize("T", [1, 5])
def test_chunk_handles_sequences_shorter_than_one_chunk(T):
    inputs = make_inputs(T)
    state = PalimpsaState(inputs["M0"], inputs["I0"])
    args = [inputs[n] for n in "qkvgb"]
    o_ref, s_ref = palimpsa_reference(*args, state, prior_precision=inputs["prior"])
    o, s = palimpsa_chunk(*args, state, prior_precision=inputs["prior"], chunk_size=64)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(s.I_tilde, s_ref.I_tilde, TOL_CHUNKED, "I_tilde")


def test_ratio_form_equals_the_literal_mu_precision_recurrence_at_every_step():
    T = 37
    inputs = make_inputs(T)
    prior = inputs["prior"]
    state = PalimpsaState(inputs["M0"], inputs["I0"])
    ip = prior[None, :, None, None]
    mu, precision = state.M / (ip + state.I_tilde), ip + state.I_tilde
    for t in range(T):
        step_args = [inputs[n][:, t] for n in "qkvgb"]
        o_ratio, state = palimpsa_step(*step_args, state, prior_precision=prior)
        o_mu, mu, precision = palimpsa_mu_form_reference(
            *[inputs[n][:, t:t + 1] for n in "qkvgb"], mu, precision, prior_precision=prior)
        assert_close_rms(o_ratio, o_mu[:, 0], TOL_RECURRENT, f"o at step {t}")
        assert_close_rms(state.M / (ip + state.I_tilde), mu, TOL_RECURRENT, f"mu at step {t}")
        assert_close_rms(ip + state.I_tilde, precision, TOL_RECURRENT, f"precision at step {t}")


@pytest.mark.parametrize("T", [63, 100])
def test_without_importance_palimpsa_is_mamba2(T):
    """b = 0 and I_p = 1: mu = M and M follows S_t = f_t S_{t-1} + k_t v_t^T (simple GLA)."""
    inputs = make_inputs(T, importance=False)
    args = [inputs[n] for n in "qkvgb"]
    state = PalimpsaState(inputs["M0"], torch.zeros_like(inputs["I0"]))
    o_gla, S_gla = naive_recurrent_simple_gla(inputs["q"], inputs["k"], inputs["v"], inputs["g"],
                                              initial_state=inputs["M0"].clone(), output_final_state=True)
    for fn, kwargs in ((palimpsa_reference, {}), (palimpsa_chunk, {"chunk_size": 16})):
        o, s = fn(*args, state, prior_precision=1.0, **kwargs)
        assert_close_rms(o, o_gla, TOL_RECURRENT, f"{fn.__name__} o")
        assert_close_rms(s.M, S_gla, TOL_RECURRENT, f"{fn.__name__} M")
        assert torch.count_nonzero(s.I_tilde) == 0


def test_without_importance_the_prior_precision_only_rescales_the_readout():
    inputs = make_inputs(20, importance=False)
    args = [inputs[n] for n in "qkvgb"]
    o1, _ = palimpsa_chunk(*args, None, prior_precision=1.0)
    o4, _ = palimpsa_chunk(*args, None, prior_precision=4.0)
    assert_close_rms(o4 * 4.0, o1, TOL_RECURRENT, "o * I_p")


def test_precision_never_drops_below_the_prior():
    inputs = make_inputs(200)
    inputs["g"] = -torch.rand(B, 200, H) * 5  # fast forgetting relaxes I towards I_p from above
    prior = inputs["prior"][None, :, None, None]
    zero = torch.zeros(B, H, K, V)
    _, _, precision = palimpsa_mu_form_reference(*[inputs[n] for n in "qkvgb"], zero, prior.expand(B, H, K, V),
                                                 prior_precision=inputs["prior"])
    assert bool((precision >= prior * (1 - 1e-6)).all())
    _, state = palimpsa_chunk(*[inputs[n] for n in "qkvgb"], None, prior_precision=inputs["prior"])
    assert bool((state.I_tilde >= 0).all())


def test_importance_lowers_plasticity_of_the_written_channels():
    """After nine writes of +1 with b = 1 (precision grows), a conflicting -1 moves mu by far less
    than without importance (b = 0, plain Mamba2 accumulation): plasticity is 1 / I_t."""
    T = 10
    k = torch.zeros(1, T, 1, 4)
    k[..., 0] = 1.0
    v = torch.ones(1, T, 1, 1)
    v[:, -1] = -1.0
    g = torch.zeros(1, T, 1)
    shift = {}
    for name, importance in (("plastic", 0.0), ("consolidated", 1.0)):
        b = torch.full((1, T, 1, 1), importance)
        o, _ = palimpsa_reference(k, k, v, g, b, None, prior_precision=1.0, scale=1.0)
        shift[name] = float((o[0, -1] - o[0, -2]).abs())
    assert shift["plastic"] == pytest.approx(1.0)
    assert shift["consolidated"] == pytest.approx(9 / 10 - 8 / 11)


def test_step_op_equals_a_one_token_reference():
    inputs = make_inputs(1)
    state = PalimpsaState(inputs["M0"], inputs["I0"])
    o_ref, s_ref = palimpsa_reference(*[inputs[n] for n in "qkvgb"], state, prior_precision=0.7)
    o, s = palimpsa_step(*[inputs[n][:, 0] for n in "qkvgb"], state, prior_precision=0.7, backend="torch")
    assert_close_rms(o, o_ref[:, 0], TOL_RECURRENT, "o")
    assert_close_rms(s.M, s_ref.M, TOL_RECURRENT, "M")


def test_dispatch_on_cpu_takes_the_chunked_torch_path():
    inputs = make_inputs(30)
    args = [inputs[n] for n in "qkvgb"]
    o_auto, s_auto = palimpsa(*args, None, prior_precision=1.5, chunk_size=8)
    o_chunk, s_chunk = palimpsa_chunk(*args, None, prior_precision=1.5, chunk_size=8)
    assert torch.equal(o_auto, o_chunk) and torch.equal(s_auto.M, s_chunk.M)
    assert s_auto.M.dtype == torch.float32 and s_auto.I_tilde.dtype == torch.float32


def test_predictive_variance_is_the_prior_variance_on_a_fresh_state_and_shrinks_with_importance():
    q = torch.randn(B, H, K)
    fresh = init_palimpsa_state(B, H, K, V)
    var = palimpsa_predictive_variance(q, fresh, prior_precision=2.0)
    assert_close_rms(var, (q ** 2).sum(-1, keepdim=True).expand(B, H, V) / 2.0, TOL_RECURRENT, "variance")
    inputs = make_inputs(10)
    _, state = palimpsa_chunk(*[inputs[n] for n in "qkvgb"], fresh, prior_precision=2.0)
    assert bool((palimpsa_predictive_variance(q, state, prior_precision=2.0) <= var + 1e-6).all())


def test_a_long_stream_stays_finite():
    """1e5 steps of strong writes, slow and fast decay, full importance: no inf/NaN."""
    T = 100_000
    torch.manual_seed(1)
    q, k = torch.randn(1, T, 1, 4) * 3, torch.randn(1, T, 1, 4) * 3
    v = torch.randn(1, T, 1, 4) * 3
    g = torch.where(torch.rand(1, T, 1) < 0.5, torch.zeros(1, T, 1), -torch.rand(1, T, 1) * 20)
    b = torch.ones(1, T, 1, 4)
    with torch.no_grad():
        o, state = palimpsa_chunk(q, k, v, g, b, None, prior_precision=1e-3, chunk_size=64)
    assert torch.isfinite(o).all()
    assert all(torch.isfinite(t).all() for t in state)


def test_bad_inputs_get_errors_that_name_the_fix():
    inputs = make_inputs(4)
    args = [inputs[n] for n in "qkvgb"]
    with pytest.raises(ValueError, match="one scalar per head"):
        palimpsa_chunk(args[0], args[1], args[2], torch.zeros(B, 4, H, K), args[4], None)
    with pytest.raises(ValueError, match="must be positive"):
        palimpsa_chunk(*args, None, prior_precision=0.0)
    with pytest.raises(ValueError, match=r"state.M must be \[B, H, K, V\]"):
        palimpsa_chunk(*args, PalimpsaState(torch.zeros(B, H, V, K), torch.zeros(B, H, K, V)))
    with pytest.raises(ValueError, match="broadcastable to"):
        palimpsa_chunk(*args, None, prior_precision=torch.ones(H + 1))
