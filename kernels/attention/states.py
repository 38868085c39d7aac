"""The caches of the attention family (their checks are in ``kernels/utils/checks.py``).

Layout (DESIGN.md section 2): q, k ``[B, T, H, K]``, v ``[B, T, H, V]`` for sequences and
``[B, H, K]`` / ``[B, H, V]`` for one token. Caches store keys and values head-major,
``[B, H, N, K]``, oldest entry first, fp32. A ``valid`` mask marks the entries that exist: slots of
a cache that is not full yet, and entries cleared by a reset, are invalid and get no attention.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class KVCache(NamedTuple):
    """Softmax attention's cache: k ``[B, H, N, K]``, v ``[B, H, N, V]``, valid ``[B, N]`` bool.

    Entry n is the pair of one time step (the same step for every lifetime of the batch). N grows by
    one per token, up to ``max_cache`` when the op has one (then the oldest entry is evicted).
    """

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor


class WindowCache(NamedTuple):
    """Sliding-window cache of the last w pairs (oldest first): k ``[B, H, w, K]``, v ``[B, H, w, V]``,
    valid ``[B, w]`` bool."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor


class LoLAState(NamedTuple):
    """LoLA's three memories (arXiv 2505.23666), every shape independent of the tokens seen.

    - linear state (the paper's H and s): S ``[B, H, K, V]`` = sum phi(k) v^T, z ``[B, H, K]`` = sum phi(k)
      over the pairs folded so far, phi = elu + 1;
    - sliding window of the last eta pairs (oldest first): window_k ``[B, H, eta, K]``,
      window_v ``[B, H, eta, V]``, window_valid ``[B, eta]``;
    - sparse cache of lambda selected pairs: cache_k ``[B, H, lambda, K]``, cache_v
      ``[B, H, lambda, V]``, cache_valid ``[B, H, lambda]``, cache_sre ``[B, H, lambda]`` (their
      self-recall error at the last decision), cache_birth ``[B, H, lambda]`` int64 (the lifetime
      index of the token that produced them); canonical order: valid pairs by birth, then the empty
      slots, which hold zeros;
    - count ``[B]`` int64: tokens seen since the last reset (the birth of the next token).
    """

    S: torch.Tensor
    z: torch.Tensor
    window_k: torch.Tensor
    window_v: torch.Tensor
    window_valid: torch.Tensor
    cache_k: torch.Tensor
    cache_v: torch.Tensor
    cache_valid: torch.Tensor
    cache_sre: torch.Tensor
    cache_birth: torch.Tensor
    count: torch.Tensor


SELECTIONS = ("sre", "recency", "random")


def empty_kv_cache(
    batch_size: int, num_heads: int, key_dim: int, value_dim: int, device: torch.device | str = "cpu"
) -> KVCache:
    """A cache with no entries (N = 0)."""
    return KVCache(
        torch.zeros(batch_size, num_heads, 0, key_dim, device=device),
        torch.zeros(batch_size, num_heads, 0, value_dim, device=device),
        torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
    )


def check_max_cache(max_cache: int | None) -> None:
    """``max_cache`` is None (an unbounded cache) or a positive number of pairs."""
    if max_cache is not None and (isinstance(max_cache, bool) or not isinstance(max_cache, int) or max_cache < 1):
        raise ValueError(f"max_cache must be None (unbounded) or an int >= 1, got {max_cache!r}")


def keep_newest(cache: KVCache, n: int | None) -> KVCache:
    """The newest ``n`` entries of ``cache`` (all of them when ``n`` is None or the cache holds no
    more), as views: ``.contiguous()`` them before keeping them, so the evicted entries are freed."""
    start = 0 if n is None else max(cache.k.shape[2] - n, 0)
    if start == 0:
        return cache
    return KVCache(cache.k[:, :, start:], cache.v[:, :, start:], cache.valid[:, start:])


def empty_window_cache(
    batch_size: int, num_heads: int, key_dim: int, value_dim: int, window: int,
    device: torch.device | str = "cpu",
) -> WindowCache:
    """A window of ``window`` invalid (empty) slots."""
    return WindowCache(
        torch.zeros(batch_size, num_heads, window, key_dim, device=device),
        torch.zeros(batch_size, num_heads, window, value_dim, device=device),
        torch.zeros(batch_size, window, dtype=torch.bool, device=device),
    )


def empty_lola_state(
    batch_size: int, num_heads: int, key_dim: int, value_dim: int, window: int, cache_size: int,
    device: torch.device | str = "cpu",
) -> LoLAState:
    """Zero linear state, empty window and empty sparse cache."""
    b, h, kd, vd = batch_size, num_heads, key_dim, value_dim
    zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
    return LoLAState(
        S=zeros(b, h, kd, vd),
        z=zeros(b, h, kd),
        window_k=zeros(b, h, window, kd),
        window_v=zeros(b, h, window, vd),
        window_valid=torch.zeros(b, window, dtype=torch.bool, device=device),
        cache_k=zeros(b, h, cache_size, kd),
        cache_v=zeros(b, h, cache_size, vd),
        cache_valid=torch.zeros(b, h, cache_size, dtype=torch.bool, device=device),
        cache_sre=zeros(b, h, cache_size),
        cache_birth=torch.zeros(b, h, cache_size, dtype=torch.long, device=device),
        count=torch.zeros(b, dtype=torch.long, device=device),
    )


def resolve_scale(scale: float | None, key_dim: int) -> float:
    """``key_dim ** -0.5`` when ``scale`` is None."""
    return key_dim ** -0.5 if scale is None else float(scale)
