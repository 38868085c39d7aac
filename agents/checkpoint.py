"""Atomic checkpoints: write to a temporary file in the same folder, then ``os.replace``.

A kill during a write leaves the previous checkpoint intact (DESIGN.md section 10, reliability).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (a state_dict of tensors, numbers, lists, dicts) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the run directory of a run that saved one")
    # weights_only=False: the checkpoint holds numpy RNG states and env state dicts, written by us.
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state_dict() -> dict[str, Any]:
    """The global RNG states: torch (CPU and CUDA), numpy, python."""
    sd: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        sd["cuda"] = torch.cuda.get_rng_state_all()
    return sd


def load_rng_state_dict(sd: dict[str, Any]) -> None:
    torch.set_rng_state(sd["torch"])
    np.random.set_state(sd["numpy"])
    random.setstate(sd["python"])
    if "cuda" in sd and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(sd["cuda"])
