"""LoLA's fast acting steps (``kernels/attention/step.py``, and its C++ form ``step_cpp.py``)
against the reference step.

Over long streams, for every selection and for windows and caches of every kind (none, one pair,
full), the fast step must leave bit-identical states (the same decisions from the same recall
errors, the same folds) and outputs equal up to float rounding; the public op takes it whenever no
gradient is recorded.
"""
from __future__ import annotations

import pytest
import torch

from lifelong.kernels.attention import empty_lola_state, lola_attn_step
from lifelong.kernels.attention.reference import lola_attn_step as reference_step
from lifelong.kernels.attention import step_cpp
from lifelong.kernels.attention.step import lola_attn_step_fast
from lifelong.kernels.attention.step_cpp import lola_attn_step_cpp

STEPS = {"python": lola_attn_step_fast, "cpp": lola_attn_step_cpp}


def stream(t: int, b: int = 3, h: int = 2, d: int = 16, seed: int = 21) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, d, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("form", ["python", "cpp"])
@pytest.mark.parametrize("selection", ["sre", "recency", "random"])
@pytest.mark.parametrize("window,cache_size", [(8, 8), (0, 5), (4, 0), (0, 0), (3, 1)])
def test_fast_step_takes_the_reference_steps_decisions_bit_for_bit(form, selection, window, cache_size):
    if form == "cpp" and step_cpp.extension() is None:
        pytest.skip(f"the C++ step cannot be built here: {step_cpp.failure()}")
    fast_step = STEPS[form]
    q, k, v = stream(t=150)
    gate = torch.tensor([0.3, 0.6])
    ref = fast = empty_lola_state(3, 2, 16, 16, window, cache_size)
    kwargs = dict(window=window, cache_size=cache_size, gate=gate, selection=selection)
    with torch.inference_mode():
        for t in range(q.shape[1]):
            o_ref, ref = reference_step(q[:, t], k[:, t], v[:, t], ref, **kwargs)
            o_fast, fast = fast_step(q[:, t], k[:, t], v[:, t], fast, **kwargs)
            torch.testing.assert_close(o_fast, o_ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(ref._fields, ref, fast):
        assert a.dtype == b.dtype and torch.equal(a, b), f"state.{name} differs"
    if cache_size:
        assert ref.cache_valid.all()  # the stream filled the cache: evictions were decided


def test_the_op_acts_with_the_fast_step_and_learns_with_the_reference():
    q, k, v = stream(t=1)
    state = empty_lola_state(3, 2, 16, 16, 4, 3)
    kwargs = dict(window=4, cache_size=3, gate=torch.tensor([0.3, 0.6]))
    with torch.inference_mode():
        o_act, s_act = lola_attn_step(q[:, 0], k[:, 0], v[:, 0], state, **kwargs)
    q_leaf = q[:, 0].clone().requires_grad_()
    o_learn, s_learn = lola_attn_step(q_leaf, k[:, 0], v[:, 0], state, **kwargs)
    o_learn.sum().backward()
    assert q_leaf.grad is not None
    torch.testing.assert_close(o_act, o_learn.detach())
    assert all(torch.equal(a, b.detach()) for a, b in zip(s_act, s_learn))


def test_the_op_acts_in_cpp_on_the_cpu_unless_switched_off(monkeypatch):
    if step_cpp.extension() is None:
        pytest.skip(f"the C++ step cannot be built here: {step_cpp.failure()}")
    q, k, v = stream(t=1)
    assert step_cpp.usable(q) is False  # autograd on: the reference step learns
    with torch.inference_mode():
        assert step_cpp.usable(q) is True
        monkeypatch.setenv(step_cpp.ENV_SWITCH, "0")
        assert step_cpp.usable(q) is False and step_cpp.extension() is None


def test_a_failed_build_warns_once_and_the_python_step_acts(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension: g++ not found")
    monkeypatch.setattr(step_cpp, "_module", None)
    monkeypatch.setattr(step_cpp, "_failure", None)
    monkeypatch.setattr(step_cpp, "_build", no_compiler)
    q, k, v = stream(t=1)
    state = empty_lola_state(3, 2, 16, 16, 4, 3)
    kwargs = dict(window=4, cache_size=3, gate=torch.tensor([0.3, 0.6]))
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="g\\+\\+ not found.*Python step"):
            o, new = lola_attn_step(q[:, 0], k[:, 0], v[:, 0], state, **kwargs)
        o_fast, fast = lola_attn_step_fast(q[:, 0], k[:, 0], v[:, 0], state, **kwargs)
    assert torch.equal(o, o_fast) and all(torch.equal(a, b) for a, b in zip(new, fast))
    assert "g++ not found" in step_cpp.failure()
    with pytest.raises(RuntimeError, match="not available"):
        lola_attn_step_cpp(q[:, 0], k[:, 0], v[:, 0], state, **kwargs)
