"""The mixer contract (DESIGN.md section 3), run for every config in ``configs/memory/``.

Adding a mixer config makes it join this suite automatically:
1. chunked ``forward`` equals a loop of ``step``;
2. ``forward(x[:, :a])`` then ``forward(x[:, a:])`` equals ``forward(x)`` (odd a and T);
3. a reset at t equals a fresh ``init_state`` run on ``x[:, t:]``; many resets at once (packed into
   rows, one per run of tokens between resets) equal splitting the batch at every reset time;
4. state shapes, dtypes and bytes do not depend on T (parametric mixers);
5. finite gradients, including into the initial state.

Softmax attention also runs the suite with a cap far below T (``softmax[max_cache=24]``): its
eviction of the oldest pairs must keep 1-3 and 5 exact.
"""
from __future__ import annotations

import pytest
import torch

from lifelong.memory_layers.protocol import MemoryMixer
from lifelong.memory_layers.registry import available_mixers, build_mixer, load_memory_config
from lifelong.memory_layers.state import clone_state, state_nbytes, tree_leaves, tree_map

from helpers.tolerances import TOL_CHUNKED, rel_rms

D_MODEL = 64
T = 63
SPLIT = 29
RESET_AT = 37
TOL = TOL_CHUNKED  # relative RMS, chunked vs recurrent (DESIGN.md section 4)

MIXERS = available_mixers()
CAPPED_SOFTMAX = 24  # below T = 63 and below the 11 + T tokens after warm_state
#: contract cases: every config as shipped, plus softmax with its KV cache cap active
CASES = {name: (name, {}) for name in MIXERS}
CASES[f"softmax[max_cache={CAPPED_SOFTMAX}]"] = ("softmax", {"max_cache": CAPPED_SOFTMAX})

pytestmark = pytest.mark.filterwarnings("ignore::lifelong.memory_layers.softmax_attention.CacheCapWarning")


def make_mixer(case: str) -> MemoryMixer:
    name, overrides = CASES[case]
    cfg = load_memory_config(name)
    for key, value in overrides.items():
        cfg[key] = value
    if "chunk_size" in cfg:
        cfg.chunk_size = 16  # several chunks, the last one partial, at T = 63
    torch.manual_seed(0)
    return build_mixer(cfg, d_model=D_MODEL)


def warm_state(mixer: MemoryMixer, batch: int, generator_seed: int = 1):
    """A non-trivial state: the state after a random prefix (detached)."""
    torch.manual_seed(generator_seed)
    prefix = torch.randn(batch, 11, D_MODEL)
    with torch.no_grad():
        _, state = mixer(prefix, mixer.init_state(batch, "cpu"))
    return state


def assert_states_close(a, b, tol: float = TOL) -> None:
    for la, lb in zip(tree_leaves(a), tree_leaves(b)):
        assert la.shape == lb.shape and la.dtype == lb.dtype
        if la.is_floating_point():
            assert rel_rms(la, lb) < tol
        else:
            assert torch.equal(la, lb)


def test_the_zoo_has_configs():
    assert MIXERS, "configs/memory/ holds no mixer config"


@pytest.mark.parametrize("name", CASES)
def test_chunked_forward_equals_a_loop_of_step(name):
    mixer = make_mixer(name)
    x = torch.randn(2, T, D_MODEL)
    state0 = warm_state(mixer, 2)
    with torch.no_grad():
        y_chunk, s_chunk = mixer(x, clone_state(state0))
        s = clone_state(state0)
        ys = []
        for t in range(T):
            y_t, s = mixer.step(x[:, t], s)
            ys.append(y_t)
    y_loop = torch.stack(ys, dim=1)
    assert y_chunk.shape == (2, T, D_MODEL)
    assert rel_rms(y_chunk, y_loop) < TOL
    assert_states_close(s_chunk, s)


@pytest.mark.parametrize("name", CASES)
def test_forward_in_two_pieces_equals_forward_whole(name):
    mixer = make_mixer(name)
    x = torch.randn(2, T, D_MODEL)
    state0 = warm_state(mixer, 2)
    with torch.no_grad():
        y_whole, s_whole = mixer(x, clone_state(state0))
        y_a, s_a = mixer(x[:, :SPLIT], clone_state(state0))
        y_b, s_b = mixer(x[:, SPLIT:], s_a)
    assert rel_rms(torch.cat([y_a, y_b], 1), y_whole) < TOL
    assert_states_close(s_b, s_whole)


