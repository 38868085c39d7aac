"""``lifelong compare``: a side-by-side report of finished runs (table + PNG).

Runs are found by their ``summary.json`` (written by ``Tracker.finalize``): each path given is a run
directory or any folder above runs (e.g. a Hydra multirun directory), searched recursively. Reference
runs nested inside a run (``<run>/reference/<task>/``) belong to that run and are not compared.

Runs are grouped by their hparams except the seed; a group's label is its mixer (``memory`` or
``mixer`` hparam) plus any hparam that differs between groups. Per group: mean and standard deviation
over its runs (seeds) of every final figure. Outputs in ``out_dir``: ``compare.csv`` (mean and std
columns), ``compare.md`` (mean ± std) and ``compare.png`` (per group: training success of every task
over the lifetime, averaged over seeds, task blocks shaded, block-end probes as dots; and a
stability-plasticity scatter: retention vs learning accuracy).
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifelong.fileio import atomic_write, atomic_write_text
from lifelong.tracking.curves import EpisodeCurve
from lifelong.tracking.tracker import load_reference_summaries, with_reference_transfer

__all__ = ["find_run_dirs", "load_runs", "run_table", "aggregate", "display_table", "plot_compare", "compare_runs", "FIGURES"]

#: The final figures of ``summary.json``'s ``cl`` section that are compared.
_CL_FIGURES: tuple[str, ...] = (
    "acc", "forgetting", "forgetting_cw", "bwt", "fwt", "learning_accuracy", "retention",
    "forward_transfer_cw", "revisit_forgetting", "adaptation_gain",
)
#: Every figure compared, in table order: the ``cl`` ones, then three from the per-task and last values.
FIGURES: tuple[str, ...] = (*_CL_FIGURES, "train_success", "dormant_frac", "sps")
_SEED_KEYS = ("seed",)
_MIXER_KEYS = ("memory", "mixer")


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every directory holding a ``summary.json`` at or below ``paths``, minus nested reference runs."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass run directories or a multirun directory")
        if (path / "summary.json").is_file():
            found.append(path)
            continue
        candidates = sorted(p.parent for p in path.rglob("summary.json"))
        for cand in candidates:
            if not any(parent in candidates for parent in cand.parents):
                found.append(cand)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(
            f"no summary.json under {', '.join(map(str, paths))}: a run writes it when it finishes "
            f"(`lifelong run`), pass its directory"
        )
    return unique


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The summaries of the runs found under ``run_dirs``, each with its ``run_dir``."""
    runs = []
    for run_dir in find_run_dirs(run_dirs):
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary["cl"]["forward_transfer_cw"] is None and (run_dir / "reference").is_dir():
            refs = load_reference_summaries(run_dir / "reference", summary["task_names"])
            with_reference_transfer(summary, refs)  # reference runs finished after the run: use them
        summary["run_dir"] = str(run_dir)
        runs.append(summary)
    return runs


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _mixer(hparams: Mapping[str, Any]) -> str:
    for key in _MIXER_KEYS:
        if key in hparams:
            return str(hparams[key])
    return "?"


def _run_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    last = summary["last"]  # the last value of every scalar written: sps only if the loop logged it
    dormant = [_num(v) for k, v in last.items() if k.startswith("plasticity/dormant_frac/")]
    train = [_num(t["train_success"]) for t in summary["tasks"].values()]
    out = {name: _num(summary["cl"][name]) for name in _CL_FIGURES}
    out["train_success"] = float(np.nanmean(train)) if np.isfinite(train).any() else math.nan
    out["dormant_frac"] = float(np.nanmean(dormant)) if np.isfinite(dormant).any() else math.nan
    out["sps"] = _num(last.get("charts/sps"))
    return out


def _group_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One label per run: mixer + the hparams (seed aside) that differ between runs."""
    hps = [{k: v for k, v in r.get("hparams", {}).items() if k not in _SEED_KEYS} for r in runs]
    keys = sorted({k for hp in hps for k in hp})
    varying = [k for k in keys if k not in _MIXER_KEYS and len({json.dumps(hp.get(k), sort_keys=True) for hp in hps}) > 1]
    labels = []
    for hp in hps:
        extra = ", ".join(f"{k}={hp.get(k)}" for k in varying)
        labels.append(_mixer(hp) + (f" ({extra})" if extra else ""))
    return labels


def run_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run: group label, mixer, stream, seed, run_dir and every figure of ``FIGURES``."""
    rows = []
    for label, summary in zip(_group_keys(runs), runs):
        hp = summary.get("hparams", {})
        rows.append({"group": label, "mixer": _mixer(hp), "stream": str(hp.get("stream", "?")),
                     "seed": hp.get("seed"), "run_dir": summary["run_dir"], **_run_figures(summary)})
    return pd.DataFrame(rows)


def aggregate(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per group: ``runs`` and ``<figure>`` (mean over seeds), ``<figure>_std`` (0 for one run)."""
    records = []
    for label, frame in per_run.groupby("group", sort=False):
        rec: dict[str, Any] = {"group": label, "mixer": frame.mixer.iloc[0], "stream": frame.stream.iloc[0], "runs": len(frame)}
        for name in FIGURES:
            values = frame[name].to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            rec[name] = float(finite.mean()) if finite.size else math.nan
            rec[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
        records.append(rec)
    return pd.DataFrame(records).set_index("group")


def _cell(mean: float, std: float, runs: int) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if runs > 1 else f"{mean:.3f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-group table turned for a terminal: one row per figure, one column per group, cells
    ``"mean ± std"`` (``"-"`` when undefined). ``table`` is what :func:`compare_runs` returns."""
    rows = {"runs": [str(int(r)) for r in table["runs"]], "stream": list(table["stream"].astype(str))}
    for name in FIGURES:
        rows[name] = [_cell(row[name], row[f"{name}_std"], int(row["runs"])) for _, row in table.iterrows()]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(table.index))
    frame.index.name = "figure"
    return frame


