"""Chunk-local cumulative sums of log gates (torch; the chunk kernels read them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_local_cumsum(g: torch.Tensor, chunk_size: int, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum of ``g`` ``[B, T, H]`` or ``[B, T, H, K]`` over T within chunks (fp32).

    ``reverse=True`` sums from the end of each chunk (the adjoint, used for gate gradients).
    """
    B, T = g.shape[:2]
    rest = tuple(g.shape[2:])
    nt = -(-T // chunk_size)
    pad = [0, 0] * len(rest) + [0, nt * chunk_size - T]
    gp = F.pad(g.float(), pad).view(B, nt, chunk_size, *rest)
    if reverse:
        gp = gp.flip(2).cumsum(2).flip(2)
    else:
        gp = gp.cumsum(2)
    return gp.reshape(B, nt * chunk_size, *rest)[:, :T].contiguous()
