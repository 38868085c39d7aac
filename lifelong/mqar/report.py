"""``lifelong mqar-report DIR``: figures and a table from every ``results.json`` under DIR.

A run trained on a mixture of pair counts (``task.num_pairs=[4,8,16]``) gives one row per count
tested. Rows are grouped by (mixer, d_model, num_layers, seq_len, num_pairs, vocab_size, the pair
counts trained on); a group's value is the mean over its seeds with a 95% Student-t interval (``tracking.confidence.mean_ci_over_seeds``;
one seed: no interval, marked n=1). Written to the output folder:

- ``mqar_accuracy_vs_pairs.png``: test accuracy against the task (number of pairs, its sequence
  length under it), one panel per d_model, one line per mixer, mean and 95% band over seeds;
- ``mqar_accuracy_vs_state.png``: test accuracy against the state bytes per token of the mixer
  (log scale), one panel per task, one line per mixer through its model sizes;
- ``mqar_table.md`` (mean ± CI half-width, n seeds; the state bytes and learning rates used) and
  ``mqar_table.csv`` (the same, one row per group, with the interval ends).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lifelong.fileio import atomic_write, atomic_write_text
from lifelong.tracking.confidence import mean_ci_over_seeds
from lifelong.tracking.report import pyplot

RESULTS = "results.json"
GROUP_KEYS = ("mixer", "d_model", "num_layers", "seq_len", "num_pairs", "vocab_size", "train_pairs")
_LEVEL = 0.95


class ReportError(ValueError):
    """Nothing to report (no results under the folder, or none readable); one line."""


def _rows(r: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """The rows of one run: one per number of pairs tested (a mixture-trained run has several)."""
    pairs = r["task"]["num_pairs"]
    trained = "/".join(map(str, sorted(pairs))) if isinstance(pairs, list) else str(pairs)
    common = {
        "mixer": r["mixer"], "memory": r.get("memory", r["mixer"]), "seed": r["seed"],
        "d_model": r["model"]["d_model"], "num_layers": r["model"]["num_layers"],
        "seq_len": r["task"]["seq_len"], "vocab_size": r["task"]["vocab_size"], "train_pairs": trained,
        "lr": r["train"]["lr"], "steps": r["train"]["steps"], "state_bytes": int(r["state_bytes_per_token"]),
        "wall_time_s": float(r.get("wall_time_s", math.nan)), "path": str(run_dir),
    }
    by_pairs = r.get("test_by_pairs") or {str(pairs): {"accuracy": r["accuracy"], "loss": r["loss"]}}
    return [{**common, "num_pairs": int(p), "accuracy": float(ev["accuracy"]), "loss": float(ev["loss"])}
            for p, ev in by_pairs.items()]


def load_results(root: Path) -> pd.DataFrame:
    """One row per ``results.json`` under ``root`` (unreadable files are skipped with a note)."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"no such folder: {root}")
    files = [root] if root.is_file() else sorted(root.rglob(RESULTS))
    rows, skipped = [], []
    for path in files:
        try:
            rows.extend(_rows(json.loads(path.read_text()), path.parent))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            skipped.append(f"{path}: {type(error).__name__}")
    if not rows:
        extra = f" ({len(skipped)} unreadable)" if skipped else ""
        raise ReportError(f"no readable {RESULTS} under {root}{extra}: run `lifelong mqar` or "
                          "`python benchmarks/mqar_grid.py` into it first")
    frame = pd.DataFrame(rows)
    frame.attrs["skipped"] = skipped
    return frame


