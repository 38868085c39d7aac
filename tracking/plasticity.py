"""Network-plasticity diagnostics (DESIGN.md section 7): dormant units, feature effective rank,
weight magnitude, gradient norm.

A unit is *dormant* when it was active on at most ``threshold`` of the last ``window`` samples
(``tracker.dormant_threshold`` and ``tracker.dormant_window`` in ``configs/config.yaml``; Dohare et
al. 2024, "Loss of plasticity in deep continual learning"). "Active" means a post-activation value
above ``active_above`` (0: the positive side of ReLU / GELU).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from lifelong.memory_layers.state import effective_rank

__all__ = ["ActivityBuffer", "feature_effective_rank", "weight_magnitude", "gradient_norm"]


class ActivityBuffer:
    """A rolling record of which units fired on the last ``window`` samples of one layer.

    ``update(features [N, D])`` appends N samples; ``dormant_fraction()`` is the fraction of the D
    units active on at most ``threshold`` of the samples held.
    """

    def __init__(self, window: int, threshold: float, active_above: float = 0.0) -> None:
        if window <= 0:
            raise ValueError(f"window must be a positive number of samples, got {window}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold is a fraction of samples in [0, 1), got {threshold}")
        self.window = window
        self.threshold = threshold
        self.active_above = active_above
        self._active: np.ndarray | None = None  # [window, D] bool ring buffer
        self._pos = 0
        self._filled = 0

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """features ``[N, D]`` post-activation samples (more than ``window`` rows keeps the last)."""
        f = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if f.ndim != 2:
            raise ValueError(f"features must be [N samples, D units], got shape {tuple(f.shape)}")
        active = f[-self.window :] > self.active_above
        n, d = active.shape
        if self._active is None or self._active.shape[1] != d:
            if self._active is not None:
                raise ValueError(f"this layer had {self._active.shape[1]} units, now {d}: use one buffer per layer")
            self._active = np.zeros((self.window, d), dtype=bool)
        idx = (self._pos + np.arange(n)) % self.window
        self._active[idx] = active
        self._pos = int((self._pos + n) % self.window)
        self._filled = min(self.window, self._filled + n)

    def dormant_fraction(self) -> float:
        """Fraction of units active on <= threshold of the held samples (NaN before any update)."""
        if self._active is None or self._filled == 0:
            return math.nan
        rows = self._active if self._filled == self.window else self._active[: self._filled]
        rate = rows.mean(axis=0)
        return float((rate <= self.threshold).mean())

    def state_dict(self) -> dict:
        """Plain data and a tensor (``active``: bool ``[window, units]``), for weights_only checkpoints."""
        active = None if self._active is None else torch.from_numpy(self._active.copy())
        return {"active": active, "pos": self._pos, "filled": self._filled}

    def load_state_dict(self, sd: dict) -> None:
        active = sd["active"]
        self._active = None if active is None else torch.as_tensor(active).cpu().numpy().astype(bool)
        self._pos = int(sd["pos"])
        self._filled = int(sd["filled"])


def feature_effective_rank(features: torch.Tensor) -> float:
    """exp(-sum_k p_k log p_k), p = normalised singular values of features ``[N, D]``."""
    if features.dim() != 2:
        raise ValueError(f"features must be [N samples, D units], got shape {tuple(features.shape)}")
    return effective_rank(features)


def weight_magnitude(params: nn.Module | Iterable[torch.Tensor]) -> float:
    """Mean absolute weight over every parameter element."""
    tensors = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    total = sum(float(p.detach().abs().sum()) for p in tensors)
    count = sum(p.numel() for p in tensors)
    return total / count if count else math.nan


def gradient_norm(params: nn.Module | Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients present (0 if none has a gradient)."""
    tensors = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    sq = sum(float(p.grad.detach().float().pow(2).sum()) for p in tensors if p.grad is not None)
    return math.sqrt(sq)
