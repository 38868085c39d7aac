"""The gated linear family's Triton kernels (under TRITON_INTERPRET=1) against the naive recurrences:
simple GLA (Mamba2), GLA and linear attention; chunked forward, every gradient (initial state and
gates included) and the fused single-token step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerances import TOL_CHUNKED, TOL_GATE_GRAD, TOL_RECURRENT, assert_close_rms

from lifelong.kernels.gated_linear.reference import (
    LinearAttnState,
    gla_reference,
    gla_step,
    linear_attn_reference,
    linear_attn_step,
    simple_gla_reference,
    simple_gla_step,
)
from lifelong.kernels.gated_linear.triton import (
    gla_step_triton,
    gla_triton,
    linear_attn_step_triton,
    linear_attn_triton,
    simple_gla_step_triton,
    simple_gla_triton,
)

pytestmark = pytest.mark.triton

B, H = 1, 2
# (T, D, chunk_size): odd lengths, partial last chunks, one chunk and several
FAST_CASES = [
    pytest.param(16, 16, 16),
    pytest.param(63, 32, 16),
    pytest.param(100, 16, 64),
    pytest.param(100, 32, 32, marks=pytest.mark.slow),
]


def _inputs(T: int, K: int, V: int, gate: str | None):
    """q, k, v, g (log decay; per head, per channel or None) and a non-zero initial state."""
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = None
    if gate == "head":
        g = F.logsigmoid(torch.randn(B, T, H) + 2.0)
    elif gate == "channel":
        g = F.logsigmoid(torch.randn(B, T, H, K) + 2.0)
    return q, k, v, g, torch.randn(B, H, K, V) * 0.5


def _leaves(*xs):
    return [x.detach().clone().requires_grad_() if x is not None else None for x in xs]


def _loss(o: torch.Tensor, S: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """Weighs every output and state entry differently (fixed weights, same on both sides)."""
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()
    if z is not None:
        loss = loss + (z * torch.randn(z.shape, generator=gen)).sum()
    return loss


def _compare_grads(ours, ref, names, gate_names=("g",)) -> None:
    for a, b, name in zip(ours, ref, names):
        if a is None:
            continue
        tol = TOL_GATE_GRAD if name in gate_names else TOL_CHUNKED
        assert_close_rms(a.grad, b.grad, tol, f"d{name}")


@pytest.mark.parametrize("T,D,chunk_size", FAST_CASES)
def test_simple_gla_chunked_matches_recurrence_forward_and_all_gradients(T, D, chunk_size):
    x = _inputs(T, D, D, "head")
    ours, ref = _leaves(*x), _leaves(*x)
    o, S = simple_gla_triton(*ours, chunk_size=chunk_size)
    o_ref, S_ref = simple_gla_reference(*ref)
    assert o.dtype == x[2].dtype and S.dtype == torch.float32
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "final state")
    _loss(o, S).backward()
    _loss(o_ref, S_ref).backward()
    _compare_grads(ours, ref, ["q", "k", "v", "g", "state"])


@pytest.mark.parametrize("T,D,chunk_size", FAST_CASES)
def test_gla_chunked_matches_recurrence_forward_and_all_gradients(T, D, chunk_size):
    x = _inputs(T, D, D, "channel")
    ours, ref = _leaves(*x), _leaves(*x)
    o, S = gla_triton(*ours, chunk_size=chunk_size)
    o_ref, S_ref = gla_reference(*ref)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "final state")
    _loss(o, S).backward()
    _loss(o_ref, S_ref).backward()
    _compare_grads(ours, ref, ["q", "k", "v", "g", "state"])


@pytest.mark.parametrize("T,D,chunk_size", FAST_CASES)
def test_linear_attn_chunked_matches_recurrence_forward_and_all_gradients(T, D, chunk_size):
    q, k, v, _, S0 = _inputs(T, D, D, None)
    q, k = F.elu(q) + 1, F.elu(k) + 1  # feature-mapped, positive
    z0 = torch.rand(B, H, D) * T
    ours, ref = _leaves(q, k, v, S0, z0), _leaves(q, k, v, S0, z0)
    o, st = linear_attn_triton(*ours[:3], LinearAttnState(ours[3], ours[4]), chunk_size=chunk_size)
    o_ref, st_ref = linear_attn_reference(*ref[:3], LinearAttnState(ref[3], ref[4]))
    assert isinstance(st, LinearAttnState)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(st.S, st_ref.S, TOL_CHUNKED, "S")
    assert_close_rms(st.z, st_ref.z, TOL_CHUNKED, "z")
    _loss(o, st.S, st.z).backward()
    _loss(o_ref, st_ref.S, st_ref.z).backward()
    _compare_grads(ours, ref, ["q", "k", "v", "S0", "z0"])


def test_simple_gla_without_initial_state_starts_from_zeros():
    q, k, v, g, _ = _inputs(20, 16, 16, "head")
    o, S = simple_gla_triton(q, k, v, g, None, chunk_size=16)
    o_ref, S_ref = simple_gla_reference(q, k, v, g, None)
    assert_close_rms(o, o_ref, TOL_CHUNKED, "o")
    assert_close_rms(S, S_ref, TOL_CHUNKED, "S")


def test_gates_far_below_the_clamp_stay_finite_and_match_the_clamped_recurrence():
    q, k, v, _, S0 = _inputs(40, 16, 16, None)
    g_head = torch.full((B, 40, H), -80.0)
    g_chan = torch.full((B, 40, H, 16), -80.0).index_fill_(-1, torch.tensor([0]), -1e-3)
    for fn, ref, g in ((simple_gla_triton, simple_gla_reference, g_head), (gla_triton, gla_reference, g_chan)):
        o, S = fn(q, k, v, g, S0, chunk_size=16)
        o_ref, S_ref = ref(q, k, v, g, S0)
        assert torch.isfinite(o).all() and torch.isfinite(S).all()
        assert_close_rms(o, o_ref, TOL_CHUNKED, f"{fn.__name__} o")


def test_simple_gla_result_does_not_depend_on_chunk_size():
    x = _inputs(70, 16, 16, "head")
    o16, S16 = simple_gla_triton(*x, chunk_size=16)
    o64, S64 = simple_gla_triton(*x, chunk_size=64)
    assert_close_rms(o16, o64, TOL_RECURRENT, "o")
    assert_close_rms(S16, S64, TOL_RECURRENT, "S")


@pytest.mark.parametrize("D", [16, 32])
def test_fused_steps_match_the_torch_steps(D):
    q, k, v, _, S0 = _inputs(1, D, D, None)
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    g = F.logsigmoid(torch.randn(B, H) + 2.0)
    gk = F.logsigmoid(torch.randn(B, H, D) + 2.0)
    with torch.no_grad():
        for ours, ref in (
            (simple_gla_step_triton(q, k, v, g, S0), simple_gla_step(q, k, v, g, S0)),
            (gla_step_triton(q, k, v, gk, S0), gla_step(q, k, v, gk, S0)),
        ):
            assert_close_rms(ours[0], ref[0], TOL_RECURRENT, "o")
            assert_close_rms(ours[1], ref[1], TOL_RECURRENT, "state")
        qp, kp = F.elu(q) + 1, F.elu(k) + 1
        st0 = LinearAttnState(S0, torch.rand(B, H, D))
        o, st = linear_attn_step_triton(qp, kp, v, st0)
        o_ref, st_ref = linear_attn_step(qp, kp, v, st0)
    assert_close_rms(o, o_ref, TOL_RECURRENT, "linear attn o")
    assert_close_rms(st.S, st_ref.S, TOL_RECURRENT, "linear attn S")
    assert_close_rms(st.z, st_ref.z, TOL_RECURRENT, "linear attn z")


def test_step_with_gradients_enabled_backpropagates_into_state_and_gate():
    q, k, v, _, S0 = _inputs(1, 16, 16, None)
    g = F.logsigmoid(torch.randn(B, H) + 2.0)
    ours, ref = _leaves(q[:, 0], k[:, 0], v[:, 0], g, S0), _leaves(q[:, 0], k[:, 0], v[:, 0], g, S0)
    o, S = simple_gla_step_triton(*ours)
    o_ref, S_ref = simple_gla_step(*ref)
    _loss(o, S).backward()
    _loss(o_ref, S_ref).backward()
    _compare_grads(ours, ref, ["q", "k", "v", "g", "state"])


def test_bad_inputs_raise_errors_that_name_the_fix():
    q, k, v, g, S0 = _inputs(8, 16, 16, "head")
    with pytest.raises(ValueError, match="step"):
        simple_gla_triton(q[:, 0], k[:, 0], v[:, 0], g[:, 0], S0)
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        simple_gla_triton(q, k, v, g[..., None].expand(-1, -1, -1, 16), S0)
    with pytest.raises(ValueError, match="per key channel"):
        gla_triton(q, k, v, g, S0)
    with pytest.raises(ValueError, match="chunk_size"):
        simple_gla_triton(q, k, v, g, S0, chunk_size=48)
    with pytest.raises(ValueError, match="state"):
        simple_gla_triton(q, k, v, g, S0[:, :, :8])


def test_public_ops_dispatch_to_triton():
    from lifelong.kernels.gated_linear import gla, linear_attn, simple_gla

    q, k, v, g, S0 = _inputs(24, 16, 16, "head")
    o, S = simple_gla(q, k, v, g, S0, chunk_size=16, backend="triton")
    assert_close_rms(o, simple_gla_reference(q, k, v, g, S0)[0], TOL_CHUNKED, "simple_gla o")
    gk = F.logsigmoid(torch.randn(B, 24, H, 16) + 2.0)
    o, S = gla(q, k, v, gk, S0, backend="triton")
    assert_close_rms(o, gla_reference(q, k, v, gk, S0)[0], TOL_CHUNKED, "gla o")
    qp, kp = F.elu(q) + 1, F.elu(k) + 1
    o, st = linear_attn(qp, kp, v, None, backend="triton")
    assert_close_rms(o, linear_attn_reference(qp, kp, v, None)[0], TOL_CHUNKED, "linear_attn o")


def test_bf16_inputs_give_bf16_outputs_fp32_states_and_bf16_gradients():
    q, k, v, g, S0 = _inputs(40, 16, 16, "head")
    low = _leaves(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, S0)
    o, S = simple_gla_triton(*low, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref = simple_gla_reference(*[x.float() for x in low])
    assert_close_rms(o.float(), o_ref, 2e-2, "o (bf16)")
    assert_close_rms(S, S_ref, 2e-2, "state (bf16)")
    o.float().sum().backward()
    assert [x.grad.dtype for x in low[:3]] == [torch.bfloat16] * 3
    assert all(torch.isfinite(x.grad).all() for x in low)


_AOT_SCRIPT = """
import json, triton.language as tl
from aot_compile import aot_compile, shared_bytes
import lifelong.kernels.common.chunk_h as CH
import lifelong.kernels.common.chunk_o as CO
import lifelong.kernels.common.fused_step as FS
FP32 = ("gc", "h0", "ht", "dht", "dh0", "dv", "dv_local", "dv_out", "dq", "dk", "dw", "dg", "g", "h", "h_out")
base = dict(H=8, K=128, V=128, MM=tl.bfloat16)
out = {}
for gate, BT, BK in (("G", 64, 64), ("GK", 16, 32)):
    fl = dict(USE_G=gate == "G", USE_GK=gate == "GK")
    c = lambda kern, **kw: shared_bytes(aot_compile(kern, {**base, **fl, "BT": BT, **kw}, fp32_pointers=FP32))
    out[gate + " fwd_h"] = c(CH._fwd_h_kernel, BK=128, BV=64, USE_DELTA=False, USE_H0=True)
    out[gate + " fwd_o"] = c(CO._fwd_o_kernel, BK=BK, BV=64)
    out[gate + " bwd_dv"] = c(CO._bwd_dv_kernel, BK=BK, BV=64, ADD_DH=True)
    out[gate + " bwd_dh"] = c(CH._bwd_dh_kernel, BK=128, BV=64, USE_DELTA=False, USE_DHT=True)
    out[gate + " bwd_dqk"] = c(CO._bwd_dqk_kernel, BK=BK, BV=64, USE_DELTA=False)