def _join(values: Sequence[Any]) -> str:
    uniq = sorted(set(values))
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in uniq)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n seeds, accuracy mean / low / high, loss mean, state bytes, lrs, wall time."""
    records = []
    for key, group in runs.groupby(list(GROUP_KEYS), sort=True):
        rec = dict(zip(GROUP_KEYS, key))
        rec["n"] = int(len(group))
        rec["accuracy"], rec["accuracy_low"], rec["accuracy_high"] = mean_ci_over_seeds(group["accuracy"], _LEVEL)
        rec["loss"] = float(group["loss"].mean())
        rec["state_bytes"] = int(group["state_bytes"].iloc[0])
        rec["lr"] = _join(group["lr"].tolist())
        rec["steps"] = _join(group["steps"].tolist())
        rec["seeds"] = _join(group["seed"].tolist())
        rec["wall_time_s"] = float(group.drop_duplicates("path")["wall_time_s"].sum())
        records.append(rec)
    agg = pd.DataFrame(records)
    several = agg["train_pairs"].nunique() > 1
    agg["series"] = [f"{m} (trained P={t})" if several else m for m, t in zip(agg["mixer"], agg["train_pairs"])]
    return agg


def _half(row: pd.Series) -> float:
    return (row["accuracy_high"] - row["accuracy_low"]) / 2.0


def cell(row: pd.Series) -> str:
    """``0.953 ± 0.021 (n=3)``; one seed: ``0.953 (n=1)``."""
    half = _half(row)
    ci = "" if math.isnan(half) else f" ± {half:.3f}"
    return f"{row['accuracy']:.3f}{ci} (n={row['n']})"


def _task_label(seq_len: int, num_pairs: int) -> str:
    return f"P={num_pairs}, T={seq_len}"


def _mixer_order(names: Sequence[str]) -> list[str]:
    preferred = ["softmax", "linear_attention", "mamba2", "mamba2-state2x", "palimpsa", "deltanet", "gated_deltanet",
                 "lola-sre", "lola-random", "lola-recency"]
    known = [n for n in preferred if n in names]
    return known + sorted(n for n in names if n not in known)


def markdown_table(agg: pd.DataFrame) -> str:
    """Rows: mixer x d_model (x layers, vocab when they vary); columns: tasks; cells mean ± CI (n)."""
    tasks = sorted({(int(r.seq_len), int(r.num_pairs)) for r in agg.itertuples()}, key=lambda t: (t[1], t[0]))
    varying = [k for k in ("num_layers", "vocab_size", "train_pairs") if agg[k].nunique() > 1]
    head = ["mixer", "d_model", *varying, *(_task_label(t, p) for t, p in tasks), "state bytes/token", "lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mixer in _mixer_order(agg["mixer"].unique().tolist()):
        sub = agg[agg["mixer"] == mixer]
        for key, rows in sub.groupby(["d_model", *varying], sort=True):
            key = key if isinstance(key, tuple) else (key,)
            cells = []
            for t, p in tasks:
                match = rows[(rows["seq_len"] == t) & (rows["num_pairs"] == p)]
                cells.append(cell(match.iloc[0]) if len(match) else "-")
            state = _join(rows["state_bytes"].tolist())
            lrs = _join([x for v in rows["lr"] for x in str(v).split("/")])
            lines.append("| " + " | ".join([mixer, *map(str, key), *cells, state, lrs]) + " |")
    note = (f"\nTest accuracy over the query positions: mean ± half-width of the {int(_LEVEL * 100)}% Student-t "
            "interval over seeds (n = seeds). state bytes/token: the mixers' memory state (all layers, one "
            "sequence) after seq_len tokens (softmax's KV cache grows with T: one value per sequence length).\n")
    return "\n".join(lines) + "\n" + note


def _colors(mixers: Sequence[str]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(mixers)}


def _series_order(agg: pd.DataFrame) -> list[str]:
    return [x for m in _mixer_order(agg["mixer"].unique().tolist())
            for x in sorted(agg.loc[agg["mixer"] == m, "series"].unique())]


def _line_style(mixer: str) -> str:
    return "--" if mixer.startswith("lola") else "-"


_MARKERS = "osD^vP*Xhp<>"


def _marker(mixers: Sequence[str], mixer: str) -> str:
    """Markers differ between mixers, so lines that coincide (equal state sizes) stay visible."""
    return _MARKERS[mixers.index(mixer) % len(_MARKERS)]


def _band(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The 95% interval, clipped to [0, 1] for drawing (an accuracy; the table keeps the raw interval)."""
    low = np.clip(rows["accuracy_low"].to_numpy(float), 0.0, 1.0)
    high = np.clip(rows["accuracy_high"].to_numpy(float), 0.0, 1.0)
    return low, high


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    pyplot().close(fig)
    return path


