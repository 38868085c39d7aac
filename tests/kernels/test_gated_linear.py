"""The gated linear family (linear attention, simple GLA / Mamba2, GLA) in torch: the chunked forms
and the single-token steps against the naive recurrences, forward and every gradient, and the naive
recurrences against flash-linear-attention's own torch references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

from lifelong.kernels.gated_linear import chunk as gated_linear_chunk
from lifelong.kernels.gated_linear import (
    GATE_LOG_MIN,
    LinearAttnState,
    gla,
    gla_chunk,
    gla_reference,
    gla_step,
    linear_attn,
    linear_attn_chunk,
    linear_attn_reference,
    linear_attn_step,
    simple_gla,
    simple_gla_chunk,
    simple_gla_reference,
    simple_gla_step,
)

B, H, K, V = 2, 2, 16, 8
pytestmark = pytest.mark.filterwarnings(
    "ignore:Triton is not supported:UserWarning", "ignore::DeprecationWarning:torch.jit.*"
)
OPS = ("simple_gla", "gla", "linear_attn")
CHUNK = {"simple_gla": simple_gla_chunk, "gla": gla_chunk, "linear_attn": linear_attn_chunk}
REFERENCE = {"simple_gla": simple_gla_reference, "gla": gla_reference, "linear_attn": linear_attn_reference}
STEP = {"simple_gla": simple_gla_step, "gla": gla_step, "linear_attn": linear_attn_step}
DISPATCH = {"simple_gla": simple_gla, "gla": gla, "linear_attn": linear_attn}


def make_inputs(op: str, T: int, gate_shift: float = 2.0) -> dict:
    """Leaf tensors (requires_grad) for ``op``: q, k, v, the gate (if any) and a non-zero state.

    Linear attention gets positive (elu + 1) features, as its layer feeds it.
    """
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    if op == "linear_attn":
        q, k = F.elu(q) + 1, F.elu(k) + 1
        ins = {"q": q, "k": k, "v": v, "S": torch.rand(B, H, K, V), "z": torch.rand(B, H, K) + 0.5}
    else:
        gate_shape = (B, T, H) if op == "simple_gla" else (B, T, H, K)
        g = F.logsigmoid(torch.randn(gate_shape) + gate_shift)
        ins = {"q": q, "k": k, "v": v, "g": g, "S": torch.randn(B, H, K, V) * 0.5}
    return {name: t.detach().clone().requires_grad_() for name, t in ins.items()}


def call(fn, op: str, ins: dict, **kwargs):
    """Run ``fn`` (chunk, reference or dispatching op) on ``ins``; returns (o, S, z or None)."""
    if op == "linear_attn":
        o, state = fn(ins["q"], ins["k"], ins["v"], LinearAttnState(ins["S"], ins["z"]), **kwargs)
        return o, state.S, state.z
    o, S = fn(ins["q"], ins["k"], ins["v"], ins["g"], ins["S"], **kwargs)
    return o, S, None


def run_steps(op: str, ins: dict):
    """A Python loop of the single-token op over T; returns (o, S, z or None)."""
    state = LinearAttnState(ins["S"], ins["z"]) if op == "linear_attn" else ins["S"]
    outs = []
    for t in range(ins["q"].shape[1]):
        args = [ins["q"][:, t], ins["k"][:, t], ins["v"][:, t]]
        if op != "linear_attn":
            args.append(ins["g"][:, t])
        o_t, state = STEP[op](*args, state)
        outs.append(o_t)
    o = torch.stack(outs, dim=1)
    return (o, state.S, state.z) if op == "linear_attn" else (o, state, None)


def weighted_loss(o: torch.Tensor, S: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """Weighs every output and state entry differently (fixed weights, same for every form)."""
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()
    if z is not None:
        loss = loss + (z * torch.randn(z.shape, generator=gen)).sum()
    return loss


def grads(ins: dict, outputs) -> dict:
    names = list(ins)
    values = torch.autograd.grad(weighted_loss(*outputs), [ins[n] for n in names])
    return dict(zip(names, values))


def assert_matches(op: str, ours, ref, ins_ours: dict, ins_ref: dict, tol: float) -> None:
    for name, a, b in zip(("o", "S", "z"), ours, ref):
        if b is not None:
            assert_close_rms(a, b, tol, f"{op} {name}")
    g_ours, g_ref = grads(ins_ours, ours), grads(ins_ref, ref)
    for name in ins_ref:
        assert_close_rms(g_ours[name], g_ref[name], TOL_GATE_GRAD if name == "g" else tol, f"{op} d{name}")


def clone_inputs(ins: dict) -> dict:
    return {name: t.detach().clone().requires_grad_() for name, t in ins.items()}


# ---- chunked form == naive recurrence ---------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("T", "chunk_size"), [(63, 16), (100, 64), (100, 32), (5, 64)])
def test_chunked_form_matches_the_recurrence_forward_and_every_gradient(op, T, chunk_size):
    ins = make_inputs(op, T)
    ref_ins = clone_inputs(ins)
    ours = call(CHUNK[op], op, ins, chunk_size=chunk_size)
    ref = call(REFERENCE[op], op, ref_ins)
    assert ours[0].shape == (B, T, H, V)
    assert_matches(op, ours, ref, ins, ref_ins, TOL_CHUNKED)


@pytest.mark.parametrize("op", ["simple_gla", "gla"])
def test_chunked_form_is_exact_under_strong_and_saturated_decays(op):
    """Log gates down to far below GATE_LOG_MIN (decays of e^-1000): nothing overflows, the gates
    are clamped identically in both forms, and the tiny surviving products are still right."""
    ins = make_inputs(op, 70)
    with torch.no_grad():
        spread = torch.rand_like(ins["g"])
        ins["g"].copy_(torch.where(spread < 0.2, -1000.0 * spread, ins["g"] * 20 * spread))
    if op == "gla":  # these chunks decay too much for the one-matmul form: the exact path runs
        b = ins["g"].detach().clamp(GATE_LOG_MIN, 0)[:, :32].cumsum(1)
        assert float((b[:, 0] - b[:, -1]).max()) > gated_linear_chunk.FACTORED_SPAN_LIMIT
    ref_ins = clone_inputs(ins)
    ours = call(CHUNK[op], op, ins, chunk_size=32)
    ref = call(REFERENCE[op], op, ref_ins)
    assert_matches(op, ours, ref, ins, ref_ins, TOL_CHUNKED)


@pytest.mark.parametrize("exact_path", [False, True], ids=["one-matmul", "recursive-halving"])
def test_both_gla_intra_chunk_forms_match_the_recurrence(monkeypatch, exact_path):
    """GLA picks one masked matmul when the log decay within each chunk spans <= the limit and the
    recursive halving otherwise; forcing either one must give the recurrence's values and grads."""
    if exact_path:
        monkeypatch.setattr(gated_linear_chunk, "FACTORED_SPAN_LIMIT", -1.0)
    ins = make_inputs("gla", 63)
    ref_ins = clone_inputs(ins)
    ours = call(gla_chunk, "gla", ins, chunk_size=16)
    ref = call(gla_reference, "gla", ref_ins)
    assert_matches("gla", ours, ref, ins, ref_ins, TOL_CHUNKED)