out["step"] = shared_bytes(aot_compile(FS._step_kernel, dict(H=8, K=128, V=128, BK=128, BV=64, USE_G=False,
                                       USE_GK=True, USE_DELTA=False), fp32_pointers=FP32))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_kernels_compile_for_h100_and_fit_its_shared_memory():
    """AOT-compiles every gated-linear kernel for sm_90 in bf16 at D=128 (no GPU needed)."""
    import json

    from aot_compile import H100_SHARED_BYTES, run_compile_script

    run = run_compile_script(_AOT_SCRIPT)
    assert run.returncode == 0, run.stderr[-3000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(shared) == 11
    too_big = {name: b for name, b in shared.items() if b > H100_SHARED_BYTES}
    assert not too_big, f"kernels over the H100's shared memory: {too_big}"


def test_kernel_benchmark_runs_in_smoke_mode():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = bench.main(["--smoke", "--ops", "simple_gla", "linear_attn", "--impls", "triton", "torch"])
    assert {(r.op, r.impl, r.mode) for r in rows} == {
        (op, impl, mode)
        for op in ("simple_gla", "linear_attn")
        for impl in ("triton", "torch")
        for mode in ("fwd", "fwd+bwd")
    }
    assert all(r.ms is not None and r.ms > 0 and r.tflops > 0 for r in rows)