@pytest.mark.parametrize("name", CASES)
def test_reset_equals_a_fresh_state_from_that_token(name):
    mixer = make_mixer(name)
    x = torch.randn(2, T, D_MODEL)
    state0 = warm_state(mixer, 2)
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[0, RESET_AT] = True  # lifetime 0 resets, lifetime 1 does not
    with torch.no_grad():
        y, _ = mixer(x, clone_state(state0), reset)
        y_fresh, _ = mixer(x[:1, RESET_AT:], mixer.init_state(1, "cpu"))
        y_noreset, _ = mixer(x, clone_state(state0))
    assert rel_rms(y[:1, RESET_AT:], y_fresh) < TOL
    assert rel_rms(y[1], y_noreset[1]) < TOL, "a reset of lifetime 0 changed lifetime 1"
    assert rel_rms(y[0, :RESET_AT], y_noreset[0, :RESET_AT]) < TOL, "a reset changed earlier tokens"


@pytest.mark.parametrize("name", CASES)
def test_many_resets_give_the_outputs_end_state_and_gradients_of_splitting_at_every_reset(name):
    mixer = make_mixer(name)
    x = torch.randn(4, T, D_MODEL)
    state0 = warm_state(mixer, 4)
    g = torch.Generator().manual_seed(3)
    reset = torch.rand(4, T, generator=g) < 0.15
    reset[0, 0] = True      # a lifetime that starts fresh
    reset[1] = False        # one that never resets: its carried state runs the whole sequence
    reset[2, -1] = True     # one whose last piece is a single token
    reset[3, 1:] = False
    reset[3, 40] = True     # one with a long carried piece and a long fresh one
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_packed, end_packed = mixer(xa, clone_state(state0), reset)
    y_split, end_split = mixer._forward_split(xb, clone_state(state0), reset)
    assert rel_rms(y_packed, y_split) < TOL
    assert_states_close(end_packed, end_split)
    weights = torch.randn_like(y_split)
    (y_packed * weights).sum().backward()
    (y_split * weights).sum().backward()
    assert rel_rms(xa.grad, xb.grad) < TOL


@pytest.mark.parametrize("name", CASES)
def test_state_size_does_not_depend_on_tokens_seen(name):
    mixer = make_mixer(name)
    with torch.no_grad():
        _, short = mixer(torch.randn(2, 5, D_MODEL), mixer.init_state(2, "cpu"))
        _, long = mixer(torch.randn(2, 90, D_MODEL), mixer.init_state(2, "cpu"))
    if mixer.parametric:
        assert [t.shape for t in tree_leaves(short)] == [t.shape for t in tree_leaves(long)]
        assert [t.dtype for t in tree_leaves(short)] == [t.dtype for t in tree_leaves(long)]
        assert state_nbytes(short) == state_nbytes(long)
        assert all(t.dtype == torch.float32 for t in tree_leaves(long) if t.is_floating_point())
    else:  # the nonparametric reference: its cache grows with the lifetime
        assert state_nbytes(long) > state_nbytes(short)


@pytest.mark.parametrize("name", CASES)
def test_gradients_are_finite_and_reach_the_initial_state(name):
    mixer = make_mixer(name)
    x = torch.randn(2, T, D_MODEL, requires_grad=True)
    state0 = tree_map(
        lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), warm_state(mixer, 2)
    )
    y, state = mixer(x, state0)
    loss = y.pow(2).mean() + sum(t.float().pow(2).mean() for t in tree_leaves(state) if t.is_floating_point())
    loss.backward()
    assert torch.isfinite(x.grad).all()
    for p_name, p in mixer.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {p_name}"
    float_leaves = [t for t in tree_leaves(state0) if t.is_floating_point()]
    reached = [t for t in float_leaves if t.grad is not None and t.grad.abs().sum() > 0]
    assert reached, "no gradient reaches the initial state"
    assert all(torch.isfinite(t.grad).all() for t in reached)


@pytest.mark.parametrize("name", CASES)
def test_state_metrics_are_finite_floats(name):
    mixer = make_mixer(name)
    metrics = mixer.state_metrics(warm_state(mixer, 2))
    assert "state_norm" in metrics
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in metrics.values())


@pytest.mark.parametrize("name", MIXERS)
def test_heads_must_divide_the_model_width(name):
    cfg = load_memory_config(name)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build_mixer(cfg, d_model=cfg.num_heads * 8 + 1)