@pytest.mark.parametrize("op", ["simple_gla", "gla"])
def test_gates_are_clamped_to_the_documented_log_range(op):
    ins = make_inputs(op, 9)
    below = dict(ins, g=torch.full_like(ins["g"], GATE_LOG_MIN * 10))
    at_min = dict(ins, g=torch.full_like(ins["g"], GATE_LOG_MIN))
    with torch.no_grad():
        o_below, S_below, _ = call(CHUNK[op], op, below)
        o_at, S_at, _ = call(CHUNK[op], op, at_min)
    torch.testing.assert_close(o_below, o_at)
    torch.testing.assert_close(S_below, S_at)


@pytest.mark.parametrize("op", OPS)
def test_result_does_not_depend_on_the_chunk_size(op):
    ins = make_inputs(op, 77)
    with torch.no_grad():
        base = call(CHUNK[op], op, ins, chunk_size=64)
        for chunk_size in (1, 8, 128):
            other = call(CHUNK[op], op, ins, chunk_size=chunk_size)
            for a, b in zip(other, base):
                if b is not None:
                    assert_close_rms(a, b, TOL_RECURRENT, f"{op} chunk_size={chunk_size}")


@pytest.mark.parametrize("op", OPS)
def test_two_calls_carry_the_state_like_one(op):
    ins = make_inputs(op, 50)
    with torch.no_grad():
        o_whole, S_whole, z_whole = call(CHUNK[op], op, ins, chunk_size=16)
        seq = [n for n in ("q", "k", "v", "g") if n in ins]
        first = {**ins, **{n: ins[n][:, :21] for n in seq}}
        o_a, S_a, z_a = call(CHUNK[op], op, first, chunk_size=16)
        second = {n: ins[n][:, 21:] for n in ("q", "k", "v", "g") if n in ins}
        second["S"] = S_a
        if z_a is not None:
            second["z"] = z_a
        o_b, S_b, z_b = call(CHUNK[op], op, second, chunk_size=16)
    assert_close_rms(torch.cat([o_a, o_b], 1), o_whole, TOL_RECURRENT, f"{op} o")
    assert_close_rms(S_b, S_whole, TOL_RECURRENT, f"{op} S")
    if z_whole is not None:
        assert_close_rms(z_b, z_whole, TOL_RECURRENT, f"{op} z")


