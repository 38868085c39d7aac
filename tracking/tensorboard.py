"""TensorBoard output of a run: a writer per run directory.

The run-level events (scalars, task-switch text, the custom-scalars layout, images, hparams) go into
``run_dir`` itself, and each task's curves into its own writer (the tracker's task runs): ``SummaryWriter.add_hparams`` / ``add_scalars`` would create sub-runs, so hparams are written
with ``torch.utils.tensorboard.summary.hparams()`` into this writer (STACK.md). The writer opens
lazily; after a resume it is opened with ``purge_step`` so TensorBoard drops the events a killed run
wrote after its last checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

__all__ = ["RunWriter", "custom_scalars_layout", "flatten_hparams"]


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested dict -> flat ``{"a.b": value}`` with TensorBoard-compatible values (others -> str)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def custom_scalars_layout() -> dict:
    """The run-level charts; per-task curves live in the task runs (``<run_dir>/tasks/<task>``) under
    shared tags, so TensorBoard's own charts (``probe/success``, ``train/success``) colour them by task."""
    return {
        "tasks (one line per task run: <run>/tasks/<task>)": {
            "probe success": ["Multiline", ["probe/success"]],
            "training success": ["Multiline", ["train/success"]],
            "forgetting per task (Chaudhry)": ["Multiline", ["cl/forgetting"]],
        },
        "continual learning": {
            "summary figures": ["Multiline", ["cl/acc", "cl/bwt", "cl/fwt", "cl/learning_accuracy", "cl/retention",
                                              "cl/forgetting_cw", "cl/forward_transfer_cw"]],
            "in-context adaptation (k-th episode after a switch)": ["Multiline", [r"adaptation/episode_.*"]],
            "adaptation, learning frozen (probes)": ["Multiline", [r"adaptation_frozen/episode_.*"]],
            "return to task A, memory carried (in-context) vs reset (in-weight)": [
                "Multiline", [r"in_context/carried/episode_.*", r"in_context/reset/episode_.*"]],
            "block": ["Multiline", ["charts/block", "charts/task_id"]],
        },
        "plasticity": {
            "dormant units (Sokar tau-dormant)": ["Multiline", [r"plasticity/dormant_tau/.*"]],
            "units never active": ["Multiline", [r"plasticity/zero_activation_frac/.*"]],
            "feature effective rank": ["Multiline", [r"plasticity/erank/.*"]],
            "weights and gradients": ["Multiline", ["plasticity/weight_norm", "plasticity/grad_norm"]],
        },
    }


class RunWriter:
    """A thin, lazily opened ``SummaryWriter`` on ``run_dir`` that skips non-finite scalars."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._writer: SummaryWriter | None = None
        self._purge_step: int | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # a deep queue: the default (10) makes every 10th scalar wait for the writer thread
            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self._purge_step, max_queue=4096, flush_secs=30)
        return self._writer

    def resume_at(self, step: int) -> None:
        """Reopen so that events at steps >= ``step`` written by an earlier process are dropped."""
        self.close()
        self._purge_step = int(step)

    def file_sizes(self) -> dict[str, int]:
        """``{event file name: bytes}`` of the run's event files, after writing every pending event:
        what a checkpoint records so that a resume can cut the files back to this moment."""
        self.flush()
        return {p.name: p.stat().st_size for p in sorted(self.run_dir.glob("events.out.tfevents.*"))}

    def restore_files(self, sizes: dict[str, int], step: int) -> None:
        """Cut the event files back to ``sizes`` (recorded by :meth:`file_sizes` at a checkpoint) and
        delete the ones written after it, so every reader (TensorBoard, tbparse) sees the events up to
        the checkpoint exactly once; then reopen as :meth:`resume_at` does."""
        self.close()
        for path in self.run_dir.glob("events.out.tfevents.*"):
            if path.name not in sizes:
                path.unlink()
            elif path.stat().st_size > sizes[path.name]:
                with open(path, "r+b") as f:
                    f.truncate(sizes[path.name])
        self._purge_step = int(step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        if math.isfinite(value):
            self.writer.add_scalar(tag, value, int(step))

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, int(step))

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure as an image (closed after writing)."""
        self.writer.add_figure(tag, figure, int(step), close=True)

    def layout(self, layout: dict) -> None:
        self.writer.add_custom_scalars(layout)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """hparams for the HParams tab, in this run's own event file. ``metrics`` names the scalar
        tags shown as metrics (write their values with :meth:`scalar`); undefined ones are left out."""
        flat = flatten_hparams(hparams)
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        exp, ssi, sei = hparams_summary(flat, finite)
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
