"""The MQAR capacity grid: every mixer x d_model x seed, a learning rate per mixer from a small sweep.

    nohup nice -n 10 python benchmarks/mqar_grid.py --out runs/mqar_grid > mqar_grid.log 2>&1 &
    lifelong mqar-report runs/mqar_grid/grid          # figures + table (the script also writes them)
    python benchmarks/mqar_grid.py --dry-run          # the plan and its size, nothing run

Each run is one ``lifelong mqar`` (the same settings and ``results.json``, run in-process: no Hydra
start-up per run) on an equal mixture of pair counts at one sequence length (``--pairs``,
``--seq-len``), tested on each pair count apart, as Zoology trains. Two phases, run by ``--workers``
processes of ``--threads`` torch threads each:

1. sweep: every mixer at ``--sweep-d-model`` (default: the middle of ``--d-models``, where a mixer is
   neither sure to fail nor sure to succeed) with each of ``--lrs`` on ``--sweep-seed`` (a seed the
   grid does not report, so the choice is not fitted to the reported test sets); the lr with the
   best mean test accuracy is kept for that mixer (a diverged run counts as 0);
2. grid: every mixer x ``--d-models`` x ``--seeds`` with its lr, into ``OUT/grid/<mixer>_d<d>_seed<s>``.

One value in ``--lrs`` skips the sweep (that lr for every mixer).

A run whose ``results.json`` exists is not run again, so a killed grid continues where it stopped;
the smaller d_model runs go first, so a grid stopped early holds complete d_model slices.
The defaults took 67 min on 2 CPU cores (2026-11-29, README "Results: associative recall"); a
smaller grid: fewer ``--d-models`` or ``--seeds``; the elapsed time is printed and written to
``OUT/grid.json`` with the plan and the chosen learning rates. LoLA runs with selection sre, random
and recency at the same window and cache (``--lola-window``, ``--lola-cache``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

#: mixer label -> (configs/memory/ name, overrides). Palimpsa's chunk size changes only the speed of
#: its chunked scan (the contract suite checks every chunking against the step loop). ``mamba2-state2x``
#: is Mamba2 with half the heads of the others (--num-heads // 2), so its heads are twice as wide and
#: its state, H x (D/H)^2, is twice Mamba2's: exactly Palimpsa's (M and I of Mamba2's shape), the
#: comparison at equal state bytes.
MIXERS: dict[str, tuple[str, dict[str, Any]]] = {
    "softmax": ("softmax", {}),
    "linear_attention": ("linear_attention", {}),
    "mamba2": ("mamba2", {}),
    "mamba2-state2x": ("mamba2", {"label": "mamba2-state2x", "half_heads": True}),
    "gated_deltanet": ("gated_deltanet", {}),
    "deltanet": ("deltanet", {}),
    "palimpsa": ("palimpsa", {"memory.chunk_size": 8}),
    "lola-sre": ("lola", {"memory.selection": "sre"}),
    "lola-random": ("lola", {"memory.selection": "random"}),
    "lola-recency": ("lola", {"memory.selection": "recency"}),
}
#: relative cost per step measured on the development machine (d_model 64, T 64): longest jobs start first
COST = {"softmax": 1.0, "linear_attention": 0.9, "mamba2": 1.3, "mamba2-state2x": 1.4, "gated_deltanet": 1.8,
        "deltanet": 1.8,
        "palimpsa": 3.0, "lola-sre": 3.3, "lola-random": 3.3, "lola-recency": 3.3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/mqar_grid"))
    p.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    p.add_argument("--d-models", nargs="+", type=int, default=[16, 32, 64])
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=2, help="heads of every mixer (Zoology uses 1-2 on MQAR)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--pairs", nargs="+", type=int, default=[4, 8, 16])
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--power-a", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--num-test", type=int, default=500, help="test sequences per pair count")
    p.add_argument("--lrs", nargs="+", type=float, default=[0.003, 0.01])
    p.add_argument("--sweep-seed", type=int, default=100)
    p.add_argument("--sweep-d-model", type=int, default=None,
                   help="d_model of the lr sweep (default: the middle of --d-models)")
    p.add_argument("--lola-window", type=int, default=8)
    p.add_argument("--lola-cache", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--no-report", action="store_true", help="skip writing the figures and table at the end")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def run_overrides(args: argparse.Namespace, mixer: str, d_model: int, seed: int, lr: float) -> tuple[str, dict]:
    memory, extra = MIXERS[mixer]
    extra = dict(extra)
    heads = max(1, args.num_heads // 2) if extra.pop("half_heads", False) else args.num_heads
    overrides = {
        "seed": seed, "device": "cpu", "threads": args.threads, "progress": False, "overwrite": True,
        "task.vocab_size": args.vocab_size, "task.seq_len": args.seq_len,
        "task.num_pairs": sorted(args.pairs) if len(args.pairs) > 1 else args.pairs[0],
        "task.power_a": args.power_a, "model.d_model": d_model, "model.num_layers": args.num_layers,
        "train.steps": args.steps, "train.batch_size": args.batch_size, "train.lr": lr,
        "train.num_train": args.num_train, "train.num_test": args.num_test, "train.eval_every": 0,
        "memory.num_heads": heads, **extra,
    }
    if memory == "lola":
        overrides.update({"memory.window": args.lola_window, "memory.cache_size": args.lola_cache})
    return memory, overrides


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One run (in a worker): train unless results.json exists; a summary line's worth of data."""
    from lifelong.mqar.app import compose, run_in_dir
    from lifelong.mqar.train import RESULTS, TrainingFailed

    run_dir = Path(job["dir"])
    done = run_dir / RESULTS
    if done.exists():
        r = json.loads(done.read_text())
        return {**job, "accuracy": r["accuracy"], "wall_time_s": r["wall_time_s"], "status": "cached"}
    start = time.perf_counter()
    try:
        r = run_in_dir(compose(job["memory"], job["overrides"]), run_dir)
        return {**job, "accuracy": r["accuracy"], "wall_time_s": r["wall_time_s"], "status": "ok"}
    except TrainingFailed as error:
        return {**job, "accuracy": 0.0, "wall_time_s": time.perf_counter() - start, "status": f"diverged: {error}"}


