"""The memory-mixer protocol shared by every layer (DESIGN.md section 3).

Notation follows DESIGN.md: x is ``[B, T, D]``; heads split D into ``H`` heads of size ``D // H``;
kernels take ``[B, T, H, K]`` / ``[B, T, H, V]``; states are described in :mod:`.state`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from lifelong.memory_layers.state import State, effective_rank, state_nbytes, tree_leaves


class MemoryMixer(nn.Module, ABC):
    """The protocol of DESIGN.md section 3.

    Subclasses implement :meth:`init_state`, :meth:`forward_chunk` (the chunk-parallel form over a
    whole sequence, no resets) and usually override :meth:`step` with a fused recurrent step.
    :meth:`forward` adds the optional reset mask on top of ``forward_chunk`` for every mixer.
    """

    #: False only for mixers whose state grows with the tokens seen (softmax attention).
    parametric: bool = True

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model ({d_model}) and num_heads ({num_heads}) must be positive")
        if d_model % num_heads != 0:
            divisors = [h for h in range(1, d_model + 1) if d_model % h == 0 and h <= 64]
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}: pick num_heads from "
                f"{divisors} (e.g. memory.num_heads={max(h for h in divisors if h <= num_heads)}) "
                f"or change agent.d_model"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., H, D / H]`` (a view)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    # ---- protocol -------------------------------------------------------------------------
    @abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str) -> State:
        """A fresh state for ``batch_size`` lifetimes (fp32)."""

    @abstractmethod
    def forward_chunk(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x ``[B, T, D]`` -> (y ``[B, T, D]``, state after the last token). No resets."""

    def forward(
        self, x: torch.Tensor, state: State, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """x ``[B, T, D]``; reset ``[B, T]`` bool, True at t clears the state before token t.

        Returns y ``[B, T, D]`` and the state after the last token.
        """
        if reset is None or not bool(reset.any()):
            return self.forward_chunk(x, state)
        if reset.shape != x.shape[:2]:
            raise ValueError(f"reset must be [B, T] = {tuple(x.shape[:2])}, got {tuple(reset.shape)}")
        if self.parametric:
            return self._forward_packed(x, state, reset)
        return self._forward_split(x, state, reset)

    def _forward_split(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Resets by splitting the whole batch at every time some lifetime resets (one call a piece).

        The path of mixers whose state is aligned in time across lifetimes (softmax's cache).
        """
        cut_times = torch.nonzero(reset.any(0)).flatten().tolist()
        bounds = sorted(set([0, *cut_times, x.shape[1]]))
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            state = self.reset_state(state, reset[:, start])
            y, state = self.forward_chunk(x[:, start:end], state)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    def _forward_packed(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Resets by packing: every run of tokens between resets (a piece) becomes a row of its own.

        Pieces that start at token 0 without a reset continue their lifetime's state; the others start
        fresh. Each group is right-padded to its longest piece and run in one ``forward_chunk`` call
        (causal: padding never reaches a real token's output). The state after the last token is the
        end state of each lifetime's last piece: exact for unpadded rows, so fresh last pieces are run
        in groups of equal length. A few calls instead of one per reset time of the batch; the same
        outputs and end state as :meth:`_forward_split` up to float rounding.
        """
        B, T = reset.shape
        starts = reset.clone()
        starts[:, 0] = True
        piece_b, piece_s = torch.nonzero(starts, as_tuple=True)  # row-major: pieces in lifetime order
        piece_e = torch.cat([piece_s[1:], piece_s.new_tensor([T])])
        last = torch.cat([piece_b[1:] != piece_b[:-1], torch.ones(1, dtype=torch.bool, device=piece_b.device)])
        piece_e = torch.where(last, torch.full_like(piece_e, T), piece_e)
        carried = (piece_s == 0) & ~reset[piece_b, 0]
        y = x.new_zeros(x.shape)
        end_rows: list[torch.Tensor] = []  # the lifetimes whose end state each call gave
        end_states: list[State] = []

        def run(select: torch.Tensor, init: State) -> None:
            """One call over the pieces ``select`` [P] (bool); keeps the end states of the last pieces."""
            nonlocal y
            b, s, e = piece_b[select], piece_s[select], piece_e[select]
            lengths = e - s
            rows = torch.repeat_interleave(torch.arange(len(b), device=b.device), lengths)
            offsets = torch.cumsum(lengths, 0) - lengths
            cols = torch.arange(int(lengths.sum()), device=b.device) - torch.repeat_interleave(offsets, lengths)
            src_b, src_t = torch.repeat_interleave(b, lengths), torch.repeat_interleave(s, lengths) + cols
            packed = x.new_zeros(len(b), int(lengths.max()), x.shape[-1]).index_put((rows, cols), x[src_b, src_t])
            out, end = self.forward_chunk(packed, init)
            y = y.index_put((src_b, src_t), out[rows, cols])
            keep = last[select]
            if bool(keep.any()):
                # only unpadded rows have the right end state: callers group last pieces so they are
                assert bool((lengths[keep] == lengths.max()).all()), "a last piece was padded"
                end_rows.append(b[keep])
                end_states.append(pytree.tree_map(lambda leaf: leaf[keep], end))

        if bool(carried.any()):  # a lifetime's last piece is carried only when it has no reset: T tokens
            run(carried, pytree.tree_map(lambda leaf: leaf.index_select(0, piece_b[carried]), state))
        fresh_inner = ~carried & ~last
        if bool(fresh_inner.any()):
            run(fresh_inner, self.init_state(int(fresh_inner.sum()), x.device))
        fresh_last = ~carried & last
        lengths = piece_e - piece_s
        for length in torch.unique(lengths[fresh_last]).tolist():
            select = fresh_last & (lengths == length)
            run(select, self.init_state(int(select.sum()), x.device))
        order = torch.argsort(torch.cat(end_rows))
        return y, pytree.tree_map(lambda *leaves: torch.cat(leaves)[order], *end_states)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x ``[B, D]`` -> y ``[B, D]``; equals ``forward(x[:, None], state)``."""
        y, state = self.forward_chunk(x[:, None], state)
        return y[:, 0], state

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        """Replace the state of the lifetimes where ``mask`` ``[B]`` is True by a fresh one."""
        if not bool(mask.any()):
            return state
        fresh = self.init_state(mask.shape[0], mask.device)

        def blend(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            m = mask.view(-1, *([1] * (old.dim() - 1)))
            return torch.where(m, new.to(old.dtype), old)

        return pytree.tree_map(blend, state, fresh)

    def state_metrics(self, state: State) -> dict[str, float]:
        """Diagnostics for TensorBoard: norm and effective rank of the main ``[B, H, K, V]`` tensor."""
        leaves = tree_leaves(state)
        main = leaves[0]
        metrics = {"state_norm": float(main.float().norm(dim=(-2, -1)).mean())} if main.dim() >= 2 else {}
        if main.dim() >= 2 and main.numel() > 0:
            metrics["state_erank"] = effective_rank(main)
        metrics["state_bytes"] = float(state_nbytes(state))
        return metrics
