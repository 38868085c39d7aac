"""Figures of one run drawn with matplotlib (Agg): the probe curves with the blocks shaded.

Used by the tracker for TensorBoard's image of a run (an image is not smoothed, so the block edges
stay where they are); ``lifelong compare`` draws its own multi-run figures.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["task_colours", "probe_curve_figure"]


def task_colours(task_names: Sequence[str]) -> dict[str, Any]:
    """One colour per task (tab10, then tab20), the same in every figure of a run."""
    cmap = plt.get_cmap("tab10" if len(task_names) <= 10 else "tab20")
    return {task: cmap(i % cmap.N) for i, task in enumerate(task_names)}


def probe_curve_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], blocks: Sequence[Mapping[str, Any]],
                       task_names: Sequence[str], title: str = "probe success by task") -> plt.Figure:
    """Probe success of every task over the lifetime with its 95% band; each block shaded in its
    task's colour and labelled. ``curves``: ``{task: {step, success, low, high}}`` (the tracker's
    probe curves); ``blocks``: ``[{index, task, start, end}]`` in env steps."""
    colours = task_colours(task_names)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    for block in blocks:
        ax.axvspan(block["start"], block["end"], color=colours[block["task"]], alpha=0.12, lw=0)
        ax.axvline(block["start"], color="0.5", lw=0.6, ls=":")
        ax.text((block["start"] + block["end"]) / 2, 1.02, block["task"], ha="center", va="bottom", fontsize=7,
                color=colours[block["task"]], transform=ax.get_xaxis_transform(), clip_on=False)
    for task in task_names:
        curve = curves.get(task)
        if not curve or not curve["step"]:
            continue
        step = np.asarray(curve["step"], dtype=float)
        mean = np.asarray(curve["success"], dtype=float)
        low = np.asarray([np.nan if v is None else v for v in curve["low"]], dtype=float)
        high = np.asarray([np.nan if v is None else v for v in curve["high"]], dtype=float)
        ax.plot(step, mean, marker="o", ms=3, lw=1.5, color=colours[task], label=task)
        ax.fill_between(step, low, high, color=colours[task], alpha=0.25, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("env steps (all lifetimes)")
    ax.set_ylabel("probe success")
    ax.set_title(title, fontsize=9, pad=14)
    ax.legend(loc="lower left", fontsize=7, ncol=min(len(task_names), 5), framealpha=0.8)
    fig.tight_layout()
    return fig
