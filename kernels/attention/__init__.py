"""Attention family: softmax attention (growing cache), sliding window, LoLA.

Every op is ``op(q, k, v, state, *, ..., backend="auto") -> (o, state)`` with q, k ``[B, T, H, K]``,
v ``[B, T, H, V]``, o ``[B, T, H, V]``; ``*_step`` ops take one token (``[B, H, K]``). ``state=None``
means an empty cache. States (``kernels/attention/states.py``):

- ``KVCache(k [B,H,N,K], v [B,H,N,V], valid [B,N])``: N grows by T per call (nonparametric), up to
  ``max_cache`` when the op is given one (then the oldest entries are evicted);
- ``WindowCache(k [B,H,w,K], v [B,H,w,V], valid [B,w])``: the last w pairs;
- ``LoLAState``: linear state (S, z), window of eta pairs, sparse cache of lambda pairs.

No positional encoding is applied anywhere. There is no Triton kernel for this family: the chunk
forms are masked matmuls, which run as they are on CUDA tensors, so every backend (``auto``,
``torch``, ``triton``) takes them; every op still checks its inputs and ``backend`` through
``kernels.utils.guard.op_guard``.
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention.chunk import lola_attn_chunk, sliding_window_attn_chunk, softmax_attn_chunk
from lifelong.kernels.attention.lola_select import check_selection
from lifelong.kernels.attention.reference import (
    lola_attn_reference, lola_attn_step as _lola_attn_step_torch, sliding_window_attn_reference,
    sliding_window_attn_step as _sliding_window_attn_step_torch, softmax_attn_reference,
    softmax_attn_step as _softmax_attn_step_torch,
)
from lifelong.kernels.attention import step_cpp
from lifelong.kernels.attention.step import lola_attn_step_fast
from lifelong.kernels.attention.states import (
    SELECTIONS, KVCache, LoLAState, WindowCache, empty_kv_cache, empty_lola_state, empty_window_cache,
)
from lifelong.kernels.utils.checks import check_lola_inputs, check_softmax_attn_inputs, check_window_attn_inputs
from lifelong.kernels.utils.guard import op_guard

__all__ = [
    "SELECTIONS", "KVCache", "LoLAState", "WindowCache",
    "empty_kv_cache", "empty_lola_state", "empty_window_cache",
    "softmax_attn", "softmax_attn_step", "softmax_attn_chunk", "softmax_attn_reference",
    "sliding_window_attn", "sliding_window_attn_step", "sliding_window_attn_chunk",
    "sliding_window_attn_reference",
    "lola_attn", "lola_attn_step", "lola_attn_chunk", "lola_attn_reference",
]


def _gate_tensor(gate: torch.Tensor | float, num_heads: int, like: torch.Tensor) -> torch.Tensor:
    """The per-head mixing weight of the linear state, ``[H]`` in [0, 1]."""
    g = torch.as_tensor(gate, dtype=torch.float32, device=like.device)
    if g.dim() == 0:
        g = g.expand(num_heads)
    if g.shape != (num_heads,):
        raise ValueError(f"gate must be a float or a [H] = [{num_heads}] tensor in [0, 1], got {tuple(g.shape)}")
    return g


def _check_lola(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, window: int, cache_size: int,
    selection: str, *, single_token: bool = False,
) -> None:
    """LoLA's inputs, sizes and state (``checks.check_lola_inputs``) and its cache ``selection``."""
    check_selection(selection)
    check_lola_inputs(q, k, v, state, window, cache_size, single_token=single_token)


def softmax_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache | None, *,
    scale: float | None = None, chunk_size: int = 64, max_cache: int | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, KVCache]:
    """Causal softmax attention over [cache | new tokens]; the cache grows by T.

    max_cache: None (unbounded, the nonparametric reference) or C >= 1: every token attends to the
    newest C pairs only (itself included) and the cache keeps the newest C (the oldest are evicted).
    """
    op_guard(backend, q, check_softmax_attn_inputs, q, k, v, state)
    return softmax_attn_chunk(q, k, v, state, scale=scale, chunk_size=chunk_size, max_cache=max_cache)


def softmax_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache | None, *,
    scale: float | None = None, max_cache: int | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, KVCache]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]`` -> o ``[B, H, V]``, cache grown by one (the
    oldest entry evicted once it holds ``max_cache``)."""
    op_guard(backend, q, check_softmax_attn_inputs, q, k, v, state, single_token=True)
    return _softmax_attn_step_torch(q, k, v, state, scale=scale, max_cache=max_cache)


def sliding_window_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowCache | None, *, window: int,
    scale: float | None = None, chunk_size: int = 64, backend: str = "auto",
) -> tuple[torch.Tensor, WindowCache]:
    """Softmax over the last ``window`` pairs (the token itself included)."""
    op_guard(backend, q, check_window_attn_inputs, q, k, v, state, window)
    return sliding_window_attn_chunk(q, k, v, state, window=window, scale=scale, chunk_size=chunk_size)


def sliding_window_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WindowCache | None, *, window: int,
    scale: float | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, WindowCache]:
    """One token of :func:`sliding_window_attn`: ``[B, H, K]`` -> ``[B, H, V]``."""
    op_guard(backend, q, check_window_attn_inputs, q, k, v, state, window, single_token=True)
    return _sliding_window_attn_step_torch(q, k, v, state, window=window, scale=scale)


def lola_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor | float = 0.5, selection: str = "sre",
    scale: float | None = None, chunk_size: int = 64, backend: str = "auto",
) -> tuple[torch.Tensor, LoLAState]:
    """LoLA (window ``eta`` = window, sparse cache ``lambda`` = cache_size, linear state with elu+1).

    gate: weight g of the linear state per head (``[H]`` or a float). selection: ``sre`` (the paper),
    ``recency`` or ``random`` (ablations). With window = cache_size = 0 this is linear attention.
    """
    op_guard(backend, q, _check_lola, q, k, v, state, window, cache_size, selection)
    return lola_attn_chunk(
        q, k, v, state, window=window, cache_size=cache_size, gate=_gate_tensor(gate, q.shape[2], q),
        selection=selection, scale=scale, chunk_size=chunk_size,
    )


def lola_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LoLAState | None, *, window: int,
    cache_size: int, gate: torch.Tensor | float = 0.5, selection: str = "sre",
    scale: float | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, LoLAState]:
    """One token of :func:`lola_attn`: q, k ``[B, H, K]``, v ``[B, H, V]`` -> o ``[B, H, V]``.

    Without autograd (acting) it runs one C++ call on the CPU (``step_cpp.lola_attn_step_cpp``) or
    ``step.lola_attn_step_fast`` elsewhere (or where C++ cannot be built): the same decisions and state
    as the reference step (``reference.lola_attn_step``, used under autograd) with fewer, cheaper ops."""
    op_guard(backend, q, _check_lola, q, k, v, state, window, cache_size, selection, single_token=True)
    if not torch.is_grad_enabled():
        if state is None:
            state = empty_lola_state(q.shape[0], q.shape[1], k.shape[-1], v.shape[-1], window, cache_size, q.device)
        step = step_cpp.lola_attn_step_cpp if step_cpp.usable(q) else lola_attn_step_fast
        return step(
            q, k, v, state, window=window, cache_size=cache_size, gate=_gate_tensor(gate, q.shape[1], q),
            selection=selection, scale=scale,
        )
    return _lola_attn_step_torch(
        q, k, v, state, window=window, cache_size=cache_size, gate=_gate_tensor(gate, q.shape[1], q),
        selection=selection, scale=scale,
    )
