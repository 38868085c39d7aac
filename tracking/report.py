"""``lifelong compare``: how memory mixers trade forgetting against transfer when the task shifts.

Runs are found by their ``summary.json``: each path given is a run directory or any folder above runs
(e.g. a Hydra multirun directory), searched recursively. Reference runs nested inside a run
(``<run>/reference/<task>/``) belong to that run and are not compared. A summary that cannot be read,
one of an unfinished (stopped) run and one written by an older lifelong (no ``config_key``) is
skipped with a one-line :class:`RunSkipped` warning naming its file; when nothing is left,
:class:`NothingToCompare` (a ``ValueError``).

Runs are grouped by ``config_key`` (the hash of the full resolved configuration except the seed), so
runs whose configurations differ are never averaged. A group's label is its memory mixer plus every
flattened configuration key (``stream.steps_per_task=500``) whose value differs between the groups;
keys of the ``memory`` / ``stream`` sections that follow from the mixer / stream name are left out
(``stream=<name>`` stands for them when the streams differ).

Per group, every figure is the mean over seeds with a 95% confidence interval across seeds (Student
t over the seeds' values, :func:`lifelong.tracking.confidence.mean_ci_over_seeds`). A group of one seed has no interval across seeds: it is marked ``n=1``,
and the run's own bootstrap interval (``cl_ci``) is shown beside it, named as such.

Outputs in ``out_dir``:

- ``compare.md`` / ``compare.csv``: per group ACC, forgetting (Chaudhry), BWT, FWT, Continual World
  forgetting and forward transfer, learning accuracy and steps/s (``compare_runs.csv``: per run);
- ``compare_tasks.md`` / ``compare_tasks.csv``: per group and task, final success, forgetting, CW
  forgetting, CW forward transfer;
- ``compare.png`` (``compare_<stream>.png`` when the groups come from several streams): one panel per
  task, probe success over the lifetime, one line per group (mean over seeds, 95% band), task blocks
  shaded, so forgetting between visits shows;
- ``compare_R.png``: one heatmap of the mean matrix R per group.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifelong.fileio import atomic_write, atomic_write_text
from lifelong.tracking.confidence import mean_ci_over_seeds

__all__ = [
    "FIGURES", "TASK_FIGURES", "RunSkipped", "NothingToCompare", "Group", "Comparison",
    "find_run_dirs", "load_runs", "group_runs", "run_table", "aggregate", "task_table", "display_table",
    "plot_probe_curves", "plot_R", "compare", "compare_runs",
]

#: The figures of the main table (keys of ``summary.json``'s ``cl``, then steps/s), in table order.
FIGURES: tuple[str, ...] = (
    "acc", "forgetting", "bwt", "fwt", "forgetting_cw", "forward_transfer_cw", "learning_accuracy",
    "recovery_carried", "recovery_reset", "sps",
)
#: The in-context adaptation figures: mean return of the k-th training episode after a task switch.
ADAPTATION_K = 5
#: The per-task figures (keys of ``summary.json``'s ``tasks[<task>]``), in table order.
TASK_FIGURES: tuple[str, ...] = ("final_success", "forgetting", "forgetting_cw", "forward_transfer_cw")
_TITLES = {
    "acc": "ACC", "forgetting": "forgetting", "bwt": "BWT", "fwt": "FWT", "forgetting_cw": "CW forgetting",
    "forward_transfer_cw": "CW fwd transfer", "learning_accuracy": "learning acc", "sps": "steps/s",
    "final_success": "final success", "recovery_carried": "recov. kept",
    "recovery_reset": "recov. reset",
}
_CHOICE_SECTIONS = ("memory", "stream")  # config groups whose keys follow from the choice's name
_MISSING = "<unset>"
_LEVEL = 0.95


class RunSkipped(UserWarning):
    """A run found under the paths that is not compared (one line naming its ``summary.json``)."""


class NothingToCompare(ValueError):
    """Every run found was skipped."""


# ---- confidence intervals across seeds ------------------------------------------------------
def _band_over_seeds(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``curves`` ``[S, T]`` (NaN: no value): mean and Student-t 95% band over the seeds."""
    out = np.full((3, curves.shape[1]), np.nan)
    for i in range(curves.shape[1]):
        out[:, i] = mean_ci_over_seeds(curves[:, i], _LEVEL)
    return out[0], out[1], out[2]


