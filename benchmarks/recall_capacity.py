"""Recall inside RL: pairs recalled vs gap, per mixer, from ``lifelong run stream=recall`` (short).

    python benchmarks/recall_capacity.py --out runs/recall_capacity                  # every mixer, seed 0
    python benchmarks/recall_capacity.py --mixers gated_deltanet mamba2 --total-steps 40000 --seeds 0 1
    python benchmarks/recall_capacity.py --out DIR --report-only                     # tables from finished runs

The supervised view (``lifelong mqar``, ``benchmarks/mqar_grid.py``) trains a model to answer
queries; here the same mixers sit in the PPO agent of the lifelong loop and the recall stream
(``configs/stream/recall.yaml``: blocks of tasks with more pairs and longer gaps) rewards a right
answer. Each run's ``summary.json`` gives, per task, the success measured at the end of the run
(learning off: ``final_success``) and over its training block (``train_success``), the fraction
of queries answered right. Pairs recalled = success x queries per episode; chance = 1 / num_values.
The task's pairs and gap are read from the run's saved configuration.

Writes ``OUT/recall_capacity.md`` / ``.json`` (one row per mixer, one column per task) and
``OUT/recall_capacity.png`` (pairs recalled against the gap, one line per mixer). A run whose
``summary.json`` is finished is not run again.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: label -> (configs/memory/ name, overrides)
MIXERS: dict[str, tuple[str, list[str]]] = {
    "softmax": ("softmax", []),
    "linear_attention": ("linear_attention", []),
    "mamba2": ("mamba2", []),
    "gated_deltanet": ("gated_deltanet", []),
    "deltanet": ("deltanet", []),
    "palimpsa": ("palimpsa", []),
    "lola-sre": ("lola", ["memory.selection=sre"]),
    "lola-random": ("lola", ["memory.selection=random"]),
    "lola-recency": ("lola", ["memory.selection=recency"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/recall_capacity"))
    p.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--total-steps", type=int, default=40000, help="env steps summed over the lifetimes")
    p.add_argument("--steps-per-task", type=int, default=1000, help="stream.steps_per_task (per lifetime)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--extra", nargs="*", default=[], help="more `lifelong run` overrides, e.g. agent.d_model=64")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--report-only", action="store_true", help="only read the runs under --out")
    return p.parse_args(argv)


def run_command(args: argparse.Namespace, mixer: str, seed: int, run_dir: Path) -> list[str]:
    memory, extra = MIXERS[mixer]
    exe = shutil.which("lifelong") or str(Path(sys.executable).parent / "lifelong")
    return [exe, "run", "stream=recall", f"memory={memory}", *extra, f"seed={seed}",
            f"total_steps={args.total_steps}", f"stream.steps_per_task={args.steps_per_task}",
            f"num_envs={args.num_envs}", "progress=false", "overwrite=true", *args.extra, f"hydra.run.dir={run_dir}"]


def finished(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    try:
        return bool(json.loads(path.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def recall_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per recall task of a finished run: pairs, gap, queries, success (final, train),
    pairs recalled and chance, from ``summary.json`` and the run's saved configuration."""
    from omegaconf import OmegaConf

    from lifelong.run_dir import saved_config

    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = OmegaConf.to_container(saved_config(run_dir), resolve=True)
    stream = cfg["stream"]
    num_values = _num((stream.get("recall_vocab") or {}).get("num_values"))
    rows = []
    for task, figures in summary["tasks"].items():
        recall = ((stream.get("tasks") or {}).get(task) or {}).get("recall")
        if not recall:
            continue
        pairs, gap = int(recall["num_pairs"]), int(recall.get("gap", 0))
        queries = int(recall.get("num_queries") or pairs)
        final = _num(figures.get("final_success", figures.get("success")))
        rows.append({
            "task": task, "num_pairs": pairs, "gap": gap, "queries": queries,
            "final_success": final, "train_success": _num(figures.get("train_success")),
            "pairs_recalled": final * queries, "chance": 1.0 / num_values if num_values else math.nan,
            "episodes": figures.get("episodes"),
        })
    return rows


def collect(out: Path) -> list[dict[str, Any]]:
    records = []
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        if not finished(run_dir):
            continue
        mixer, _, seed = run_dir.name.rpartition("_seed")
        for row in recall_rows(run_dir):
            records.append({"mixer": mixer, "seed": int(seed) if seed.isdigit() else seed, **row})
    return records


def table(records: list[dict[str, Any]]) -> str:
    tasks = sorted({(r["num_pairs"], r["gap"], r["task"]) for r in records})
    head = ["mixer", "seeds", *(f"{t} (P={p}, gap={g})" for p, g, t in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mixer in [m for m in MIXERS if any(r["mixer"] == m for r in records)]:
        mine = [r for r in records if r["mixer"] == mixer]
        cells = []
        for p, g, t in tasks:
            vals = [r for r in mine if r["task"] == t]
            recalled = [r["pairs_recalled"] for r in vals if math.isfinite(r["pairs_recalled"])]
            train = [r["train_success"] for r in vals if math.isfinite(r["train_success"])]
            cells.append(f"{sum(recalled) / len(recalled):.2f} / {p} (train {sum(train) / len(train):.2f})"
                         if recalled else "-")
        lines.append("| " + " | ".join([mixer, str(len({r["seed"] for r in mine})), *cells]) + " |")
    chance = next((r["chance"] for r in records if math.isfinite(r["chance"])), math.nan)
    return ("\n".join(lines) + f"\n\nCells: pairs recalled at the end of the run (final success, learning off, x "
            f"queries) / pairs stored, mean over seeds; train: success over the task's training block. "
            f"Chance success: {chance:.3f}.\n")


def plot(records: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mixer in [m for m in MIXERS if any(r["mixer"] == m for r in records)]:
        points: dict[int, list[float]] = {}
        for r in records:
            if r["mixer"] == mixer and math.isfinite(r["final_success"]):
                points.setdefault(r["gap"], []).append(r["final_success"])
        gaps = sorted(points)
        ax.plot(gaps, [sum(points[g]) / len(points[g]) for g in gaps], "--" if mixer.startswith("lola") else "-",
                marker="o", label=mixer)
    tasks = sorted({(r["gap"], r["num_pairs"]) for r in records})
    ax.set_xticks([g for g, _ in tasks], [f"{g}\nP={p}" for g, p in tasks])
    ax.set_xlabel("gap between writes and queries (pairs stored)")
    ax.set_ylabel("fraction of queries recalled (end of run)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("associative recall inside RL (stream=recall)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.report_only:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for mixer in args.mixers:
            for seed in args.seeds:
                run_dir = args.out / f"{mixer}_seed{seed}"
                if finished(run_dir):
                    print(f"{mixer} seed {seed}: finished before, kept", flush=True)
                    continue
                command = run_command(args, mixer, seed, run_dir)
                start = time.perf_counter()
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
                status = "ok" if done.returncode == 0 else f"failed ({done.returncode}): {done.stderr.strip()[-300:]}"
                print(f"[{time.perf_counter() - t0:6.0f} s] {mixer} seed {seed}: {status} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    records = collect(args.out)
    if not records:
        print(f"no finished recall runs under {args.out}", file=sys.stderr)
        return records
    md = table(records)
    (args.out / "recall_capacity.md").write_text(md)
    (args.out / "recall_capacity.json").write_text(json.dumps(records, indent=2) + "\n")
    png = plot(records, args.out / "recall_capacity.png")
    print(md)
    print(f"figure: {png}\nelapsed: {time.perf_counter() - t0:.0f} s")
    return records


if __name__ == "__main__":
    main()
