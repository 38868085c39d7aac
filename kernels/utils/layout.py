"""Layouts shared by the torch forms: zero states and the chunked view of a sequence."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A zero fp32 state ``[B, H, K, V]`` for keys k ``[B, (T,) H, K]`` and values v ``[B, (T,) H, V]``."""
    return torch.zeros(k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1], dtype=torch.float32, device=k.device)


def to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[B, T, H, *D]`` -> fp32 ``[B, H, N, C, *D]`` (C = chunk_size), T zero-padded to ``N * C``."""
    x = x.float().movedim(1, 2)  # [B, H, T, *D]
    pad = -x.shape[2] % chunk_size
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], -1, chunk_size, *x.shape[3:])