# ---- finding and reading runs ---------------------------------------------------------------
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


def _why_skipped(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The summary in ``path``, or None and why it cannot be compared."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"cannot read {path} ({type(error).__name__}: {error}), skipped"
    if not isinstance(summary, dict):
        return None, f"cannot read {path} (not a JSON object), skipped"
    if summary.get("finished") is False:
        at = summary.get("stopped_at_step")
        where = f" at env step {at:,}" if isinstance(at, int) else ""
        return None, (f"{path} is an unfinished run (stopped{where}), skipped: finish it with "
                      f"`lifelong resume {path.parent}`")
    if not summary.get("config_key"):
        return None, f"{path} was written by an older lifelong (no config_key), skipped: rerun it to compare"
    if summary.get("finished") is not True:
        return None, f"{path} does not say the run finished (no 'finished': true), skipped"
    for key, kind in (("config", dict), ("cl", dict), ("task_names", list)):
        if not isinstance(summary.get(key), kind):
            return None, f"{path} has no valid {key!r} ({kind.__name__}), skipped"
    return summary, ""


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The comparable summaries of the runs found under ``paths``, each with its ``run_dir``.

    Every summary that cannot be compared is skipped with a one-line :class:`RunSkipped` warning
    naming its file; :class:`NothingToCompare` when none is left."""
    runs, skipped = [], []
    for run_dir in find_run_dirs(paths):
        summary, why = _why_skipped(run_dir / "summary.json")
        if summary is None:
            warnings.warn(why, RunSkipped, stacklevel=2)
            skipped.append(str(run_dir / "summary.json"))
            continue
        summary["run_dir"] = str(run_dir)
        runs.append(summary)
    if not runs:
        raise NothingToCompare(
            f"nothing to compare: every run found was skipped ({', '.join(skipped)}); "
            f"compare finished runs written by this version of lifelong"
        )
    return runs


# ---- grouping by configuration --------------------------------------------------------------
@dataclass
class Group:
    """The runs of one configuration (seeds aside)."""

    label: str
    config_key: str
    memory: str
    stream: str
    config: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def task_names(self) -> list[str]:
        return list(dict.fromkeys(t for r in self.runs for t in r["task_names"]))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> canonical JSON of the leaf values (lists are leaves)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def _shown(value: str) -> str:
    if value == _MISSING:
        return "unset"
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else value


def _name(summary: Mapping[str, Any], section: str) -> str:
    """The config choice name of ``section`` (``memory`` / ``stream``) of a run."""
    value = summary.get(section)
    if isinstance(value, str):
        return value
    sub = summary.get("config", {}).get(section)
    if isinstance(sub, Mapping) and isinstance(sub.get("name"), str):
        return sub["name"]
    hp = summary.get("hparams", {})
    return str(hp.get(section, "?")) if isinstance(hp, Mapping) else "?"


def _differing_keys(groups: Sequence[Group]) -> tuple[list[str], list[str]]:
    """The flattened config keys whose values differ between ``groups``, and those of them the label
    shows (the rest follow from the memory / stream name)."""
    flats = [_flatten(g.config) for g in groups]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({f.get(k, _MISSING) for f in flats}) > 1]
    names = {"memory": [g.memory for g in groups], "stream": [g.stream for g in groups]}
    shown = []
    for key in differing:
        section = key.split(".", 1)[0]
        if section in _CHOICE_SECTIONS:
            by_name: dict[str, str] = {}
            values = [f.get(key, _MISSING) for f in flats]
            if all(by_name.setdefault(n, v) == v for n, v in zip(names[section], values)):
                continue  # the same for every group of one mixer / stream: the name says it
        shown.append(key)
    return differing, shown


def group_runs(runs: Sequence[dict[str, Any]]) -> list[Group]:
    """The runs grouped by ``config_key`` and labelled (see the module doc). A second run with the
    configuration and seed of an earlier one is skipped with a warning (it is not another seed)."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = str(run["config_key"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group("", key, _name(run, "memory"), _name(run, "stream"), dict(run["config"]))
        twin = next((r for r in group.runs if r.get("seed") == run.get("seed")), None)
        if twin is not None:
            warnings.warn(
                f"{Path(run['run_dir']) / 'summary.json'} has the configuration and seed {run.get('seed')} of "
                f"{twin['run_dir']}, skipped (not another seed)", RunSkipped, stacklevel=2,
            )
            continue
        group.runs.append(run)
    ordered = sorted(groups.values(), key=lambda g: (g.stream, g.memory))  # stable: first seen first
    _, shown = _differing_keys(ordered)
    several_streams = len({g.stream for g in ordered}) > 1
    for group in ordered:
        flat = _flatten(group.config)
        parts = [f"stream={group.stream}"] if several_streams else []
        parts += [f"{k}={_shown(flat.get(k, _MISSING))}" for k in shown]
        group.label = group.memory + (f" ({', '.join(parts)})" if parts else "")
    labels = [g.label for g in ordered]
    for group in ordered:
        if labels.count(group.label) > 1:  # configurations that flatten alike: tell them apart by key
            group.label += f" [{group.config_key[:8]}]"
    return ordered


# ---- tables ---------------------------------------------------------------------------------
def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _run_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    cl = summary["cl"]
    out = {name: _num(cl.get(name)) for name in FIGURES if name not in ("sps", "recovery_carried", "recovery_reset")}
    replay = summary.get("in_context") or {}
    for variant in ("carried", "reset"):
        out[f"recovery_{variant}"] = _num((replay.get(variant) or {}).get("recovery_episodes"))
    last = summary.get("last") or {}
    out["sps"] = _num(last.get("charts/sps"))
    return out


def _run_ci(summary: Mapping[str, Any], name: str) -> tuple[float, float]:
    """The run's own bootstrap CI of the figure ``name`` (NaN, NaN when it has none)."""
    ci = (summary.get("cl_ci") or {}).get(name)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return _num(ci[0]), _num(ci[1])
    return math.nan, math.nan


def run_table(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per run: group, memory, stream, seed, config_key, run_dir and every figure of ``FIGURES``."""
    rows = []
    for group in groups:
        for run in group.runs:
            rows.append({"group": group.label, "memory": group.memory, "stream": group.stream, "seed": run.get("seed"),
                         "config_key": group.config_key, "run_dir": run["run_dir"], **_run_figures(run)})
    return pd.DataFrame(rows)


def aggregate(groups: Sequence[Group]) -> pd.DataFrame:
    """Per group (index: label): memory, stream, seeds, config_key and for every figure of ``FIGURES``:
    ``<f>`` (mean over seeds), ``<f>_low`` / ``<f>_high`` (95% Student-t interval across seeds; NaN
    with fewer than two seeds), ``<f>_n`` (seeds with a value) and, for a group of one seed only,
    ``<f>_run_low`` / ``<f>_run_high`` (that run's own bootstrap interval)."""
    records = []
    for group in groups:
        rec: dict[str, Any] = {"group": group.label, "memory": group.memory, "stream": group.stream,
                               "seeds": group.seeds, "config_key": group.config_key}
        figures = [_run_figures(r) for r in group.runs]
        for name in FIGURES:
            values = np.array([f[name] for f in figures])
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = mean_ci_over_seeds(values, _LEVEL)
            rec[f"{name}_n"] = int(np.isfinite(values).sum())
            rec[f"{name}_run_low"], rec[f"{name}_run_high"] = (
                _run_ci(group.runs[0], name) if group.seeds == 1 else (math.nan, math.nan)
            )
        records.append(rec)
    return pd.DataFrame(records).set_index("group")


def task_table(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per group and task: group, task, seeds and for every figure of ``TASK_FIGURES`` its mean
    over seeds, ``_low`` / ``_high`` (95% Student-t interval across seeds) and ``_n``."""
    rows = []
    for group in groups:
        for task in group.task_names:
            rec: dict[str, Any] = {"group": group.label, "task": task, "seeds": group.seeds}
            for name in TASK_FIGURES:
                values = [_num((r.get("tasks", {}).get(task) or {}).get(name)) for r in group.runs]
                rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = mean_ci_over_seeds(values, _LEVEL)
                rec[f"{name}_n"] = int(np.isfinite(values).sum())
            rows.append(rec)
    return pd.DataFrame(rows)


def adaptation_table(groups: Sequence[Group], k: int = ADAPTATION_K, switches: str = "online") -> pd.DataFrame:
    """Per group: the mean return of the k-th training episode after a task switch (``summary.json``'s
    ``adaptation.<switches>``: ``online`` over every switch of the lifetime, ``online_later_half`` over
    the later half of them; k = 1..``k``), mean over seeds with ``_low`` / ``_high`` (95% Student-t
    interval across seeds); in-context adaptation shows as a return that rises with k. A run without
    the figure (a summary from before ``online_later_half`` existed) counts as missing."""
    rows = []
    for group in groups:
        rec: dict[str, Any] = {"group": group.label, "seeds": group.seeds}
        per_run = [(r.get("adaptation") or {}).get(switches) or [] for r in group.runs]
        for i in range(k):
            values = [_num(returns[i]) if i < len(returns) else math.nan for returns in per_run]
            rec[f"episode_{i + 1}"], rec[f"episode_{i + 1}_low"], rec[f"episode_{i + 1}_high"] = mean_ci_over_seeds(values, _LEVEL)
        rows.append(rec)
    return pd.DataFrame(rows)


def _adaptation_markdown(table: pd.DataFrame, k: int = ADAPTATION_K, switches: str = "every switch of the lifetime") -> str:
    head = ["group", "seeds", *(f"episode {i}" for i in range(1, k + 1))]
    lines = [_md_row(head), "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = []
        for i in range(1, k + 1):
            mean, low, high = row[f"episode_{i}"], row[f"episode_{i}_low"], row[f"episode_{i}_high"]
            cells.append("-" if not math.isfinite(mean) else
                         f"{mean:.3f} ± {(high - low) / 2:.3f}" if math.isfinite(low) else f"{mean:.3f} (n=1)")
        lines.append(_md_row([str(row["group"]), str(int(row["seeds"])), *cells]))
    return "\n".join(lines) + (f"\n\nmean return of the k-th training episode after a task switch ({switches}), "
                               "mean ± half-width of the 95% Student-t interval across seeds.\n")


def adaptation_markdown(groups: Sequence[Group], k: int = ADAPTATION_K) -> str:
    """``compare_adaptation.md``: the k-th-episode returns over every switch of the lifetime (learning
    included), then over the later half of the switches (the trained agent)."""
    return ("## every switch of the lifetime\n\n" + _adaptation_markdown(adaptation_table(groups, k), k)
            + "\n## the later half of the switches\n\n"
            + _adaptation_markdown(adaptation_table(groups, k, "online_later_half"), k, "the later half of the lifetime's switches"))


def plot_in_context(groups: Sequence[Group], png: str | Path) -> Path | None:
    """The switch replay (tracking/replay.py): A's success in the k-th episode after returning from B,
    memory kept (solid) vs reset at the switch (dashed), per group: mean over seeds with a 95% band
    (one seed: the run's bootstrap band). None when no run has a replay."""
    plt = pyplot()
    colors = _group_colors(groups)
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    drawn = False
    for index, group in enumerate(groups, start=1):
        for variant, style in (("carried", "-"), ("reset", "--")):
            rows = [((r.get("in_context") or {}).get(variant) or {}) for r in group.runs]
            rows = [row for row in rows if row.get("success")]
            if not rows:
                continue
            n = min(len(row["success"]) for row in rows)
            values = np.array([_floats(row["success"][:n], n) for row in rows])
            if len(rows) == 1:
                mean, low, high = values[0], _floats(rows[0]["low"][:n], n), _floats(rows[0]["high"][:n], n)
            else:
                mean, low, high = _band_over_seeds(values)
            k = np.arange(1, n + 1)
            label = f"[{index}] {group.memory}, memory {'kept' if variant == 'carried' else 'reset'}"
            ax.plot(k, mean, style, marker="o", ms=3, color=colors[group.label], label=label)
            ax.fill_between(k, np.clip(low, 0, 1), np.clip(high, 0, 1), color=colors[group.label], alpha=0.12, lw=0)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("episode after returning to task A (learning frozen)")
    ax.set_ylabel("success on A")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("in-context vs in-weight: A, B, then A again through a copy of the memory\n"
                 "([k]: the groups of compare.md)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return Path(png)


def _fmt(name: str, value: float) -> str:
    return f"{value:,.0f}" if name == "sps" else f"{value:.3f}"


def _cell(row: Mapping[str, Any], name: str) -> str:
    """``mean ± half-width`` across seeds; one seed: ``mean (n=1 ...)``; ``-`` when undefined."""
    mean = row[name]
    if not math.isfinite(mean):
        return "-"
    n, seeds = int(row[f"{name}_n"]), int(row["seeds"])
    if n >= 2:
        text = f"{_fmt(name, mean)} ± {_fmt(name, (row[f'{name}_high'] - row[f'{name}_low']) / 2)}"
        return text + (f" (n={n})" if n < seeds else "")
    low, high = row.get(f"{name}_run_low", math.nan), row.get(f"{name}_run_high", math.nan)
    if seeds == 1 and math.isfinite(low) and math.isfinite(high):
        return f"{_fmt(name, mean)} (n=1; run's bootstrap {_fmt(name, low)}–{_fmt(name, high)})"
    return f"{_fmt(name, mean)} (n=1)"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-group table turned for a terminal: one row per figure (plus ``seeds`` and ``stream``),
    one column per group, cells as in ``compare.md``. ``table`` is what :func:`aggregate` returns."""
    rows = {"seeds": [str(int(s)) for s in table["seeds"]], "stream": list(table["stream"].astype(str))}
    for name in FIGURES:
        rows[_TITLES[name]] = [_cell(row, name) for _, row in table.iterrows()]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(table.index))
    frame.index.name = "figure"
    return frame


_NOTES = (
    "mean ± half-width of the 95% confidence interval across seeds (Student t over the seeds' values); "
    "'(n=k)': only k seeds define the figure. n=1: one seed, so no interval across seeds; the interval "
    "shown, when there is one, is that run's own bootstrap CI (over its lifetimes and probe episodes), "
    "not a spread over seeds. '-': undefined (one task: no forgetting / BWT / FWT; CW forward transfer "
    "needs reference runs). Runs are grouped by configuration (config_key); configurations are never "
    "averaged together."
)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown(table: pd.DataFrame, groups: Sequence[Group], differing: Sequence[str], shown: Sequence[str]) -> str:
    head = ["group", "stream", "seeds", *(_TITLES[f] for f in FIGURES)]
    lines = [_md_row(head), "|" + "---|" * len(head)]
    for label, row in table.iterrows():
        lines.append(_md_row([str(label), str(row["stream"]), str(int(row["seeds"])), *(_cell(row, f) for f in FIGURES)]))
    lines += ["", _NOTES, ""]
    if differing:
        implied = [k for k in differing if k not in shown]
        text = f"Configuration keys that differ between groups, in the labels: {', '.join(shown) or 'none'}"
        if implied:
            text += f"; implied by the mixer / stream name: {', '.join(implied)}"
        lines += [text + ".", ""]
    lines += [_md_row(["group", "config_key", "seed", "run directory"]), "|---|---|---|---|"]
    for group in groups:
        for run in group.runs:
            lines.append(_md_row([group.label, group.config_key, str(run.get("seed")), run["run_dir"]]))
    return "\n".join(lines) + "\n"


def _task_markdown(tasks: pd.DataFrame) -> str:
    head = ["group", "task", "seeds", *(_TITLES[f] for f in TASK_FIGURES)]
    lines = [_md_row(head), "|" + "---|" * len(head)]
    for _, row in tasks.iterrows():
        cells = []
        for name in TASK_FIGURES:
            mean, n = row[name], int(row[f"{name}_n"])
            if not math.isfinite(mean):
                cells.append("-")
            elif n >= 2:
                cells.append(f"{mean:.3f} ± {(row[f'{name}_high'] - row[f'{name}_low']) / 2:.3f}"
                             + (f" (n={n})" if n < int(row["seeds"]) else ""))
            else:
                cells.append(f"{mean:.3f} (n=1)")
        lines.append(_md_row([str(row["group"]), str(row["task"]), str(int(row["seeds"])), *cells]))
    notes = ("\nper group and task: mean ± half-width of the 95% Student-t interval across seeds; n=1: one "
             "seed, no interval. forgetting: Chaudhry (best earlier block end - end of run), CW forgetting: "
             "end of the task's block - end of run, CW fwd transfer: (AUC - AUC_ref) / (1 - AUC_ref) "
             "(needs reference runs); '-': undefined.\n")
    return "\n".join(lines) + "\n" + notes


# ---- figures --------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (a report without figures never loads it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floats(values: Any, n: int) -> np.ndarray:
    if not isinstance(values, list) or len(values) != n:
        return np.full(n, np.nan)
    return np.array([_num(v) for v in values])


def _probe_curve(run: Mapping[str, Any], task: str) -> dict[str, np.ndarray] | None:
    curve = (run.get("probe_curves") or {}).get(task)
    if not isinstance(curve, Mapping) or not curve.get("step"):
        return None
    steps = _floats(curve["step"], len(curve["step"]))
    order = np.argsort(steps, kind="stable")
    out = {"step": steps[order]}
    for key in ("success", "low", "high"):
        out[key] = _floats(curve.get(key), len(steps))[order]
    return out


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``fp`` at ``x`` (linear), NaN outside ``xp``'s range or next to a missing value."""
    ok = np.isfinite(xp) & np.isfinite(fp)
    if not ok.any():
        return np.full(len(x), np.nan)
    out = np.interp(x, xp[ok], fp[ok])
    out[(x < xp[ok][0]) | (x > xp[ok][-1])] = np.nan
    return out


def _group_curve(group: Group, task: str) -> dict[str, np.ndarray] | None:
    """Probe success of ``task`` over the lifetime: mean over seeds and its 95% band across seeds
    (one seed: the run's own bootstrap band); runs with other probe steps are interpolated."""
    curves = [c for c in (_probe_curve(r, task) for r in group.runs) if c is not None]
    if not curves:
        return None
    same = all(len(c["step"]) == len(curves[0]["step"]) and np.array_equal(c["step"], curves[0]["step"]) for c in curves)
    steps = curves[0]["step"] if same else np.unique(np.concatenate([c["step"] for c in curves]))
    values = {k: np.stack([c[k] if same else _interp(steps, c["step"], c[k]) for c in curves]) for k in ("success", "low", "high")}
    if len(curves) == 1:
        return {"step": steps, "mean": values["success"][0], "low": values["low"][0], "high": values["high"][0]}
    mean, low, high = _band_over_seeds(values["success"])
    return {"step": steps, "mean": mean, "low": low, "high": high}


def _blocks(run: Mapping[str, Any]) -> list[tuple[float, float, str]]:
    return [(_num(b.get("start")), _num(b.get("end")), str(b.get("task"))) for b in run.get("blocks") or []]


def _task_colors(task_names: Sequence[str]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("Pastel2" if len(task_names) <= 8 else "Set3")
    return {t: cmap(i % cmap.N) for i, t in enumerate(task_names)}


def _group_colors(groups: Sequence[Group]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}


def plot_probe_curves(groups: Sequence[Group], png: str | Path, title: str = "") -> Path:
    """One panel per task: probe success over the lifetime, one line per group (mean over seeds, 95%
    band across seeds; one seed: the run's own bootstrap band, dashed), task blocks shaded. When the
    groups' block schedules differ, each group's schedule is a strip under the curves instead."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    tasks = list(dict.fromkeys(t for g in groups for t in g.task_names))
    task_colors = _task_colors(tasks)
    group_colors = _group_colors(groups)
    schedules = [_blocks(g.runs[0]) for g in groups]  # the runs of a group share the configuration
    shared = all(s == schedules[0] for s in schedules)
    n_strips = 0 if shared else len(groups)
    strip = 0.075
    ncols = 1 if len(tasks) <= 3 else 2
    nrows = math.ceil(len(tasks) / ncols)
    task_cols = min(len(tasks), 6)
    top = 0.45 + 0.22 * math.ceil(len(tasks) / task_cols)  # inches: title and the task legend
    bottom = 0.2 + 0.19 * (len(groups) + 1)  # inches: the group legend
    panels = (3.0 + 0.22 * n_strips) * nrows
    height = top + panels + bottom
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols + 0.6, height), squeeze=False, sharex=True)
    ends = [e for schedule in schedules for _, e, _ in schedule] + [_num(r.get("steps")) for g in groups for r in g.runs]
    x_max = max([e for e in ends if math.isfinite(e)] + [1.0])
    for ax, task in zip(axes.ravel(), tasks):
        if shared:
            for start, end, name in schedules[0]:
                ax.axvspan(start, end, color=task_colors.get(name, "0.9"), alpha=0.4, lw=0, zorder=0)
                ax.axvline(start, color="0.4", lw=0.7, ls=":", zorder=1)
        else:
            for i, schedule in enumerate(schedules):
                y0 = -0.05 - strip * (i + 1)
                for start, end, name in schedule:
                    ax.broken_barh([(start, end - start)], (y0 + 0.008, strip - 0.016),
                                   facecolors=task_colors.get(name, "0.9"), edgecolor="0.5", lw=0.4)
            ax.axhline(-0.05, color="0.3", lw=0.6)
        for group in groups:
            curve = _group_curve(group, task)
            if curve is None:
                continue
            color = group_colors[group.label]
            one = group.seeds == 1
            low, high = np.clip(curve["low"], 0.0, 1.0), np.clip(curve["high"], 0.0, 1.0)  # success is in [0, 1]
            ax.fill_between(curve["step"], low, high, color=color, alpha=0.12 if one else 0.22,
                            lw=0, hatch="///" if one else None, zorder=2)
            ax.plot(curve["step"], curve["mean"], color=color, lw=1.6, ls="--" if one else "-",
                    marker="o" if len(curve["step"]) <= 40 else None, ms=2.8, zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-0.05 - strip * n_strips, 1.05)
        ax.set_xlim(0, x_max)
        ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
        labels = [f"{t:g}" for t in ticks]
        if not shared:
            ticks += [-0.05 - strip * (i + 0.5) for i in range(len(groups))]
            labels += [f"[{i + 1}]" for i in range(len(groups))]
        ax.set_yticks(ticks, labels, fontsize=8)
        for tick, group in zip(ax.get_yticklabels()[5:], groups):
            tick.set_color(group_colors[group.label])
        ax.set_ylabel("probe success", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[: len(tasks)]):
        if i + ncols >= len(tasks):  # the lowest panel of its column
            ax.set_xlabel("env step (summed over the parallel lifetimes)", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
    handles = []
    for i, group in enumerate(groups):
        prefix = "" if shared else f"[{i + 1}] "
        note = "n=1, band: the run's own bootstrap CI" if group.seeds == 1 else f"n={group.seeds}, band: 95% CI across seeds"
        handles.append(Line2D([], [], color=group_colors[group.label], lw=2, ls="--" if group.seeds == 1 else "-",
                              label=f"{prefix}{group.label}  ({note})"))
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.005), fontsize=8, frameon=False,
               title="groups: mean over seeds", title_fontsize=8, alignment="left")
    task_handles = [Patch(facecolor=task_colors[t], edgecolor="0.5", lw=0.4, label=t) for t in tasks]
    fig.legend(handles=task_handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height), fontsize=8,
               frameon=False, ncol=task_cols, handlelength=1.5, columnspacing=1.2,
               title="task blocks" + ("" if shared else " (strips [k]: the blocks of group k)"), title_fontsize=8)
    fig.suptitle(title or "probe success per task over the lifetime", fontsize=11, y=1 - 0.08 / height, va="top")
    fig.tight_layout(rect=(0, bottom / height, 1, 1 - top / height))
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return Path(png)


def _mean_R(group: Group) -> tuple[np.ndarray, list[str], list[str]]:
    """Mean R over the group's seeds ``[K, N]`` (NaN: never measured), row and column labels."""
    tasks = group.task_names
    mats, row_tasks = [], []
    for run in group.runs:
        rows = run.get("R") or []
        cols = {t: j for j, t in enumerate(run["task_names"])}
        mat = np.full((len(rows), len(tasks)), np.nan)
        for k, row in enumerate(rows):
            for j, task in enumerate(tasks):
                if task in cols and isinstance(row, list) and cols[task] < len(row):
                    mat[k, j] = _num(row[cols[task]])
        mats.append(mat)
        names = run.get("R_block_tasks") or []
        if len(names) > len(row_tasks):
            row_tasks = [str(t) for t in names]
    n_rows = max(m.shape[0] for m in mats)
    stack = np.full((len(mats), n_rows, len(tasks)), np.nan)
    for i, m in enumerate(mats):
        stack[i, : m.shape[0]] = m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # entries no seed measured stay NaN
        mean = np.nanmean(stack, axis=0) if len(mats) else np.zeros((0, len(tasks)))
    row_tasks += ["?"] * (n_rows - len(row_tasks))
    return mean, [f"{k}: {t}" for k, t in enumerate(row_tasks)], tasks


def plot_R(groups: Sequence[Group], png: str | Path) -> Path:
    """One heatmap per group: the mean over seeds of R (rows: blocks ``k: task``, columns: tasks),
    each entry annotated, entries never measured left blank."""
    plt = pyplot()
    panels = [_mean_R(g) for g in groups]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    width = max(2.2 + 0.9 * len(p[2]) for p in panels)
    height = max(1.6 + 0.38 * max(len(p[1]), 1) for p in panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1.0, height * nrows + 0.6), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = None
    for ax, group, (mat, row_labels, col_labels) in zip(axes.ravel(), groups, panels):
        if mat.size == 0:
            ax.text(0.5, 0.5, "no R rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
            for (k, j), value in np.ndenumerate(mat):
                if math.isfinite(value):
                    ax.text(j, k, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if value < 0.55 else "black")
            ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right", fontsize=8)
            ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
            ax.set_xlabel("task probed", fontsize=8)
            ax.set_ylabel("end of block", fontsize=8)
        seeds = f"n={group.seeds} seeds" if group.seeds > 1 else "n=1 seed"
        ax.set_title(f"{group.label}\n(mean R, {seeds})", fontsize=9)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    if image is not None:
        cax = fig.add_axes((0.945, 0.15, 0.015, 0.7))
        fig.colorbar(image, cax=cax).set_label("probe success", fontsize=8)
    fig.suptitle("R[k, j]: probe success on task j at the end of block k (blank: not measured)", fontsize=10)
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return Path(png)


# ---- the report -----------------------------------------------------------------------------
@dataclass
class Comparison:
    """What :func:`compare` found and wrote."""

    groups: list[Group]
    table: pd.DataFrame  # :func:`aggregate`
    tasks: pd.DataFrame  # :func:`task_table`
    per_run: pd.DataFrame  # :func:`run_table`
    figures: list[Path]  # the probe-curve figures (one per stream)
    heatmap: Path
    files: list[Path]  # every file written, in the order written


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "stream"


def compare(paths: Sequence[str | Path], out_dir: str | Path) -> Comparison:
    """Compare the runs found under ``paths``; write the tables and figures (module doc) in ``out_dir``."""
    groups = group_runs(load_runs(paths))
    differing, shown = _differing_keys(groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, tasks, per_run = aggregate(groups), task_table(groups), run_table(groups)
    files = [
        atomic_write_text(out / "compare.md", _markdown(table, groups, differing, shown)),
        atomic_write_text(out / "compare.csv", table.to_csv()),
        atomic_write_text(out / "compare_runs.csv", per_run.to_csv(index=False)),
        atomic_write_text(out / "compare_tasks.md", _task_markdown(tasks)),
        atomic_write_text(out / "compare_tasks.csv", tasks.to_csv(index=False)),
    ]
    streams = list(dict.fromkeys(g.stream for g in groups))
    figures = []
    for stream in streams:
        members = [g for g in groups if g.stream == stream]
        name = "compare.png" if len(streams) == 1 else f"compare_{_safe(stream)}.png"
        title = f"stream {stream}: probe success per task over the lifetime"
        figures.append(plot_probe_curves(members, out / name, title))
    heatmap = plot_R(groups, out / "compare_R.png")
    files += [*figures, heatmap]
    files.append(atomic_write_text(out / "compare_adaptation.md", adaptation_markdown(groups)))
    in_context = plot_in_context(groups, out / "compare_in_context.png")
    if in_context is not None:
        files.append(in_context)
    return Comparison(groups, table, tasks, per_run, figures, heatmap, files)


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """:func:`compare`, returning the per-group table (:func:`aggregate`) and the (first) probe-curve PNG."""
    result = compare(run_dirs, out_dir)
    return result.table, result.figures[0]
