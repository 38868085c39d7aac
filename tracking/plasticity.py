"""Network-plasticity diagnostics (DESIGN.md section 7): dormant units, feature effective rank,
weight magnitude, gradient norm.

Two different "dormant" counts, each under its own name, over the last ``window`` samples of a layer
(``tracker.dormant_window`` in ``configs/config.yaml``):

- **tau-dormant units** (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement
  Learning", Definition 3.1, eq. 1): the score of unit i of a layer with H units is

      s_i = E_x |h_i(x)| / ( (1/H) sum_k E_x |h_k(x)| ),

  its mean absolute activation over the layer's mean; unit i is tau-dormant when s_i <= tau. The
  paper uses tau = 0 (and 0.025 / 0.1 in its experiments). ``ActivityBuffer.tau_dormant_fraction(tau)``
  and ``dormancy_scores``.
- **zero-activation units** (the count of Dohare et al. 2024, "Loss of plasticity in deep continual
  learning"): a unit active (post-activation value above ``active_above``, 0: the positive side of
  ReLU / GELU) on at most ``threshold`` of the samples (``tracker.dormant_threshold``).
  ``ActivityBuffer.zero_activation_fraction()``; ``dormant_fraction()`` is the same number under
  its historical name.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from lifelong.memory_layers.state import effective_rank

__all__ = ["ActivityBuffer", "dormancy_scores", "feature_effective_rank", "weight_magnitude", "gradient_norm"]


def _scores_from_mean_abs(mean_abs: np.ndarray) -> np.ndarray:
    """s_i = m_i / mean_k m_k for per-unit mean |activation| ``m [H]``; all 0 when the layer is silent."""
    layer_mean = float(mean_abs.mean())
    if not layer_mean > 0.0:  # every unit is exactly zero on every sample: all dormant (s_i = 0)
        return np.zeros_like(mean_abs, dtype=float)
    return mean_abs / layer_mean


def dormancy_scores(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Sokar et al. 2023 eq. 1 scores ``[H]`` of features ``[N samples, H units]``.

    s_i = mean_x |h_i(x)| / ((1/H) sum_k mean_x |h_k(x)|); a silent layer (all zeros) scores 0 everywhere.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    f = np.asarray(features, dtype=float)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be [N samples, D units] with N > 0, got shape {tuple(f.shape)}")
    return _scores_from_mean_abs(np.abs(f).mean(axis=0))


class ActivityBuffer:
    """A rolling record of the last ``window`` activation samples of one layer.

    ``update(features [N, D])`` appends N samples. Over the samples held:
    ``tau_dormant_fraction(tau)`` is the fraction of the D units that are tau-dormant (Sokar et al.
    2023); ``zero_activation_fraction()`` (alias ``dormant_fraction()``) the fraction active on at
    most ``threshold`` of the samples (Dohare et al. 2024).
    """

    def __init__(self, window: int, threshold: float, active_above: float = 0.0) -> None:
        if window <= 0:
            raise ValueError(f"window must be a positive number of samples, got {window}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold is a fraction of samples in [0, 1), got {threshold}")
        self.window = window
        self.threshold = threshold
        self.active_above = active_above
        self._active: np.ndarray | None = None     # [window, D] bool ring buffer: value > active_above
        self._magnitude: np.ndarray | None = None  # [window, D] float32 ring buffer: |value| (NaN: not held)
        self._pos = 0
        self._filled = 0

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """features ``[N, D]`` post-activation samples (more than ``window`` rows keeps the last)."""
        f = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if f.ndim != 2:
            raise ValueError(f"features must be [N samples, D units], got shape {tuple(f.shape)}")
        f = f[-self.window :]
        active = f > self.active_above
        n, d = active.shape
        if self._active is None or self._active.shape[1] != d:
            if self._active is not None:
                raise ValueError(f"this layer had {self._active.shape[1]} units, now {d}: use one buffer per layer")
            self._active = np.zeros((self.window, d), dtype=bool)
            self._magnitude = np.full((self.window, d), np.nan, dtype=np.float32)
        idx = (self._pos + np.arange(n)) % self.window
        self._active[idx] = active
        self._magnitude[idx] = np.abs(f)
        self._pos = int((self._pos + n) % self.window)
        self._filled = min(self.window, self._filled + n)

    def _held(self, buf: np.ndarray) -> np.ndarray:
        return buf if self._filled == self.window else buf[: self._filled]

    def zero_activation_fraction(self) -> float:
        """Fraction of units active on <= threshold of the held samples (NaN before any update)."""
        if self._active is None or self._filled == 0:
            return math.nan
        rate = self._held(self._active).mean(axis=0)
        return float((rate <= self.threshold).mean())

    def dormant_fraction(self) -> float:
        """Historical name of ``zero_activation_fraction()`` (same value)."""
        return self.zero_activation_fraction()

    def tau_dormant_fraction(self, tau: float) -> float:
        """Fraction of units with Sokar score s_i <= tau over the held samples (NaN before any update).

        s_i = mean |h_i| / ((1/D) sum_k mean |h_k|) over the samples in the window (Sokar et al. 2023,
        eq. 1); tau >= 0 (the paper: 0, 0.025, 0.1). Samples restored from a checkpoint written
        before magnitudes were kept do not count until they are overwritten (NaN until then).
        """
        if not tau >= 0.0:
            raise ValueError(f"tau is a non-negative score threshold (Sokar et al. use 0, 0.025, 0.1), got {tau}")
        if self._magnitude is None or self._filled == 0:
            return math.nan
        held = self._held(self._magnitude)
        held = held[~np.isnan(held).any(axis=1)]
        if held.shape[0] == 0:
            return math.nan
        scores = _scores_from_mean_abs(held.astype(np.float64).mean(axis=0))
        return float((scores <= tau).mean())

    def state_dict(self) -> dict:
        """Plain data and tensors (``active``: bool ``[window, units]``, ``magnitude``: float32
        ``[window, units]``), for weights_only checkpoints."""
        active = None if self._active is None else torch.from_numpy(self._active.copy())
        magnitude = None if self._magnitude is None else torch.from_numpy(self._magnitude.copy())
        return {"active": active, "magnitude": magnitude, "pos": self._pos, "filled": self._filled}

    def load_state_dict(self, sd: dict) -> None:
        """Restore ``state_dict()``; a state without ``magnitude`` (older checkpoints) is accepted."""
        active = sd["active"]
        self._active = None if active is None else torch.as_tensor(active).cpu().numpy().astype(bool)
        magnitude = sd.get("magnitude")
        if magnitude is not None:
            self._magnitude = torch.as_tensor(magnitude).cpu().numpy().astype(np.float32)
        elif self._active is not None:
            self._magnitude = np.full(self._active.shape, np.nan, dtype=np.float32)
        else:
            self._magnitude = None
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
