"""Checkpoints written atomically (``lifelong.fileio``): a kill during a write leaves the previous
checkpoint intact (DESIGN.md section 10, reliability); the global RNG states that go into them.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.fileio import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (a state_dict of tensors, numbers, lists, dicts) to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


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
