"""What a run directory holds, and the checks the CLI makes on it before any work starts.

A run directory (``hydra.run.dir``) holds the run's saved configuration (``.hydra/config.yaml``,
written by Hydra), its checkpoints (``checkpoints/step_*.pt``), TensorBoard event files and, once it
stopped, ``summary.json``. ``lifelong run`` refuses a directory that already holds a run (``lifelong
resume`` continues it; ``overwrite=true`` starts afresh there); ``lifelong resume`` reads it back.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CHECKPOINT_FOLDER = "checkpoints"
SAVED_CONFIG = Path(".hydra") / "config.yaml"


def run_files(run_dir: Path) -> list[Path]:
    """The files a lifetime wrote into ``run_dir`` (not Hydra's own ``.hydra/`` and log)."""
    if not run_dir.is_dir():
        return []
    found = sorted(run_dir.glob("events.out.tfevents.*"))
    for name in ("summary.json", CHECKPOINT_FOLDER, "reference", "checkpoint.pt"):
        if (run_dir / name).exists():
            found.append(run_dir / name)
    return found


def holds_run(run_dir: Path) -> bool:
    return bool(run_files(run_dir))


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier lifetime wrote into ``run_dir`` (``overwrite=true``), so that old and new
    event files and checkpoints never mix."""
    for path in run_files(run_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def saved_config(run_dir: Path) -> DictConfig:
    """The configuration the run in ``run_dir`` was started with (ValueError naming the fix if absent)."""
    path = run_dir / SAVED_CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no saved configuration ({SAVED_CONFIG}): pass the directory "
                         "`lifelong run` printed (its `run directory:` line)")
    return OmegaConf.load(path)
