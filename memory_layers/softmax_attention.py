"""Softmax attention over a KV cache: the nonparametric reference mixer.

Per head: o_t = sum_{t - C < s <= t} softmax_s(q_t . k_s / sqrt(K)) v_s over the newest C = ``max_cache``
pairs of the lifetime (since the last reset). The cache grows by one pair per token until it holds
C; from then on the oldest pair is evicted at every token, so memory and per-step cost stop
growing (the layer is then sliding-window attention of width C). ``max_cache=None``
(``memory.max_cache=null``) keeps every pair: the unbounded nonparametric reference, whose memory
and per-step cost grow with the lifetime (~16 KB per step for the default agent).

No positional encoding: a lifetime is unbounded, so absolute positions (RoPE angles, learned
tables) would leave their trained range; order reaches the mixer through its inputs.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from lifelong.kernels.attention import KVCache, empty_kv_cache, softmax_attn, softmax_attn_step
from lifelong.kernels.attention.states import check_max_cache
from lifelong.kernels.utils.backend import BACKENDS
from lifelong.memory_layers.modules import ParamCache, eager_acting, packed_linears
from lifelong.memory_layers.protocol import MemoryMixer
from lifelong.memory_layers.state import state_nbytes


class AttentionProjections(MemoryMixer):
    """q, k, v and output projections shared by the attention-family mixers (no biases).

    x ``[..., D]`` -> q, k, v ``[..., H, K]``; head outputs ``[..., H, V]`` -> y ``[..., D]``.
    """

    def __init__(self, d_model: int, num_heads: int, chunk_size: int = 64, backend: str = "auto") -> None:
        super().__init__(d_model, num_heads)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.backend = backend
        d = d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self._in_cache, self._out_cache = ParamCache(), ParamCache()  # the eager acting step's packed weights

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if eager_acting() and x.dim() == 2:  # one token: q, k, v in one matmul (packed weights)
            qkv = packed_linears(x, [self.q_proj, self.k_proj, self.v_proj], self._in_cache)
            return qkv.view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        return tuple(self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if eager_acting() and x.dim() == 2:
            return packed_linears(o.to(x.dtype).flatten(-2), [self.o_proj], self._out_cache)
        return self.o_proj(o.to(x.dtype).flatten(-2))

    def _check_x(self, x: torch.Tensor, single_token: bool) -> None:
        if single_token and (x.dim() != 2 or x.shape[-1] != self.d_model):
            raise ValueError(f"x must be [B, {self.d_model}] (one token), got {tuple(x.shape)}")
        if not single_token and (x.dim() != 3 or x.shape[-1] != self.d_model):
            raise ValueError(f"x must be [B, T, {self.d_model}], got {tuple(x.shape)}")


def _values_norm(v: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over (B, H) of the Frobenius norm of the valid cached values: v ``[B, H, N, V]``, valid ``[B, (H,) N]``."""
    mask = valid[:, None, :, None] if valid.dim() == 2 else valid[..., None]
    return float((v * mask).float().norm(dim=(-2, -1)).mean()) if v.numel() else 0.0


class CacheCapWarning(UserWarning):
    """Softmax attention's KV cache reached ``max_cache``: from then on its oldest pairs are evicted."""


class SoftmaxAttention(AttentionProjections):
    """Causal softmax attention over the newest ``max_cache`` pairs: x ``[B, T, D]`` -> y ``[B, T, D]``,
    state :class:`KVCache` (k ``[B, H, N, K]``, v ``[B, H, N, V]``, valid ``[B, N]``), N growing by T per
    call up to ``max_cache``.

    At the cap the oldest pairs are evicted, in ``forward`` and ``step`` alike (a token attends to
    itself and the max_cache - 1 pairs before it), and a :class:`CacheCapWarning` is issued the first
    time a cache of this layer reaches it. ``max_cache=None``: unbounded (never evicts).
    """

    parametric = False

    def __init__(
        self, d_model: int, num_heads: int, backend: str = "auto", max_cache: int | None = None,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, num_heads, chunk_size=chunk_size, backend=backend)
        check_max_cache(max_cache)
        self.max_cache = max_cache
        self._warned_at_cap = False

    def init_state(self, batch_size: int, device: torch.device | str) -> KVCache:
        return empty_kv_cache(batch_size, self.num_heads, self.head_dim, self.head_dim, device)

    def _check_state(self, state: KVCache) -> None:
        if not isinstance(state, KVCache):
            raise ValueError(f"state must be a KVCache from init_state(batch_size), got {type(state).__name__}")

    def _note_cap(self, state: KVCache) -> None:
        """Warn once per layer when its cache first holds ``max_cache`` pairs."""
        if self.max_cache is None or self._warned_at_cap or state.k.shape[2] < self.max_cache:
            return
        self._warned_at_cap = True
        warnings.warn(
            f"softmax attention's KV cache reached max_cache={self.max_cache} pairs: from now on its "
            f"oldest pairs are evicted (attention over the last {self.max_cache} tokens); set "
            f"memory.max_cache=null for the unbounded nonparametric reference",
            CacheCapWarning, stacklevel=3,
        )

    def forward_chunk(self, x: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, cache grown by T, cut to ``max_cache``)."""
        self._check_x(x, single_token=False)
        self._check_state(state)
        q, k, v = self._project(x)
        o, state = softmax_attn(
            q, k, v, state, chunk_size=self.chunk_size, max_cache=self.max_cache, backend=self.backend
        )
        self._note_cap(state)
        return self._output(o, x), state

    def step(self, x: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x ``[B, D]`` -> (y ``[B, D]``, cache grown by one, or shifted by one at ``max_cache``)."""
        self._check_x(x, single_token=True)
        self._check_state(state)
        q, k, v = self._project(x)
        o, state = softmax_attn_step(q, k, v, state, max_cache=self.max_cache, backend=self.backend)
        self._note_cap(state)
        return self._output(o, x), state

    def reset_state(self, state: KVCache, mask: torch.Tensor) -> KVCache:
        """Invalidate the cache of the lifetimes where ``mask`` ``[B]`` is True, then drop the leading
        entries that no lifetime can see any more."""
        if not bool(mask.any()):
            return state
        valid = state.valid & ~mask[:, None]
        seen = valid.any(0)
        first = int(torch.nonzero(seen)[0]) if bool(seen.any()) else valid.shape[1]
        return KVCache(state.k[:, :, first:], state.v[:, :, first:], valid[:, first:])

    def state_metrics(self, state: KVCache) -> dict[str, float]:
        """``cache_tokens``: pairs held (N, the same for every lifetime); ``state_bytes``: their bytes."""
        n = state.valid.shape[1]
        return {
            "state_norm": _values_norm(state.v, state.valid),
            "cache_tokens": float(n),
            "cache_valid_frac": float(state.valid.float().mean()) if n else 0.0,
            "state_bytes": float(state_nbytes(state)),
        }

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, max_cache={self.max_cache}, "
            f"chunk_size={self.chunk_size}, backend={self.backend!r}"
        )


__all__ = ["AttentionProjections", "CacheCapWarning", "SoftmaxAttention"]
