"""The caches of the attention family and the checks on the ops' inputs.

Layout (DESIGN.md section 2): q, k ``[B, T, H, K]``, v ``[B, T, H, V]`` for sequences and
``[B, H, K]`` / ``[B, H, V]`` for one token. Caches store keys and values head-major,
``[B, H, N, K]``, oldest entry first, fp32. A ``valid`` mask marks the entries that exist: slots of
a cache that is not full yet, and entries cleared by a reset, are invalid and get no attention.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class KVCache(NamedTuple):
    """Softmax attention's growing cache: k ``[B, H, N, K]``, v ``[B, H, N, V]``, valid ``[B, N]`` bool."""

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


# ---- input checks ---------------------------------------------------------------------------------
def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, single_token: bool = False) -> None:
    """q, k ``[B, T, H, K]``, v ``[B, T, H, V]`` (or ``[B, H, K]`` / ``[B, H, V]`` for one token)."""
    dims = 3 if single_token else 4
    layout = "[B, H, K] / [B, H, V]" if single_token else "[B, T, H, K] / [B, T, H, V]"
    if q.dim() != dims or k.dim() != dims or v.dim() != dims:
        raise ValueError(
            f"q, k, v must be {layout}, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q and k must have the same shape and v the same leading dims ({layout}), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def check_cache(
    name: str, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, ref_k: torch.Tensor,
    ref_v: torch.Tensor, *, size: int | None = None,
) -> None:
    """A cache ``[B, H, N, K]`` / ``[B, H, N, V]`` / ``[B, N]`` matching new tokens ref ``[B, T, H, K]``."""
    b, h, kd, vd = ref_k.shape[0], ref_k.shape[-2], ref_k.shape[-1], ref_v.shape[-1]
    n = k.shape[2] if k.dim() == 4 else -1
    ok = (
        k.dim() == 4 and tuple(k.shape) == (b, h, n, kd) and tuple(v.shape) == (b, h, n, vd)
        and tuple(valid.shape) == (b, n) and valid.dtype == torch.bool
        and (size is None or n == size)
    )
    if not ok:
        want_n = "N" if size is None else str(size)
        raise ValueError(
            f"{name} must hold k [{b}, {h}, {want_n}, {kd}], v [{b}, {h}, {want_n}, {vd}], valid "
            f"[{b}, {want_n}] bool, got {tuple(k.shape)}, {tuple(v.shape)}, {tuple(valid.shape)} "
            f"{valid.dtype}: build it with the op's empty_* helper or the layer's init_state"
        )


def check_lola_state(state: LoLAState, ref_k: torch.Tensor, ref_v: torch.Tensor, window: int, cache_size: int) -> None:
    """Shapes of a :class:`LoLAState` for new tokens ref ``[B, T, H, K]`` (or ``[B, H, K]``)."""
    if not isinstance(state, LoLAState):
        raise TypeError(f"state must be a LoLAState (see empty_lola_state), got {type(state).__name__}")
    b, h, kd, vd = ref_k.shape[0], ref_k.shape[-2], ref_k.shape[-1], ref_v.shape[-1]
    expected = {
        "S": (b, h, kd, vd), "z": (b, h, kd),
        "window_k": (b, h, window, kd), "window_v": (b, h, window, vd), "window_valid": (b, window),
        "cache_k": (b, h, cache_size, kd), "cache_v": (b, h, cache_size, vd),
        "cache_valid": (b, h, cache_size), "cache_sre": (b, h, cache_size),
        "cache_birth": (b, h, cache_size), "count": (b,),
    }
    for field, shape in expected.items():
        got = tuple(getattr(state, field).shape)
        if got != shape:
            raise ValueError(
                f"LoLAState.{field} is {got}, expected {shape} for window={window}, "
                f"cache_size={cache_size}: build the state with empty_lola_state(...) using the same "
                f"window and cache_size as the op"
            )


def resolve_scale(scale: float | None, key_dim: int) -> float:
    return key_dim ** -0.5 if scale is None else float(scale)
