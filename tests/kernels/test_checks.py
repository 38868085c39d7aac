"""The shared input checks (``kernels/utils/checks.py``) and the op guard every public op goes through:
one-line errors that show the expected layout and name the fix, the same whichever backend runs."""
from __future__ import annotations

import pytest
import torch

from lifelong.kernels.delta_rule import gated_delta_rule
from lifelong.kernels.gated_linear import LinearAttnState, simple_gla_step
from lifelong.kernels.palimpsa import PalimpsaState, palimpsa
from lifelong.kernels.ttt import ttt_linear
from lifelong.kernels.utils.checks import check_chunk_size, check_qkv, check_triton_chunk_size
from lifelong.kernels.utils.guard import op_guard

B, T, H, K, V = 2, 5, 3, 4, 6


def _qkv(*lead: int) -> list[torch.Tensor]:
    return [torch.randn(*lead, H, d) for d in (K, K, V)]


def _raises(exc: type[Exception], match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_qkv_layout_errors_name_the_op_for_the_other_layout():
    q, k, v = _qkv(B)
    msg = _raises(ValueError, r"\[B, T, H, K/V\]", check_qkv, q, k, v, counterpart="gated_delta_rule_step")
    assert "got q (2, 3, 4)" in msg and "use gated_delta_rule_step for one token" in msg
    q, k, v = _qkv(B, T)
    _raises(ValueError, r"use the sequence op for \[B, T, H, K\]", check_qkv, q, k, v, single_token=True)
    _raises(ValueError, "q and k must have the same shape", check_qkv, q, k[..., :2], v)
    _raises(ValueError, "must match k .* in every dim but the last", check_qkv, q, k, v[:, :2])


def test_delta_rule_and_gated_linear_name_the_bad_per_head_tensor():
    q, k, v = _qkv(B, T)
    beta, g = torch.rand(B, T, H), -torch.rand(B, T, H)
    _raises(ValueError, r"beta must be \[B, T, H\] = \(2, 5, 3\) \(one write strength per head\), got \(2, 5\)",
            gated_delta_rule, q, k, v, g, beta[..., 0], None)
    _raises(ValueError, r"g must be \[B, H\] = \(2, 3\) \(one log-decay per head\)",
            simple_gla_step, q[:, 0], k[:, 0], v[:, 0], g, None)


def test_states_of_the_wrong_kind_or_shape_name_the_field_and_the_builder():
    q, k, v = _qkv(B, T)
    g, b = -torch.rand(B, T, H), torch.rand(B, T, H, V)
    bad = PalimpsaState(torch.zeros(B, H, K, V), torch.zeros(B, H, V, K))
    _raises(ValueError, r"state.I_tilde must be \[B, H, K, V\] = .*: use init_palimpsa_state",
            palimpsa, q, k, v, g, b, bad)
    _raises(TypeError, r"state must be a PalimpsaState\(M, I_tilde\) or None, got LinearAttnState",
            palimpsa, q, k, v, g, b, LinearAttnState(torch.zeros(1), torch.zeros(1)))


def test_the_guard_checks_inputs_before_the_backend_so_every_backend_gives_the_same_message():
    q, k, v = _qkv(B, T)
    g, beta = -torch.rand(B, T, H), torch.rand(B, T, H)
    state = torch.zeros(B, H, V, K)
    messages = set()
    for backend in ("torch", "triton"):  # triton runs under TRITON_INTERPRET=1 (tests/conftest.py)
        messages.add(_raises(ValueError, r"state must be \[B, H, K, V\]", gated_delta_rule, q, k, v, g, beta, state,
                             backend=backend))
    assert len(messages) == 1
    _raises(ValueError, "unknown backend 'cuda': choose one of", op_guard, "cuda", q, check_qkv, q, k, v)


def test_families_without_a_triton_kernel_refuse_it_by_name():
    q, k, v = (torch.randn(B, T, H, K) for _ in range(3))
    ln = torch.ones(H, K)
    _raises(NotImplementedError, "TTT-Linear has no Triton kernel: use backend='auto' or 'torch'",
            ttt_linear, q, k, v, torch.rand(B, T, H), None, ln_weight=ln, ln_bias=ln, backend="triton")
    _raises(ValueError, r"TTT-Linear needs K = V \(its target is v - k\)",
            ttt_linear, q, k, v[..., :2], torch.rand(B, T, H), None, ln_weight=ln, ln_bias=ln)


def test_chunk_sizes():
    _raises(ValueError, "chunk_size must be a positive int, got 0", check_chunk_size, 0)
    _raises(ValueError, "chunk_size must be a positive int, got 16.0", check_chunk_size, 16.0)
    _raises(ValueError, "gla needs a power-of-two chunk_size", check_chunk_size, 24, power_of_two_for="gla")
    _raises(ValueError, "one of 16, 32, 64, 128 for the Triton kernels, got 8", check_triton_chunk_size, 8)
    check_chunk_size(24)
    check_triton_chunk_size(32)
