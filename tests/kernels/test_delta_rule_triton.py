"""The delta-rule Triton kernels (under TRITON_INTERPRET=1) against the naive recurrence: Gated
DeltaNet and DeltaNet (g None), chunked forward with the WY transform, every gradient (q, k, v, g,
beta and the initial state) and the fused single-token step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

from lifelong.kernels.delta_rule import gated_delta_rule
from lifelong.kernels.delta_rule.reference import gated_delta_rule_reference
from lifelong.kernels.delta_rule.reference import gated_delta_rule_step as gated_delta_rule_step_torch
from lifelong.kernels.delta_rule.triton import gated_delta_rule_step_triton, gated_delta_rule_triton

pytestmark = pytest.mark.triton

B, H = 1, 2
# (T, D, chunk_size, gated): odd lengths, partial last chunks, one chunk and several
CASES = [
    pytest.param(16, 16, 16, True),
    pytest.param(63, 32, 16, True),
    pytest.param(100, 16, 64, True),
    pytest.param(63, 16, 32, False),
    pytest.param(100, 32, 32, True, marks=pytest.mark.slow),
    pytest.param(100, 32, 64, False, marks=pytest.mark.slow),
]


def _inputs(T: int, K: int, V: int, gated: bool, beta_max: float = 1.0):
    """q, k (L2-normalised), v, g (log decay) or None, beta in (0, beta_max), a non-zero state."""
    q = torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H) + 2.0) if gated else None
    beta = torch.rand(B, T, H) * beta_max
    return q, k, v, g, beta, torch.randn(B, H, K, V) * 0.5


def _leaves(*xs):
    return [x.detach().clone().requires_grad_() if x is not None else None for x in xs]


def _loss(o: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Weighs every output and state entry differently (fixed weights, same on both sides)."""
    gen = torch.Generator().manual_seed(1)
    return (o * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()


def _check_all(ours, ref, o, S, o_ref, S_ref) -> None:
    assert o.dtype == ref[2].dtype and S.dtype == torch.float32
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "final state")
    _loss(o, S).backward()
    _loss(o_ref, S_ref).backward()
    for a, b, name in zip(ours, ref, ["q", "k", "v", "g", "beta", "state"]):
        if a is not None:
            tol = TOL_GATE_GRAD if name in ("g", "beta") else TOL_CHUNKED
            assert_close_rms(a.grad, b.grad, tol, f"d{name}")


@pytest.mark.parametrize("T,D,chunk_size,gated", CASES)
def test_chunked_wy_form_matches_recurrence_forward_and_all_gradients(T, D, chunk_size, gated):
    x = _inputs(T, D, D, gated)
    ours, ref = _leaves(*x), _leaves(*x)
    o, S = gated_delta_rule_triton(*ours, chunk_size=chunk_size)
    o_ref, S_ref = gated_delta_rule_reference(*ref)
    _check_all(ours, ref, o, S, o_ref, S_ref)


def test_negative_eigenvalues_beta_up_to_two_and_unequal_key_value_dims():
    x = _inputs(40, 16, 32, True, beta_max=2.0)
    ours, ref = _leaves(*x), _leaves(*x)
    o, S = gated_delta_rule_triton(*ours, chunk_size=16)
    o_ref, S_ref = gated_delta_rule_reference(*ref)
    _check_all(ours, ref, o, S, o_ref, S_ref)


def test_without_initial_state_starts_from_zeros():
    q, k, v, g, beta, _ = _inputs(20, 16, 16, True)
    o, S = gated_delta_rule_triton(q, k, v, g, beta, None, chunk_size=16)
    o_ref, S_ref = gated_delta_rule_reference(q, k, v, g, beta, None)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "S")


def test_result_does_not_depend_on_chunk_size():
    x = _inputs(70, 16, 16, True)
    o16, S16 = gated_delta_rule_triton(*x, chunk_size=16)
    o64, S64 = gated_delta_rule_triton(*x, chunk_size=64)
    assert_close_rms(o16, o64, TOL_RECURRENT, "o")
    assert_close_rms(S16, S64, TOL_RECURRENT, "S")


def test_public_op_dispatches_to_triton_and_treats_missing_gate_as_deltanet():
    x = _inputs(24, 16, 16, False)
    o, S = gated_delta_rule(*x, chunk_size=16, backend="triton")
    o_ref, S_ref = gated_delta_rule_reference(*x)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "S")


@pytest.mark.parametrize("D,gated", [(16, True), (32, False)])
def test_fused_step_matches_the_torch_step(D, gated):
    q, k, v, g, beta, S0 = _inputs(1, D, D, gated)
    args = (q[:, 0], k[:, 0], v[:, 0], g[:, 0] if gated else None, beta[:, 0], S0)
    with torch.no_grad():
        o, S = gated_delta_rule_step_triton(*args)
        o_ref, S_ref = gated_delta_rule_step_torch(*args)
    assert_close_rms(o, o_ref, TOL_RECURRENT, "o")
    assert_close_rms(S, S_ref, TOL_RECURRENT, "state")


