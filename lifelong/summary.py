"""Printing a finished lifetime for the terminal: per-task table, final figures, where to look next."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def print_run_summary(summary: dict[str, Any], run_dir: Path, console: Console) -> None:
    """The end-of-run report of ``lifelong run``: per-task results, CL figures, TensorBoard command."""
    tasks: dict[str, dict[str, Any]] = summary["tasks"]
    if tasks:  # one row per figure, one column per task: stays readable with many figures
        figures_per_task = sorted({key for row in tasks.values() for key, v in row.items() if not isinstance(v, (dict, list))})
        table = Table(title="per-task results")
        table.add_column("figure", no_wrap=True)
        for name in tasks:
            table.add_column(name, justify="right", overflow="fold")
        for figure in figures_per_task:
            table.add_row(figure, *(_fmt(row.get(figure)) for row in tasks.values()))
        console.print(table)
    print_block_probes(summary, console)
    figures = {k: v for k, v in summary["cl"].items() if not isinstance(v, (dict, list))}
    if figures:
        console.print("  ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))
    print_timing(summary.get("last") or {}, console)
    run_dir = Path(run_dir).resolve()
    # soft_wrap: paths and the command stay on one line, so they can be copied
    console.print(f"run directory: [bold]{run_dir}[/]", soft_wrap=True)
    console.print(f"summary:       {run_dir / 'summary.json'}", soft_wrap=True)
    console.print(f"view it:       tensorboard --logdir {run_dir} --host 127.0.0.1", highlight=False, soft_wrap=True)


def _entry(value: Any, interval: Any) -> str:
    """``0.656 [0.500, 0.797]``; ``-`` for a missing entry."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"
    return f"{value:.2f}"


def print_block_probes(summary: dict[str, Any], console: Console) -> None:
    """R as a table: one row per block end (the task trained in it, the env step), one column per
    task, each entry the probe success with its 95% bootstrap interval. Learning, forgetting and
    relearning read down a column."""
    rows = summary.get("R") or []
    if not rows:
        return
    names = summary.get("task_names") or list(summary.get("tasks") or {})
    cis = summary.get("R_ci") or [[None] * len(names) for _ in rows]
    steps = summary.get("R_steps") or [None] * len(rows)
    trained = summary.get("R_block_tasks") or [None] * len(rows)
    table = Table(title=f"probe success at each block end (R, 95% CI; {_probe_count(summary)})")
    table.add_column("after block", overflow="fold")
    table.add_column("env step", justify="right", no_wrap=True, min_width=7)
    for name in names:  # a narrow terminal folds an entry onto two lines instead of cutting it
        table.add_column(name, justify="right", overflow="fold")
    for k, row in enumerate(rows):
        task = trained[k] if k < len(trained) else None
        label = f"{k} ({names[task] if isinstance(task, int) and 0 <= task < len(names) else task or '?'})"
        step = steps[k] if k < len(steps) else None
        table.add_row(label, "-" if step is None else f"{int(step):,}",
                      *(_entry(v, cis[k][j] if k < len(cis) and j < len(cis[k]) else None) for j, v in enumerate(row)))
    console.print(table)


def _probe_count(summary: dict[str, Any]) -> str:
    episodes = summary.get("R_episodes")
    if isinstance(episodes, list) and episodes and isinstance(episodes[0], list) and episodes[0]:
        return f"{episodes[0][0]} episodes an entry"
    return "probe episodes per entry in summary.json"


def print_timing(last: dict[str, Any], console: Console) -> None:
    """Wall time and the probes' share of it, when the run logged them."""
    wall, probes = last.get("charts/wall_seconds"), last.get("charts/probe_seconds")
    if not isinstance(wall, (int, float)) or wall <= 0:
        return
    text = f"wall time {int(wall) // 60} min {int(wall) % 60} s"
    if isinstance(probes, (int, float)):
        text += f", probes {probes / wall:.0%} of it"
    console.print(text)


def print_dataframe(frame, title: str, console: Console) -> None:
    """A pandas DataFrame as a rich table."""
    table = Table(title=title)
    index_name = frame.index.name or ""
    table.add_column(str(index_name))
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *(_fmt(v) for v in row.tolist()))
    console.print(table)
