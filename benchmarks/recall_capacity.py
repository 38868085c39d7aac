"""Recall inside RL: pairs recalled vs gap, per mixer, from ``lifelong run stream=recall-cpu``.

    python benchmarks/recall_capacity.py --out runs/recall_capacity --seeds 0 1 2 --jobs 2 --extra tracker.probe_every=0
    python benchmarks/recall_capacity.py --mixers gated_deltanet mamba2 --stream recall --total-steps 400000
    python benchmarks/recall_capacity.py --out DIR --report-only                     # tables from finished runs

The supervised view (``lifelong mqar``, ``benchmarks/mqar_grid.py``) trains a model to answer
queries; here the same mixers sit in the PPO agent of the lifelong loop and a recall stream
(``configs/stream/recall-cpu.yaml`` by default: blocks of tasks with more pairs and longer gaps)
rewards a right answer. Each run's ``summary.json`` gives, per task, the fraction of queries answered
right:
- at the end of the task's own block (``block_success``: its diagonal entry of R, the probe with
  learning off on the memory the lifetime carries): the capacity figure, as MQAR's test accuracy is
  the trained model's;
- at the end of the run (``final_success``: after the later tasks) and over its training block
  (``train_success``).
Pairs recalled = success x queries per episode; chance = 1 / num_values. The task's pairs and gap
are read from the run's saved configuration. Over seeds: mean and 95% Student-t interval
(``tracking.confidence.mean_ci_over_seeds``), as ``lifelong mqar-report`` gives MQAR's.

The large ``recall`` stream (32 keys, 16 values) is slow to learn by reward alone: Gated DeltaNet
left chance on its first task (2 pairs, no gap) only after ~150k env steps (README "Results:
associative recall"); ``recall-cpu`` (4 keys, 4 values) is learned within its 120k-step blocks.

Writes ``OUT/recall_capacity.md`` / ``.json`` (one row per mixer, one column per task) and
``OUT/recall_capacity.png`` (fraction recalled at the block end against the gap, one line and band
per mixer). A run whose ``summary.json`` is finished is not run again.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: label -> (configs/memory/ name, overrides)
MIXERS: dict[str, tuple[str, list[str]]] = {
    "softmax": ("softmax", []),
    # the reference at a cache that holds the longest recall-cpu episode (76 tokens) 6 times over; the
    # default 4,096-token cache ran recall-cpu at under a fifth of Gated DeltaNet's steps/s on a CPU
    "softmax-cache512": ("softmax", ["memory.max_cache=512"]),
    "sliding_window": ("sliding_window", []),
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
    p.add_argument("--stream", default="recall-cpu", help="a recall stream of configs/stream/ (recall: the large one)")
    p.add_argument("--total-steps", type=int, default=None,
                   help="env steps summed over the lifetimes (default: one pass of the stream's schedule)")
    p.add_argument("--steps-per-task", type=int, default=None, help="stream.steps_per_task (default: the stream's)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    p.add_argument("--extra", nargs="*", default=[], help="more `lifelong run` overrides, e.g. agent.d_model=64")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--report-only", action="store_true", help="only read the runs under --out")
    return p.parse_args(argv)


def run_command(args: argparse.Namespace, mixer: str, seed: int, run_dir: Path) -> list[str]:
    memory, extra = MIXERS[mixer]
    # the CLI of the package this Python imports (a `lifelong` on PATH may belong to another venv)
    exe = [sys.executable, "-m", "lifelong"]
    budget = [f"total_steps={args.total_steps}"] if args.total_steps is not None else []
    if args.steps_per_task is not None:
        budget.append(f"stream.steps_per_task={args.steps_per_task}")
    return [*exe, "run", f"stream={args.stream}", f"memory={memory}", *extra, f"seed={seed}", *budget,
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
    own_block = block_end_success(summary)
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
            "block_success": own_block.get(task, math.nan),
            "final_success": final, "train_success": _num(figures.get("train_success")),
            "pairs_recalled": own_block.get(task, math.nan) * queries, "final_pairs_recalled": final * queries, "chance": 1.0 / num_values if num_values else math.nan,
            "episodes": figures.get("episodes"), "stream": stream.get("name", "recall"),
        })
    return rows


def block_end_success(summary: dict[str, Any]) -> dict[str, float]:
    """task -> its entry of R at the end of the last block that trained it (R's diagonal on a stream
    that visits each task once): ``R[k][j]`` with ``R_block_tasks[k]`` the task of column ``j``."""
    names, matrix, block_tasks = summary.get("task_names") or [], summary.get("R") or [], summary.get("R_block_tasks") or []
    out: dict[str, float] = {}
    for row, task in zip(matrix, block_tasks):
        if task in names:
            out[task] = _num(row[names.index(task)])
    return out


def seed_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) over seeds: 95% Student-t (low = high = nan with one seed)."""
    from lifelong.tracking.confidence import mean_ci_over_seeds

    return mean_ci_over_seeds(values)


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
            mean, low, high = seed_ci([r["pairs_recalled"] for r in vals])
            final, _, _ = seed_ci([r["final_pairs_recalled"] for r in vals])
            if not math.isfinite(mean):
                cells.append("-")
                continue
            band = f" [{max(low, 0.0):.2f}, {min(high, p):.2f}]" if math.isfinite(low) else ""
            cells.append(f"{mean:.2f}{band} / {p} (end {final:.2f})")
        lines.append("| " + " | ".join([mixer, str(len({r["seed"] for r in mine})), *cells]) + " |")
    chance = next((r["chance"] for r in records if math.isfinite(r["chance"])), math.nan)
    return ("\n".join(lines) + f"\n\nCells: pairs recalled at the end of the task's own block (its entry of R: "
            f"probe success, learning off, from the lifetime's memory, x queries), mean [95% t-interval over seeds] / pairs "
            f"stored; end: the same at the end of the run, after the larger tasks. "
            f"Chance: {chance:.3f} x the queries.\n")