def test_step_with_gradients_enabled_backpropagates_into_every_input():
    q, k, v, g, beta, S0 = _inputs(1, 16, 16, True)
    args = (q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], S0)
    ours, ref = _leaves(*args), _leaves(*args)
    o, S = gated_delta_rule_step_triton(*ours)
    o_ref, S_ref = gated_delta_rule_step_torch(*ref)
    _check_all(ours, ref, o, S, o_ref, S_ref)


def test_repeated_steps_equal_the_chunked_form():
    q, k, v, g, beta, S0 = _inputs(12, 16, 16, True)
    S, outs = S0, []
    with torch.no_grad():
        for t in range(12):
            o_t, S = gated_delta_rule_step_triton(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S)
            outs.append(o_t)
        o, S_chunk = gated_delta_rule_triton(q, k, v, g, beta, S0, chunk_size=16)
    assert_close_rms(torch.stack(outs, 1), o, TOL_RECURRENT, "o")
    assert_close_rms(S, S_chunk, TOL_RECURRENT, "S")


def test_bad_inputs_raise_errors_that_name_the_fix():
    q, k, v, g, beta, S0 = _inputs(8, 16, 16, True)
    with pytest.raises(ValueError, match="step"):
        gated_delta_rule_triton(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], S0)
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        gated_delta_rule_triton(q, k, v, g, beta[..., None], S0)
    with pytest.raises(ValueError, match="chunk_size"):
        gated_delta_rule_triton(q, k, v, g, beta, S0, chunk_size=20)
    with pytest.raises(ValueError, match="gated_delta_rule_triton"):
        gated_delta_rule_step_triton(q, k, v, g, beta, S0)


def test_bf16_inputs_give_bf16_outputs_fp32_states_and_finite_gradients():
    q, k, v, g, beta, S0 = _inputs(40, 16, 16, True)
    low = _leaves(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, beta.bfloat16(), S0)
    o, S = gated_delta_rule_triton(*low, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref = gated_delta_rule_reference(*[x.float() for x in low])
    assert_close_rms(o.float(), o_ref, 2e-2, "o (bf16)")
    assert_close_rms(S, S_ref, 2e-2, "state (bf16)")
    o.float().sum().backward()
    assert low[4].grad.dtype == torch.bfloat16
    assert all(torch.isfinite(x.grad).all() for x in low)


_AOT_SCRIPT = """
import json, triton.language as tl
from aot_compile import aot_compile, shared_bytes
import lifelong.kernels.common.chunk_h as CH
import lifelong.kernels.common.chunk_o as CO
import lifelong.kernels.common.fused_step as FS
import lifelong.kernels.delta_rule.triton as D
FP32 = ("gc", "h0", "ht", "dht", "dh0", "dv", "dv_local", "dv_out", "dq", "dk", "dk_in", "dw", "dg", "g", "h",
        "h_out", "Tm", "dbeta", "beta")
base = dict(H=8, K=128, V=128, BT=64, MM=tl.bfloat16, USE_G=True)
c = lambda kern, **kw: shared_bytes(aot_compile(kern, {**base, **kw}, fp32_pointers=FP32))
out = {
    "wy_fwd": c(D._wy_fwd_kernel, BK=64, BV=64, SUB=16, NB=4, LOG_NB=2),
    "wy_bwd": c(D._wy_bwd_kernel, BK=64, BV=64),
    "fwd_h": c(CH._fwd_h_kernel, BK=128, BV=64, USE_GK=False, USE_DELTA=True, USE_H0=True),
    "bwd_dv": c(CO._bwd_dv_kernel, BK=64, BV=64, USE_GK=False, ADD_DH=False),
    "bwd_dh": c(CH._bwd_dh_kernel, BK=128, BV=64, USE_GK=False, USE_DELTA=True, USE_DHT=True),
    "bwd_dqk": c(CO._bwd_dqk_kernel, BK=64, BV=64, USE_GK=False, USE_DELTA=True),
    "step": shared_bytes(aot_compile(FS._step_kernel, dict(H=8, K=128, V=128, BK=128, BV=64, USE_G=True,
                                     USE_GK=False, USE_DELTA=True), fp32_pointers=FP32)),
}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_kernels_compile_for_h100_and_fit_its_shared_memory():
    """AOT-compiles every delta-rule kernel for sm_90 in bf16 at D=128 (no GPU needed)."""
    import json

    from aot_compile import H100_SHARED_BYTES, run_compile_script

    run = run_compile_script(_AOT_SCRIPT)
    assert run.returncode == 0, run.stderr[-3000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(shared) == 7
    too_big = {name: b for name, b in shared.items() if b > H100_SHARED_BYTES}
    assert not too_big, f"kernels over the H100's shared memory: {too_big}"


def test_cpu_tensors_without_the_interpreter_raise_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, g, beta, S0 = _inputs(8, 16, 16, True)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        gated_delta_rule_triton(q, k, v, g, beta, S0)
    with pytest.raises(RuntimeError, match="backend='auto'"):
        gated_delta_rule_step_triton(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], S0)