def _run_jobs(jobs: list[dict[str, Any]], workers: int, t0: float, phase: str) -> list[dict[str, Any]]:
    # the smaller models first (a grid stopped early holds whole d_model slices), costliest first within
    jobs = sorted(jobs, key=lambda j: (j["d_model"], -j["cost"]))
    out = []
    if workers <= 1:
        results = map(_job, jobs)
    else:
        pool = mp.get_context("spawn").Pool(workers, maxtasksperchild=None)
        results = pool.imap_unordered(_job, jobs)
    try:
        for i, r in enumerate(results, 1):
            out.append(r)
            print(f"[{time.perf_counter() - t0:7.0f} s] {phase} {i}/{len(jobs)} {r['name']}: accuracy "
                  f"{r['accuracy']:.3f} ({r['wall_time_s']:.0f} s, {r['status']})", flush=True)
    finally:
        if workers > 1:
            pool.close()
            pool.join()
    return out


def sweep_d_model(args: argparse.Namespace) -> int:
    """The d_model the lr sweep runs at: ``--sweep-d-model``, else the middle of the sorted ``--d-models``."""
    if args.sweep_d_model is not None:
        return args.sweep_d_model
    ds = sorted(args.d_models)
    return ds[(len(ds) - 1) // 2]


def plan(args: argparse.Namespace) -> tuple[list[dict], int]:
    sweep_d = sweep_d_model(args)
    sweep = []
    for mixer in args.mixers:
        for lr in args.lrs:
            memory, ov = run_overrides(args, mixer, sweep_d, args.sweep_seed, lr)
            sweep.append({"name": f"{mixer} d={sweep_d} lr={lr:g}", "mixer": mixer, "lr": lr, "memory": memory,
                          "d_model": sweep_d,
                          "overrides": ov, "dir": str(args.out / "sweep" / f"{mixer}_d{sweep_d}_lr{lr:g}"),
                          "cost": COST[mixer] * sweep_d})
    grid_runs = len(args.mixers) * len(args.d_models) * len(args.seeds)
    return sweep, grid_runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    sweep, grid_runs = plan(args)
    sweep = sweep if len(args.lrs) > 1 else []
    print(f"MQAR grid: mixers {', '.join(args.mixers)}; d_model {args.d_models}, {args.num_layers} layers; "
          f"T={args.seq_len}, pairs {args.pairs} (one mixture per run), vocab {args.vocab_size}; "
          f"{args.steps} steps x batch {args.batch_size}; seeds {args.seeds}; "
          + (f"lr sweep {args.lrs} (seed {args.sweep_seed}, d_model {sweep_d_model(args)})" if sweep
             else f"lr {args.lrs[0]:g} (no sweep)")
          + f"; {len(sweep)} sweep + {grid_runs} grid runs "
          f"on {args.workers} workers x {args.threads} threads", flush=True)
    if args.dry_run:
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, float] = {}
    if len(args.lrs) == 1:  # nothing to choose: no sweep
        swept, chosen = [], {mixer: args.lrs[0] for mixer in args.mixers}
    else:
        swept = _run_jobs(sweep, args.workers, t0, "sweep")
        for mixer in args.mixers:
            scores = {r["lr"]: r["accuracy"] for r in swept if r["mixer"] == mixer}
            chosen[mixer] = max(sorted(scores), key=lambda lr: scores[lr])
    print("learning rates: " + ", ".join(f"{m} {lr:g}" for m, lr in chosen.items()), flush=True)
    jobs = []
    for mixer in args.mixers:
        for d in args.d_models:
            for seed in args.seeds:
                memory, ov = run_overrides(args, mixer, d, seed, chosen[mixer])
                jobs.append({"name": f"{mixer} d={d} seed={seed}", "mixer": mixer, "lr": chosen[mixer], "d_model": d,
                             "memory": memory, "overrides": ov,
                             "dir": str(args.out / "grid" / f"{mixer}_d{d}_seed{seed}"), "cost": COST[mixer] * d})
    done = _run_jobs(jobs, args.workers, t0, "grid")
    elapsed = time.perf_counter() - t0
    summary = {
        "argv": vars(args) | {"out": str(args.out)}, "lr_sweep": [{k: r[k] for k in ("mixer", "lr", "accuracy", "status")}
                                                                  for r in swept],
        "chosen_lr": chosen, "runs": [{k: r[k] for k in ("name", "accuracy", "wall_time_s", "status")} for r in done],
        "elapsed_s": elapsed,
    }
    from lifelong.fileio import atomic_write_text

    atomic_write_text(args.out / "grid.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(f"elapsed: {elapsed:.0f} s ({elapsed / 60:.1f} min) for {len(sweep)} sweep + {len(done)} grid runs",
          flush=True)
    if not args.no_report:
        from lifelong.mqar.report import write_report

        report = write_report(args.out / "grid")
        print(report["markdown"])
        print("figures: " + ", ".join(map(str, report["figures"])))
    return summary


if __name__ == "__main__":
    main()
