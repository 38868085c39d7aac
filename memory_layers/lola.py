"""LoLA: linear attention + sliding window + sparse cache of hard pairs (arXiv 2505.23666).

Per head, three memories of constant size: the last ``window`` pairs exactly, ``cache_size`` pairs
that the linear state recalls worst (highest self-recall error, SRE), and the linear state
(S, z) = (sum phi(k) v^T, sum phi(k)) holding everything else (phi = elu + 1). The output mixes
exact attention over window u cache with the linear readout through a learned per-head gate
g = sigmoid(gate_logit) (DESIGN.md section 2; order of operations in
``kernels/attention/lola_select.py``); at ``gate_init = 0`` (g = 1/2) the two parts are simply
summed in numerator and denominator, as in the paper. ``selection`` picks what stays in the cache:
``sre`` (the paper), ``recency`` (the newest pairs: a longer window) or ``random`` (a uniform random
sample of the pairs that left the window), for the ablations. With window = cache_size = 0 it is
linear attention. The forward is exact per token (see ``kernels/attention/chunk.py``), so ``step``
and ``forward`` take the same cache decisions.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lifelong.kernels.attention import SELECTIONS, LoLAState, empty_lola_state, lola_attn, lola_attn_step
from lifelong.memory_layers.softmax_attention import AttentionProjections
from lifelong.memory_layers.state import effective_rank, state_nbytes


class LoLA(AttentionProjections):
    """x ``[B, T, D]`` -> y ``[B, T, D]`` with state :class:`LoLAState` (constant size)."""

    def __init__(
        self, d_model: int, num_heads: int, window: int = 16, cache_size: int = 16, selection: str = "sre",
        gate_init: float = 0.0, chunk_size: int = 64, backend: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads, chunk_size=chunk_size, backend=backend)
        if window < 0 or cache_size < 0:
            raise ValueError(f"window ({window}) and cache_size ({cache_size}) must be >= 0")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}: choose one of {SELECTIONS}")
        self.window = window
        self.cache_size = cache_size
        self.selection = selection
        #: logit of the per-head weight g of the linear state (g = 0.5 at gate_init = 0)
        self.gate_logit = nn.Parameter(torch.full((num_heads,), float(gate_init)))

    def _kwargs(self) -> dict:
        return dict(
            window=self.window, cache_size=self.cache_size, gate=torch.sigmoid(self.gate_logit),
            selection=self.selection, backend=self.backend,
        )

    def init_state(self, batch_size: int, device: torch.device | str) -> LoLAState:
        h, d = self.num_heads, self.head_dim
        return empty_lola_state(batch_size, h, d, d, self.window, self.cache_size, device)

    def forward_chunk(self, x: torch.Tensor, state: LoLAState) -> tuple[torch.Tensor, LoLAState]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token)."""
        self._check_x(x, single_token=False)
        q, k, v = self._project(x)
        o, state = lola_attn(q, k, v, state, chunk_size=self.chunk_size, **self._kwargs())
        return self._output(o, x), state

    def step(self, x: torch.Tensor, state: LoLAState) -> tuple[torch.Tensor, LoLAState]:
        """x ``[B, D]`` -> (y ``[B, D]``, state); the same decisions as ``forward``."""
        self._check_x(x, single_token=True)
        q, k, v = self._project(x)
        o, state = lola_attn_step(q, k, v, state, **self._kwargs())
        return self._output(o, x), state

    def state_metrics(self, state: LoLAState) -> dict[str, float]:
        """Linear-state norm and effective rank, cache occupancy (fraction of valid cache slots),
        mean SRE of the cached pairs (0 when empty), window occupancy, bytes."""
        valid = state.cache_valid
        n_valid = int(valid.sum())
        return {
            "state_norm": float(state.S.float().norm(dim=(-2, -1)).mean()),
            "state_erank": effective_rank(state.S),
            "cache_occupancy": float(valid.float().mean()) if valid.numel() else 0.0,
            "mean_sre": float((state.cache_sre * valid).sum() / n_valid) if n_valid else 0.0,
            "window_occupancy": float(state.window_valid.float().mean()) if state.window_valid.numel() else 0.0,
            "gate": float(torch.sigmoid(self.gate_logit.detach()).mean()),
            "state_bytes": float(state_nbytes(state)),
        }

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, window={self.window}, "
            f"cache_size={self.cache_size}, selection={self.selection!r}, chunk_size={self.chunk_size}, "
            f"backend={self.backend!r}"
        )
