"""Sliding-window attention: softmax over the last w pairs, constant memory.

Per head: o_t = sum_{t-w < s <= t} softmax_s(q_t . k_s / sqrt(K)) v_s. The state is the window
itself (:class:`WindowCache`, k ``[B, H, w, K]``, v ``[B, H, w, V]``, valid ``[B, w]``): pairs older
than w tokens are forgotten exactly. No positional encoding (see ``softmax_attention.py``).
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention import WindowCache, empty_window_cache, sliding_window_attn, sliding_window_attn_step
from lifelong.memory_layers.softmax_attention import AttentionProjections, _values_norm
from lifelong.memory_layers.state import state_nbytes


class SlidingWindowAttention(AttentionProjections):
    """x ``[B, T, D]`` -> y ``[B, T, D]``; each token attends to itself and the previous window - 1."""

    def __init__(
        self, d_model: int, num_heads: int, window: int = 64, chunk_size: int = 64, backend: str = "auto"
    ) -> None:
        super().__init__(d_model, num_heads, chunk_size=chunk_size, backend=backend)
        if window < 1:
            raise ValueError(f"window must be >= 1 (the token itself), got {window}")
        self.window = window

    def init_state(self, batch_size: int, device: torch.device | str) -> WindowCache:
        return empty_window_cache(batch_size, self.num_heads, self.head_dim, self.head_dim, self.window, device)

    def forward_chunk(self, x: torch.Tensor, state: WindowCache) -> tuple[torch.Tensor, WindowCache]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, window after the last token)."""
        self._check_x(x, single_token=False)
        q, k, v = self._project(x)
        o, state = sliding_window_attn(
            q, k, v, state, window=self.window, chunk_size=self.chunk_size, backend=self.backend
        )
        return self._output(o, x), state

    def step(self, x: torch.Tensor, state: WindowCache) -> tuple[torch.Tensor, WindowCache]:
        """x ``[B, D]`` -> (y ``[B, D]``, window shifted by one)."""
        self._check_x(x, single_token=True)
        q, k, v = self._project(x)
        o, state = sliding_window_attn_step(q, k, v, state, window=self.window, backend=self.backend)
        return self._output(o, x), state

    def state_metrics(self, state: WindowCache) -> dict[str, float]:
        return {
            "state_norm": _values_norm(state.v, state.valid),
            "window_occupancy": float(state.valid.float().mean()),
            "state_bytes": float(state_nbytes(state)),
        }

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, window={self.window}, "
            f"chunk_size={self.chunk_size}, backend={self.backend!r}"
        )