def plot(records: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mixer in [m for m in MIXERS if any(r["mixer"] == m for r in records)]:
        points: dict[int, list[float]] = {}
        for r in records:
            if r["mixer"] == mixer and math.isfinite(r["block_success"]):
                points.setdefault(r["gap"], []).append(r["block_success"])
        gaps = sorted(points)
        stats = [seed_ci(points[g]) for g in gaps]
        line, = ax.plot(gaps, [m for m, _, _ in stats], "--" if mixer.startswith("lola") else "-", marker="o",
                        label=mixer)
        if all(math.isfinite(lo) for _, lo, _ in stats):
            # a fraction: the t-interval clipped to [0, 1], as the table clips pairs to [0, P]
            ax.fill_between(gaps, [max(lo, 0.0) for _, lo, _ in stats], [min(hi, 1.0) for _, _, hi in stats],
                            color=line.get_color(), alpha=0.15)
    chance = next((r["chance"] for r in records if math.isfinite(r["chance"])), math.nan)
    if math.isfinite(chance):
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    tasks = sorted({(r["gap"], r["num_pairs"]) for r in records})
    ax.set_xticks([g for g, _ in tasks], [f"{g}\nP={p}" for g, p in tasks])
    ax.set_xlabel("gap between writes and queries (pairs stored)")
    ax.set_ylabel("fraction of queries recalled (end of its block)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    streams = sorted({str(r.get("stream", "recall")) for r in records})
    ax.set_title(f"associative recall inside RL (stream={', '.join(streams)})")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if not args.report_only and importlib.util.find_spec("lifelong") is None:
        sys.exit(f"{sys.executable} cannot import lifelong: run this script with the project's venv "
                 "(`pip install -e .` there)")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.report_only:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        pending = []
        for mixer in args.mixers:
            for seed in args.seeds:
                run_dir = args.out / f"{mixer}_seed{seed}"
                if finished(run_dir):
                    print(f"{mixer} seed {seed}: finished before, kept", flush=True)
                else:
                    pending.append((mixer, seed, run_dir))

        def one_run(job: tuple[str, int, Path]) -> None:
            mixer, seed, run_dir = job
            start = time.perf_counter()
            try:
                done = subprocess.run(run_command(args, mixer, seed, run_dir), env=env, capture_output=True,
                                      text=True, timeout=args.timeout)
                status = "ok" if done.returncode == 0 else f"failed ({done.returncode}): {done.stderr.strip()[-300:]}"
            except subprocess.TimeoutExpired:
                status = f"stopped after --timeout {args.timeout:.0f} s (raise it for this stream's budget)"
            print(f"[{time.perf_counter() - t0:6.0f} s] {mixer} seed {seed}: {status} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one_run, pending))
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
