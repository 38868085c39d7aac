"""Bounded-memory learning curves and JSON helpers shared by the tracker and the report."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.fileio import atomic_write_text

__all__ = ["EpisodeCurve", "to_jsonable", "write_json_atomic"]

# One point of a curve: [mean step, mean success, mean return, mean length, episodes]
_FIELDS = ("step", "success", "return", "length")


class EpisodeCurve:
    """Episode results downsampled to at most ``max_points`` points of equal episode counts.

    Each point averages ``bucket`` consecutive episodes; when the curve is full, neighbouring points
    merge pairwise and ``bucket`` doubles, so resolution stays uniform over the whole block.
    The state is plain lists (``state_dict``) so it goes into checkpoints and ``summary.json``.
    """

    def __init__(self, max_points: int) -> None:
        if max_points < 2 or max_points % 2:
            raise ValueError(f"max_points must be an even number >= 2, got {max_points}")
        self.max_points = max_points
        self.bucket = 1
        self.points: list[list[float]] = []
        self._pending = [0.0, 0.0, 0.0, 0.0, 0]  # sums of step, success, return, length; count

    def add(self, step: float, success: float, episode_return: float, length: float) -> None:
        p = self._pending
        p[0] += step
        p[1] += success
        p[2] += episode_return
        p[3] += length
        p[4] += 1
        if p[4] == self.bucket:
            self.points.append([p[0] / p[4], p[1] / p[4], p[2] / p[4], p[3] / p[4], p[4]])
            self._pending = [0.0, 0.0, 0.0, 0.0, 0]
            if len(self.points) >= self.max_points:
                self._halve()

    def _halve(self) -> None:
        merged = []
        for a, b in zip(self.points[0::2], self.points[1::2]):
            n = a[4] + b[4]
            merged.append([(a[i] * a[4] + b[i] * b[4]) / n for i in range(4)] + [n])
        self.points = merged
        self.bucket *= 2

    def arrays(self) -> dict[str, np.ndarray]:
        """Every point (including the partial bucket): ``{"step", "success", "return", "length", "count"}``."""
        pts = list(self.points)
        p = self._pending
        if p[4]:
            pts.append([p[i] / p[4] for i in range(4)] + [p[4]])
        arr = np.asarray(pts, dtype=float).reshape(-1, 5)
        out = {name: arr[:, i] for i, name in enumerate(_FIELDS)}
        out["count"] = arr[:, 4]
        return out

    def state_dict(self) -> dict:
        return {"max_points": self.max_points, "bucket": self.bucket, "points": [list(p) for p in self.points], "pending": list(self._pending)}

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> "EpisodeCurve":
        curve = cls(int(sd["max_points"]))
        curve.bucket = int(sd["bucket"])
        curve.points = [list(p) for p in sd["points"]]
        curve._pending = list(sd["pending"])
        return curve


def to_jsonable(obj: Any) -> Any:
    """numpy / NaN-safe conversion: non-finite floats become None (valid JSON, read back as NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON (see :func:`to_jsonable`) to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=1, allow_nan=False))