def plot_accuracy_vs_pairs(agg: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    dims = sorted(agg["d_model"].unique())
    mixers = _series_order(agg)
    colors = _colors(mixers)
    tasks = sorted({(int(r.num_pairs), int(r.seq_len)) for r in agg.itertuples()})
    xpos = {t: i for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(1, len(dims), figsize=(5.2 * len(dims), 4.2), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dims):
        for mixer in mixers:
            rows = agg[(agg["series"] == mixer) & (agg["d_model"] == d)]
            if rows.empty:
                continue
            rows = rows.assign(x=[xpos[(int(p), int(t))] for p, t in zip(rows["num_pairs"], rows["seq_len"])])
            rows = rows.sort_values("x")
            ax.plot(rows["x"], rows["accuracy"], _line_style(mixer), marker=_marker(mixers, mixer), markersize=5, color=colors[mixer], label=mixer)
            low, high = _band(rows)
            if np.isfinite(low).any():
                ax.fill_between(rows["x"], low, high, color=colors[mixer], alpha=0.10, linewidth=0)
        ax.set_xticks(range(len(tasks)), [f"{p}\nT={t}" for p, t in tasks])
        ax.set_xlabel("key-value pairs (sequence length)")
        ax.set_title(f"d_model={d}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR test accuracy (mean, 95% CI over seeds)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("MQAR: accuracy vs number of pairs (mean, 95% CI over seeds, clipped to [0, 1])")
    return _save(fig, path)


def plot_accuracy_vs_state(agg: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    tasks = sorted({(int(r.num_pairs), int(r.seq_len)) for r in agg.itertuples()})
    mixers = _series_order(agg)
    colors = _colors(mixers)
    cols = min(len(tasks), 3)
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False, sharey=True)
    for i, (p, t) in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for mixer in mixers:
            rows = agg[(agg["series"] == mixer) & (agg["num_pairs"] == p) & (agg["seq_len"] == t)]
            if rows.empty:
                continue
            rows = rows.sort_values("state_bytes")
            x = rows["state_bytes"].to_numpy(float)
            ax.plot(x, rows["accuracy"], _line_style(mixer), marker=_marker(mixers, mixer), markersize=5, color=colors[mixer], label=mixer)
            low, high = _band(rows)
            if np.isfinite(low).any():  # error bars only: bands between two sizes would hide each other
                ax.errorbar(x, rows["accuracy"], yerr=[rows["accuracy"] - low, high - rows["accuracy"]],
                            fmt="none", ecolor=colors[mixer], alpha=0.6, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_title(_task_label(t, p))
        ax.set_xlabel("state bytes per token (log scale)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for j in range(len(tasks), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    for r in range(nrows):
        axes[r][0].set_ylabel("MQAR test accuracy")
    axes[0][cols - 1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("MQAR: accuracy vs memory state (each mixer's points: its d_model values; 95% CI over seeds)")
    return _save(fig, path)


def write_report(root: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Read every results.json under ``root``; write the figures and tables into ``out_dir`` (default
    ``root``). Returns ``{"runs", "groups", "table", "csv", "figures", "skipped", "aggregate"}``."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else (root if root.is_dir() else root.parent)
    runs = load_results(root)
    agg = aggregate(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown_table(agg)
    atomic_write_text(out_dir / "mqar_table.md", md)
    atomic_write_text(out_dir / "mqar_table.csv", agg.to_csv(index=False))
    figures = [plot_accuracy_vs_pairs(agg, out_dir / "mqar_accuracy_vs_pairs.png"),
               plot_accuracy_vs_state(agg, out_dir / "mqar_accuracy_vs_state.png")]
    groups = len(agg[["series", "d_model"]].drop_duplicates())  # a mixer at one size; its rows are its pair counts
    return {"runs": int(runs["path"].nunique()), "groups": groups, "table": out_dir / "mqar_table.md",
            "csv": out_dir / "mqar_table.csv", "figures": figures, "skipped": runs.attrs.get("skipped", []),
            "aggregate": agg, "markdown": md}