def _markdown(table: pd.DataFrame) -> str:
    head = ["group", "stream", "runs", *FIGURES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table.iterrows():
        cells = [str(label), str(row["stream"]), str(int(row["runs"]))]
        cells += [_cell(row[f], row[f"{f}_std"], int(row["runs"])) for f in FIGURES]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ("\nmean ± standard deviation over seeds; '-' = undefined (e.g. one task: no forgetting / "
             "BWT / FWT; forward_transfer_cw needs reference runs). retention = 1 - forgetting (stability), "
             "learning_accuracy = success at the end of each block (plasticity).\n")
    return "\n".join(lines) + "\n" + notes


def _success_grid(summary: Mapping[str, Any], task: str, edges: np.ndarray) -> np.ndarray:
    """Mean training success of ``task`` in each bin of ``edges`` ``[G+1]`` -> ``[G]`` (NaN: no episode)."""
    sums = np.zeros(len(edges) - 1)
    counts = np.zeros(len(edges) - 1)
    for block in summary["blocks"]:
        if block["task"] != task:
            continue
        arr = EpisodeCurve.from_state_dict(block["curve"]).arrays()
        idx = np.clip(np.searchsorted(edges, arr["step"], side="right") - 1, 0, len(edges) - 2)
        np.add.at(sums, idx, arr["success"] * arr["count"])
        np.add.at(counts, idx, arr["count"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_compare(runs: Sequence[Mapping[str, Any]], per_run: pd.DataFrame, table: pd.DataFrame, png: Path,
                 bins: int = 100) -> Path:
    """Write the comparison figure (one lifetime panel per group + the stability-plasticity scatter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table.index)
    task_names: list[str] = list(dict.fromkeys(t for r in runs for t in r["task_names"]))
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(task_names)}
    n_panels = len(groups) + 1
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.8 * nrows), squeeze=False)
    flat = axes.ravel()
    total = max(max((_num(r["steps"]) for r in runs), default=1.0), 1.0)
    edges = np.linspace(0.0, total + 1.0, bins + 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    for ax, label in zip(flat, groups):
        members = [r for r, g in zip(runs, per_run.group) if g == label]
        for block in members[0]["blocks"]:  # seeds share the schedule: shade the first run's blocks
            ax.axvspan(block["start"], block["end"], color=colors.get(block["task"], "grey"), alpha=0.10, lw=0)
            if block["index"] > 0:
                ax.axvline(block["start"], color="black", lw=0.6, ls=":")
        for task in task_names:
            grids = np.stack([_success_grid(r, task, edges) for r in members])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # bins where the task is not trained
                mean = np.nanmean(grids, axis=0)
            ax.plot(centers, mean, color=colors[task], lw=1.4, label=task)
            for r in members:  # block-end probes (rows of R)
                if task not in r["task_names"]:
                    continue
                col = r["task_names"].index(task)
                ys = [row[col] for row in r["R"]]
                xs = r["R_steps"]
                pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if pts:
                    ax.scatter(*zip(*pts), color=colors[task], s=14, marker="o", edgecolor="black", lw=0.4, zorder=3)
        row = table.loc[label]
        ax.set_title(f"{label}  (n={int(row['runs'])})\nACC {row['acc']:.2f}  F {row['forgetting']:.2f}  "
                     f"BWT {row['bwt']:.2f}  FWT {row['fwt']:.2f}", fontsize=9)
        ax.set_xlim(0, total)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("lifetime step")
        ax.set_ylabel("success (training stream)")
        ax.legend(fontsize=7, loc="lower right", ncol=max(1, len(task_names) // 3))
    ax = flat[len(groups)]
    plotted = 0
    for i, (label, row) in enumerate(table.iterrows()):
        if math.isfinite(row["retention"]) and math.isfinite(row["learning_accuracy"]):
            ax.errorbar(row["retention"], row["learning_accuracy"], xerr=row["retention_std"],
                        yerr=row["learning_accuracy_std"], fmt="o", capsize=3, color=plt.get_cmap("tab10")(i % 10))
            ax.annotate(label, (row["retention"], row["learning_accuracy"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
            plotted += 1
    points = table[["retention", "learning_accuracy"]].to_numpy(dtype=float)
    finite = points[np.isfinite(points).all(1)]
    low = min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0
    high = max(1.05, float(finite.max()) + 0.05) if finite.size else 1.05
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("retention = 1 - forgetting (stability)")
    ax.set_ylabel("learning accuracy (plasticity)")
    ax.set_title("stability vs plasticity" + ("" if plotted else "\n(undefined: runs with one task block)"), fontsize=9)
    ax.grid(alpha=0.3)
    for extra in flat[n_panels:]:
        extra.axis("off")
    fig.suptitle("success per task over the lifetime (shaded: task blocks; dots: block-end probes)", fontsize=10)
    fig.tight_layout()
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return png


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """Compare the runs found under ``run_dirs``; write ``compare.{csv,md,png}`` in ``out_dir``.

    Returns the per-group table (index: group label; columns: mixer, stream, runs, and for every
    figure of ``FIGURES`` its mean and ``_std`` over seeds) and the PNG path.
    """
    runs = load_runs(run_dirs)
    per_run = run_table(runs)
    table = aggregate(per_run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.csv", table.to_csv())
    atomic_write_text(out / "compare_runs.csv", per_run.to_csv(index=False))
    atomic_write_text(out / "compare.md", _markdown(table))
    png = plot_compare(runs, per_run, table, out / "compare.png")
    return table, png
