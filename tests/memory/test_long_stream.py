"""Stability over a lifetime: 10^5 random tokens through every parametric mixer's ``step``.

The state stays finite and its byte size stays what it was after 10 steps (DESIGN.md section 4's
numerical guard, at the layer level). Slow: about a minute per mixer-pair on one core.
"""
from __future__ import annotations

import pytest
import torch

from lifelong.memory_layers.registry import available_mixers, build_mixer, load_memory_config
from lifelong.memory_layers.state import state_is_finite, state_nbytes

STEPS = 100_000
D_MODEL = 16
PARAMETRIC = [name for name in available_mixers() if name != "softmax"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", PARAMETRIC)
def test_a_long_random_stream_stays_finite_at_constant_size(name):
    cfg = load_memory_config(name)
    cfg.num_heads = 2
    mixer = build_mixer(cfg, D_MODEL).eval()
    assert mixer.parametric
    inputs = 3.0 * torch.randn(997, 1, D_MODEL)  # a prime-length pool, cycled: no short period
    state = mixer.init_state(1, "cpu")
    with torch.inference_mode():
        for t in range(STEPS):
            y, state = mixer.step(inputs[t % 997], state)
            if t == 9:
                bytes_after_10 = state_nbytes(state)
            if t % 20_000 == 0:
                assert state_is_finite(state), f"{name}: non-finite state at step {t}"
    assert torch.isfinite(y).all()
    assert state_is_finite(state), f"{name}: non-finite state after {STEPS} steps"
    assert state_nbytes(state) == bytes_after_10
