"""Checkpoints written atomically (``lifelong.fileio``): a kill during a write leaves the previous
checkpoint intact (DESIGN.md section 10, reliability); the global RNG states that go into them.

A checkpoint is safe and portable: ``{"header": {...}, "state": {...}}`` of tensors and plain data
only (dict, list, tuple, str, int, float, bool, None), read with ``torch.load(weights_only=True)``, so
opening someone else's checkpoint runs none of their code (env states are plain data too:
``envs.plain_state``). The header holds

* ``format``: :data:`FORMAT`, the layout of the state; a file of another format is refused;
* ``lifelong_version``: the version of the package that wrote it (for messages);
* the writer's ``meta`` (a lifetime's config fingerprint, say), compared on load with ``expect``.

Every failure to load is one line naming the file: :class:`CheckpointError` for a file that is not a
readable checkpoint (truncated, corrupt, or holding objects), :class:`CheckpointMismatch` for one of
another format or written for another config.
"""
from __future__ import annotations

import pickle
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong import __version__
from lifelong.fileio import atomic_write

FORMAT = 2  # 1: pickled objects, read with weights_only=False; 2: a header and plain data
PLAIN_TYPES = (type(None), bool, int, float, str)
SAFE_TORCH_TYPES = (torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (the message is one line naming it)."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another format, or written for another config (``expect``)."""


def save_checkpoint(path: str | Path, state: dict[str, Any], *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` (tensors and plain data; ``TypeError`` naming any other value) to ``path``
    atomically, under a header of :data:`FORMAT`, the package version and ``meta`` (plain values)."""
    header = {"format": FORMAT, "lifelong_version": __version__}
    clash = sorted(set(header) & set(meta or {}))
    if clash:
        raise ValueError(f"checkpoint meta may not set {clash}: they are written by save_checkpoint")
    checkpoint = {"header": {**header, **(meta or {})}, "state": state}
    check_plain(checkpoint)
    return atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    expect: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state saved in ``path`` by :func:`save_checkpoint`, read with ``weights_only=True``.

    ``expect``: header values the checkpoint must have (``{"config": fingerprint}``). Raises
    ``FileNotFoundError`` if there is no file, :class:`CheckpointError` if it is not a readable
    checkpoint, :class:`CheckpointMismatch` if it is of another format or differs from ``expect``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the run directory of a run that saved one")
    checkpoint = read_checkpoint(path, map_location)
    check_header(path, checkpoint, expect or {})
    return checkpoint["state"]


def read_checkpoint(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)``, its failures turned into one-line :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise CheckpointMismatch(
                f"{path} holds objects ({found.group(1)}) besides tensors and plain data, so it cannot be loaded "
                f"safely: it is a checkpoint of an older lifelong (format 1) or not a lifelong checkpoint; start a new run"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {_reason(error)}") from None
    except Exception as error:  # torch reports a damaged zip or pickle as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The gist of an error message on one line: the unpickler's own error, else the first sentence."""
    text = str(error).strip()
    unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = unpickler.group(1) if unpickler else (text.splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def check_header(path: Path, checkpoint: Any, expect: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointMismatch` (one line) unless ``checkpoint`` is of :data:`FORMAT` and its
    header has every value of ``expect``."""
    header = checkpoint.get("header") if isinstance(checkpoint, dict) else None
    if not isinstance(header, dict) or "format" not in header or "state" not in checkpoint:
        raise CheckpointMismatch(f"{path} has no checkpoint header: it is not a lifelong checkpoint of format "
                                 f"{FORMAT}; start a new run")
    if header["format"] != FORMAT:
        raise CheckpointMismatch(
            f"{path} is checkpoint format {header['format']!r} (lifelong {header.get('lifelong_version', '?')}), "
            f"this lifelong {__version__} reads format {FORMAT}: resume it with the version that wrote it or "
            f"start a new run"
        )
    for key, value in expect.items():
        if key not in header or header[key] != value:
            found = header.get(key, "nothing")
            raise CheckpointMismatch(
                f"{path} was written with {key} {found!r}, this run has {key} {value!r}: resume it with the "
                f"settings it was written with, or start a new run"
            )


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value under ``value`` that ``weights_only`` loading refuses
    (anything but tensors, dicts, lists, tuples, str, int, float, bool and None)."""
    kind = type(value)
    if kind in PLAIN_TYPES or isinstance(value, SAFE_TORCH_TYPES):
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}: a checkpoint holds only tensors and plain data "
        f"(dict, list, tuple, str, int, float, bool, None); convert it in the state_dict that makes it"
    )


def rng_state_dict() -> dict[str, Any]:
    """The global RNG states as tensors and plain data: torch (CPU and CUDA), numpy's legacy state
    (``get_state()`` as a dict, the key a tensor) and python's (``getstate()`` as a list)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    sd: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        sd["cuda"] = torch.cuda.get_rng_state_all()
    return sd


def load_rng_state_dict(sd: dict[str, Any]) -> None:
    """Restore the states of :func:`rng_state_dict` (tensors may come mapped to any device)."""
    torch.set_rng_state(sd["torch"].cpu())
    n = sd["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = sd["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in sd and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in sd["cuda"]])


class CheckpointFolder:
    """A lifetime's checkpoints: ``<folder>/step_<env step>.pt``, the newest ``keep`` kept.

    Each file is written atomically, so a kill at any moment leaves every earlier checkpoint whole;
    the older ones are deleted only after the new one is in place.
    """

    PREFIX = "step_"

    def __init__(self, folder: str | Path, keep: int, meta: Mapping[str, Any]) -> None:
        """``meta`` goes into every checkpoint's header and must match on load (e.g. the config's
        fingerprint: a checkpoint never continues a run with another configuration)."""
        if keep < 1:
            raise ValueError(f"checkpoint_keep={keep}: keep at least 1 checkpoint")
        self.folder = Path(folder)
        self.keep = int(keep)
        self.meta = dict(meta)

    def paths(self) -> list[Path]:
        """The checkpoints in the folder, oldest first."""
        found = []
        for path in self.folder.glob(f"{self.PREFIX}*.pt"):
            step = path.stem[len(self.PREFIX):]
            if step.isdigit():
                found.append((int(step), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of env step ``step``, then delete all but the newest ``keep``."""
        path = save_checkpoint(self.folder / f"{self.PREFIX}{int(step):012d}.pt", state, meta=self.meta)
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes that were killed midway (only a dead run leaves them)."""
        stale = list(self.folder.glob(f".{self.PREFIX}*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that reads back (an unreadable newer one is reported and skipped);
        temporary files of killed writes are removed first."""
        self.remove_temporaries()
        paths = self.paths()
        if not paths:
            raise FileNotFoundError(f"no checkpoint in {self.folder}: the run stopped before its first "
                                    "checkpoint; start it again with `lifelong run ... overwrite=true`")
        errors = []
        for path in reversed(paths):
            try:
                return path, load_checkpoint(path, map_location=map_location, expect=self.meta)
            except CheckpointMismatch:  # another version or configuration: older files will not fit either
                raise
            except Exception as error:  # a damaged file: fall back to the one before it
                errors.append(f"{path.name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                warnings.warn(f"checkpoint {path} could not be read ({errors[-1]}); trying the one before it",
                              stacklevel=2)
        raise ValueError(f"no readable checkpoint in {self.folder} ({'; '.join(errors)})")
