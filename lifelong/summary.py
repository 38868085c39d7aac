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
    figures = {k: v for k, v in summary["cl"].items() if not isinstance(v, (dict, list))}
    if figures:
        console.print("  ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))
    run_dir = Path(run_dir).resolve()
    # soft_wrap: paths and the command stay on one line, so they can be copied
    console.print(f"run directory: [bold]{run_dir}[/]", soft_wrap=True)
    console.print(f"summary:       {run_dir / 'summary.json'}", soft_wrap=True)
    console.print(f"view it:       tensorboard --logdir {run_dir} --host 127.0.0.1", highlight=False, soft_wrap=True)


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