@pytest.mark.parametrize("op", OPS)
def test_no_initial_state_means_zeros(op):
    ins = make_inputs(op, 20)
    with torch.no_grad():
        zeros = dict(ins, S=torch.zeros_like(ins["S"]))
        if op == "linear_attn":
            zeros["z"] = torch.zeros_like(ins["z"])
            o_none, state_none = linear_attn_chunk(ins["q"], ins["k"], ins["v"], None)
            S_none = state_none.S
        else:
            o_none, S_none = CHUNK[op](ins["q"], ins["k"], ins["v"], ins["g"], None)
        o_zero, S_zero, _ = call(CHUNK[op], op, zeros)
    torch.testing.assert_close(o_none, o_zero)
    torch.testing.assert_close(S_none, S_zero)


# ---- single-token steps == naive recurrence ---------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_a_loop_of_steps_matches_the_recurrence_forward_and_every_gradient(op):
    ins = make_inputs(op, 23)
    ref_ins = clone_inputs(ins)
    assert_matches(op, run_steps(op, ins), call(REFERENCE[op], op, ref_ins), ins, ref_ins, TOL_RECURRENT)


@pytest.mark.parametrize("op", OPS)
def test_dispatching_ops_take_the_torch_path_on_cpu(op):
    ins = make_inputs(op, 40)
    with torch.no_grad():
        for a, b in zip(call(DISPATCH[op], op, ins, chunk_size=16), call(CHUNK[op], op, ins, chunk_size=16)):
            if b is not None:
                torch.testing.assert_close(a, b)


def test_step_returns_fp32_state_and_the_dtype_of_v():
    q, k = torch.randn(B, H, K, dtype=torch.bfloat16), torch.randn(B, H, K, dtype=torch.bfloat16)
    v = torch.randn(B, H, V, dtype=torch.bfloat16)
    o, S = simple_gla_step(q, k, v, -torch.rand(B, H), None)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and S.shape == (B, H, K, V)


# ---- agreement with flash-linear-attention's torch references ---------------------------------


def test_simple_gla_reference_agrees_with_fla_naive_recurrence():
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    ins = make_inputs("simple_gla", 37)
    o, S = simple_gla_reference(ins["q"], ins["k"], ins["v"], ins["g"], ins["S"])
    o_fla, S_fla = naive_recurrent_simple_gla(
        ins["q"], ins["k"], ins["v"], ins["g"], initial_state=ins["S"], output_final_state=True
    )
    assert_close_rms(o, o_fla, TOL_RECURRENT, "o")
    assert_close_rms(S, S_fla, TOL_RECURRENT, "S")


