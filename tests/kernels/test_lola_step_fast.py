"""LoLA's fast acting step (``kernels/attention/step.py``) against the reference step.

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
from lifelong.kernels.attention.step import lola_attn_step_fast


def stream(t: int, b: int = 3, h: int = 2, d: int = 16, seed: int = 21) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, h, d, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("selection", ["sre", "recency", "random"])
@pytest.mark.parametrize("window,cache_size", [(8, 8), (0, 5), (4, 0), (0, 0), (3, 1)])
def test_fast_step_takes_the_reference_steps_decisions_bit_for_bit(selection, window, cache_size):
    q, k, v = stream(t=150)
    gate = torch.tensor([0.3, 0.6])
    ref = fast = empty_lola_state(3, 2, 16, 16, window, cache_size)
    kwargs = dict(window=window, cache_size=cache_size, gate=gate, selection=selection)
    with torch.inference_mode():
        for t in range(q.shape[1]):
            o_ref, ref = reference_step(q[:, t], k[:, t], v[:, t], ref, **kwargs)
            o_fast, fast = lola_attn_step_fast(q[:, t], k[:, t], v[:, t], fast, **kwargs)
            torch.testing.assert_close(o_fast, o_ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(ref._fields, ref, fast):
        assert torch.equal(a, b), f"state.{name} differs"
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