def test_simple_gla_chunk_agrees_with_fla_naive_chunk_form():
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla

    ins = make_inputs("simple_gla", 100)
    with torch.no_grad():
        o, S = simple_gla_chunk(ins["q"], ins["k"], ins["v"], ins["g"], ins["S"], chunk_size=32)
        o_fla, S_fla = naive_chunk_simple_gla(
            ins["q"], ins["k"], ins["v"], ins["g"], initial_state=ins["S"], output_final_state=True, chunk_size=32
        )
    assert_close_rms(o, o_fla, TOL_RECURRENT, "o")
    assert_close_rms(S, S_fla, TOL_RECURRENT, "S")


def test_gla_reference_agrees_with_fla_naive_recurrence():
    from fla.ops.gla.naive import naive_recurrent_gla

    ins = make_inputs("gla", 37)
    o, S = gla_reference(ins["q"], ins["k"], ins["v"], ins["g"], ins["S"])
    o_fla, S_fla = naive_recurrent_gla(
        ins["q"], ins["k"], ins["v"], ins["g"], initial_state=ins["S"], output_final_state=True
    )
    assert_close_rms(o, o_fla, TOL_RECURRENT, "o")
    assert_close_rms(S, S_fla, TOL_RECURRENT, "S")


def test_linear_attn_reference_agrees_with_fla_normalised_naive_recurrence():
    """fla scales q in both numerator and denominator (it cancels) and keeps z as k's running sum
    ``[B, 1, H, K]``; its epsilon is 1e-10 against our 1e-6 (both negligible: z^T q >= 1 here)."""
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    ins = make_inputs("linear_attn", 37)
    o, state = linear_attn_reference(ins["q"], ins["k"], ins["v"], LinearAttnState(ins["S"], ins["z"]))
    o_fla, (S_fla, z_fla) = naive_recurrent_linear_attn(
        ins["q"], ins["k"], ins["v"], initial_state=(ins["S"], ins["z"][:, None]),
        output_final_state=True, normalize=True,
    )
    assert_close_rms(o, o_fla, TOL_RECURRENT, "o")
    assert_close_rms(state.S, S_fla, TOL_RECURRENT, "S")
    assert_close_rms(state.z, z_fla[:, 0], TOL_RECURRENT, "z")


# ---- numerical guard and input checks ---------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_a_long_stream_of_100k_tokens_stays_finite(op):
    T = 100_000
    q, k, v = torch.randn(1, T, 1, 4), torch.randn(1, T, 1, 4), torch.randn(1, T, 1, 4)
    with torch.no_grad():
        if op == "linear_attn":
            o, state = linear_attn_chunk(F.elu(q) + 1, F.elu(k) + 1, v, None)
            leaves = [o, state.S, state.z]
        else:
            shape = (1, T, 1) if op == "simple_gla" else (1, T, 1, 4)
            g = F.logsigmoid(torch.randn(shape) * 8)  # from ~0 (no decay) to ~-30 (erase)
            o, S = CHUNK[op](q, k, v, g, None)
            leaves = [o, S]
    assert all(torch.isfinite(t).all() for t in leaves)


@pytest.mark.parametrize(
    ("call_bad", "match"),
    [
        (lambda: simple_gla_chunk(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                                  torch.randn(1, 4, 2, 8), None), "one log-decay per head"),
        (lambda: gla_chunk(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                           torch.randn(1, 4, 2), None), "per key channel"),
        (lambda: gla_chunk(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                           -torch.rand(1, 4, 2, 8), None, chunk_size=24), "power-of-two chunk_size"),
        (lambda: simple_gla_chunk(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 8),
                                  torch.randn(1, 2), None), "use the \\*_step op"),
        (lambda: simple_gla_step(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                                 torch.randn(1, 4, 2), None), "use the sequence op"),
        (lambda: simple_gla_chunk(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                                  torch.randn(1, 4, 2), torch.zeros(1, 2, 8, 4)), "state must be"),
        (lambda: linear_attn_chunk(torch.rand(1, 4, 2, 8), torch.rand(1, 4, 2, 8), torch.rand(1, 4, 2, 8),
                                   torch.zeros(1, 2, 8, 8)), "LinearAttnState"),
        (lambda: simple_gla(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),
                            torch.randn(1, 4, 2), None, backend="cuda"), "unknown backend"),
    ],
)
def test_bad_inputs_raise_errors_that_name_the_fix(call_bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call_bad()
