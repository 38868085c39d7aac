"""Constant cost over a lifetime: steps/s and resident memory of each parametric mixer, 10^4 to 10^6 steps.

Each mixer runs one lifetime stream (``--stream``, ``--num-envs`` lifetimes, learning on: the rollout
collector and the PPO learner of ``benchmarks/throughput.py``) for ``--steps`` env steps (summed over
the lifetimes), in its own process so that its resident memory (RSS) is its own. At 10^4, 10^5 and
10^6 steps (the first segment end at or past each) it reports, for the window since the previous
mark: the steps/s, the CPU time per step, the wall time per step split into the env's step, acting
and learning, and the episodes ended per 1,000 steps; and the process RSS and the bytes of the memory
state. Acting + learning is the mixer's own cost; the env's share moves with the episode lengths
(resets cost more than steps), which change as the agent learns. Every configs/memory/*.yaml but
``softmax`` and ``sliding_window`` is parametric (its state has a fixed size); ``softmax`` runs with
its cache cap off (``max_cache=null``) to show a state, a cost and an RSS that grow, for
``--growing-steps`` (10^5 by default: its state alone would pass 16 GB at 10^6 steps).

The windows of one lifetime are measured hours apart on a shared machine, whose speed moves by tens
of percent within minutes, and they hold different agents (its episodes shorten as it learns). So each
mark's agent is also **re-timed side by side** (``--retime-rounds``, 5 by default): at each mark the
worker keeps a snapshot of the loop (the agent's weights, the learner's optimizer and RNG, the acting
memory, the sampling RNG, and every env's position and RNG: what a checkpoint holds); after the
lifetime it restores every mark's snapshot into a loop of its own, runs one untimed segment in each,
then times ``--retime-segments`` segments of each, **interleaved**: one segment of every mark's agent
in turn (the order rotated at each segment), then the next. Every round of a mark repeats the same
work bit for bit, so the agents at 10^4 and at 10^6 steps are compared on their own next segments,
timed within a few seconds of each other under the same load. The ratio to the first mark is taken
within each round; the table gives its median and range. (Until 2026-11-29 a round timed all of one
mark's segments, then the next mark's: the agents' windows were a minute apart, and a round's ratios
spread by +-10%.)

With ``--json``, a mixer already in the file (a row at its last mark, and its re-timing when asked
for) is not run again: a long run that was stopped continues where it was.

    python benchmarks/constant_cost.py --steps 100000                 # every parametric mixer + softmax
    python benchmarks/constant_cost.py --steps 1000000 --mixers gated_deltanet
    nice -n 10 python benchmarks/constant_cost.py --steps 100000 --json cc.json > cc.log 2>&1 &
    python benchmarks/constant_cost.py --report cc_a.json cc_b.json --plot cost.png   # tables of finished runs
    python benchmarks/constant_cost.py --steps 1000000 --mixers gla --snapshots snaps   # keep the marks' snapshots
    python benchmarks/constant_cost.py --retime-only --snapshots snaps --mixers gla --retime-rounds 20  # later, quiet

Progress lines (every ``--progress-every`` steps) go to stderr; the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/anchors.py

UNCAPPED_SOFTMAX = "softmax(max_cache=null)"
NON_PARAMETRIC = ("softmax", "sliding_window")


def parametric_mixers() -> list[str]:
    from lifelong.memory_layers.registry import available_mixers

    return [m for m in available_mixers() if m not in NON_PARAMETRIC]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def marks_up_to(steps: int) -> list[int]:
    marks = [m for m in (10**4, 10**5, 10**6, 10**7) if m < steps]
    return [*marks, steps]


def steps_for(name: str, args: argparse.Namespace) -> int:
    """Env steps for ``name``: ``--steps``, or at most ``--growing-steps`` for the uncapped softmax."""
    return min(args.steps, args.growing_steps) if name == UNCAPPED_SOFTMAX else args.steps


def finished_rows(path: str | None, args: argparse.Namespace) -> list[dict]:
    """The rows of ``path`` (an earlier ``--json``) whose mixer reached its last mark (and, with
    ``--retime-rounds``, finished its last round of re-timing); [] when none."""
    if not path or not Path(path).exists():
        return []
    rows = json.loads(Path(path).read_text())
    reached = {r["mixer"] for r in rows if "error" not in r and r.get("mark") == steps_for(r["mixer"], args)}
    retimed = {r["mixer"] for r in rows if r.get("retime_round") == args.retime_rounds - 1}
    done = reached & retimed if args.retime_rounds > 0 else reached
    return [r for r in rows if r["mixer"] in done]


def loop_state(loop) -> dict:
    """Everything the loop's next segments depend on, live (not copied): the agent's weights, the
    learner's state (optimizer, RNG) and the collector's (acting memory, sampling RNG, last tokens,
    every env's position and RNG)."""
    loop.finish()
    return {"agent": loop.agent.state_dict(), "learner": loop.learner.state_dict(),
            "collector": loop.collector.state_dict()}


def restore(loop, snap: dict) -> None:
    """Put the loop back to ``snap``: the segments that follow repeat those that followed the snapshot."""
    loop.finish()
    loop.agent.load_state_dict(snap["agent"])
    loop.learner.load_state_dict(snap["learner"])
    loop.collector.load_state_dict(snap["collector"])


def save_snapshot(loop, path: Path) -> Path:
    """:func:`loop_state` written to ``path`` (held on disk, so that the process's RSS at later marks is
    the lifetime's own; about 7-8 MiB for the default agent, mostly the optimizer's moments)."""
    import torch

    torch.save(loop_state(loop), path)
    return path


def load_snapshot(path: Path) -> dict:
    """A snapshot :func:`save_snapshot` wrote, for :func:`restore`."""
    import torch

    return torch.load(path, weights_only=False)  # our own file: the envs are pickled objects


def ms_per_step(env_s: float, collect_s: float, learn_s: float, steps: int) -> dict[str, float]:
    """Wall ms per env step of a window: the env's own step (resets included; ``env_s``, part of
    ``collect_s``), acting (the rest of collecting: the memory's fused step, the heads, conversions)
    and learning (the chunked form, PPO)."""
    return {"env": 1e3 * env_s / steps, "acting": 1e3 * (collect_s - env_s) / steps, "learning": 1e3 * learn_s / steps}


def saved_snapshots(directory: Path, name: str) -> dict[int, Path]:
    """The snapshots ``directory`` holds for mixer ``name``: {mark: path}."""
    found = {int(path.stem.rsplit("-", 1)[1]): path for path in directory.glob(f"{name}-*.pt")}
    if not found:
        raise SystemExit(f"no snapshots of {name!r} in {directory}: run the lifetime with --snapshots {directory} first")
    return dict(sorted(found.items()))


def timed_segment(loop) -> dict[str, float]:
    """One segment of ``loop`` and its update, waited for (so that an overlapped update is charged to
    the segment it learns from): CPU and wall seconds, the wall split (collect, learn, env) and the
    episodes that ended."""
    env0 = loop.env_seconds
    cpu0, wall0 = time.process_time(), time.perf_counter()
    collect_s, learn_s = loop.segment()
    t = time.perf_counter()
    loop.finish()
    learn_s += time.perf_counter() - t
    return {"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0, "collect": collect_s,
            "learn": learn_s, "env": loop.env_seconds - env0, "episodes": float(loop.buffer.done.sum())}


def interleaved_order(marks: list[int], rnd: int, segment: int) -> list[int]:
    """The marks in the order their ``segment``-th segments run in round ``rnd``: rotated by one at
    every segment (and every round), so that no mark always runs first or after the same one."""
    shift = (rnd + segment) % len(marks)
    return marks[shift:] + marks[:shift]


def retime(loops: dict[int, Any], name: str, snapshots: dict[int, Path], args: argparse.Namespace) -> None:
    """Time ``args.retime_segments`` segments from each mark's snapshot, in ``args.retime_rounds``
    rounds; one JSON line per mark and round. ``loops`` holds one loop per mark. A round restores every
    mark's loop from its snapshot, runs one untimed segment in each, then **interleaves** the timed
    segments: one segment of every mark's agent (:func:`interleaved_order`), then the next, so the
    agents' segments of a round are at most a few seconds apart and a drift of the machine's speed
    within the round hits them alike."""
    marks = sorted(snapshots)
    for rnd in range(args.retime_rounds):
        for mark in marks:
            restore(loops[mark], load_snapshot(snapshots[mark]))
            loops[mark].segment()  # untimed: caches, and the learner's first update from this snapshot
            loops[mark].finish()
        sums = {mark: dict.fromkeys(("cpu", "wall", "collect", "learn", "env", "episodes"), 0.0) for mark in marks}
        for segment in range(args.retime_segments):
            for mark in interleaved_order(marks, rnd, segment):
                for key, value in timed_segment(loops[mark]).items():
                    sums[mark][key] += value
        for mark in marks:
            total, steps = sums[mark], args.retime_segments * loops[mark].steps_per_segment
            print(json.dumps({"mixer": name, "retime_of": mark, "retime_round": rnd, "segments": args.retime_segments,
                              "interleaved": True,
                              "cpu_ms_per_step": 1e3 * total["cpu"] / steps,
                              "steps_per_s": steps / total["wall"],
                              "ms_per_step": ms_per_step(total["env"], total["collect"], total["learn"], steps),
                              "episodes_per_1k": 1e3 * total["episodes"] / steps}), flush=True)
        print(f"[{name}] re-timed round {rnd + 1}/{args.retime_rounds} (agents at {', '.join(f'{m:,}' for m in marks)} "
              "steps)", file=sys.stderr, flush=True)


def make_loop(args: argparse.Namespace, name: str) -> Any:
    """The benchmark's loop (``benchmarks/throughput.py``'s) for mixer ``name`` with the run's settings."""
    from throughput import Loop

    mixer, overrides = (("softmax", {"max_cache": None}) if name == UNCAPPED_SOFTMAX else (name, None))
    return Loop(num_envs=args.num_envs, d_model=args.d_model, layers=args.layers, memory=mixer, segment=args.segment,
                epochs=args.epochs, memory_overrides=overrides, stream=args.stream, overlap=args.overlap)


def worker(args: argparse.Namespace) -> None:
    """One mixer's lifetime and the re-timing of its marks' agents (or, with ``--retime-only``, the
    re-timing of an earlier run's snapshots); prints one JSON line per mark and per round on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    name = args.worker
    if name.startswith("lola"):  # LoLA's C++ acting step: its one-off build must not count in the first window
        from lifelong.kernels.attention.step_cpp import extension
        extension()
    loop = make_loop(args, name)
    with tempfile.TemporaryDirectory(prefix="constant_cost_") as tmp:
        directory = Path(args.snapshots) if args.snapshots else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        snapshots = (saved_snapshots(directory, name) if args.retime_only
                     else run_lifetime(loop, name, directory, args))
        if args.retime_rounds > 0:
            marks = sorted(snapshots)  # the lifetime's loop re-times the first mark; one more loop per other mark
            loops = {mark: loop if i == 0 else make_loop(args, name) for i, mark in enumerate(marks)}
            retime(loops, name, snapshots, args)


def run_lifetime(loop, name: str, directory: Path, args: argparse.Namespace) -> dict[int, Path]:
    """``loop``'s lifetime to the last mark; one JSON line per mark; the snapshots written at the marks
    (to ``directory``, when re-timing is asked for): {mark: path}."""
    from lifelong.memory_layers.state import state_nbytes

    marks = marks_up_to(steps_for(name, args))
    steps, last_steps, next_progress = 0, 0, args.progress_every
    start = last = time.perf_counter()
    last_cpu = time.process_time()
    import warnings

    warnings.simplefilter("ignore")  # the uncapped softmax never warns; others have nothing to say here
    collect_s = learn_s = 0.0  # this window's, wall seconds
    episodes = 0
    snapshots: dict[int, Path] = {}  # mark -> the loop's state there, for the re-timing
    while marks:
        dt_collect, dt_learn = loop.segment()
        collect_s += dt_collect
        learn_s += dt_learn
        episodes += int(loop.buffer.done.sum())
        steps += loop.steps_per_segment
        now = time.perf_counter()
        if steps >= next_progress:
            print(f"[{name}] {steps:>9,d} steps  {steps / (now - start):7.1f} steps/s overall  "
                  f"RSS {rss_bytes() / 2**20:7.1f} MiB  {now - start:7.0f} s", file=sys.stderr, flush=True)
            next_progress += args.progress_every
        if steps >= marks[0]:
            t = time.perf_counter()
            loop.finish()
            now = time.perf_counter()
            learn_s += now - t
            cpu = time.process_time()
            window = steps - last_steps
            print(json.dumps({"mixer": name, "mark": marks[0], "steps": steps,
                              "window_steps_per_s": window / (now - last),
                              "window_ms_per_step": ms_per_step(loop.env_seconds, collect_s, learn_s, window),
                              # episodes ended per 1,000 env steps: resets cost more than steps, so a
                              # window of short episodes costs more per step for the same mixer
                              "window_episodes_per_1k": 1e3 * episodes / window,
                              # CPU time per env step: what the mixer costs, less sensitive than steps/s
                              # to the other jobs of a shared machine
                              "window_cpu_ms_per_step": 1e3 * (cpu - last_cpu) / window,
                              "rss_mib": rss_bytes() / 2**20,
                              "state_mib": state_nbytes(loop.collector.memory) / 2**20,
                              "wall_s": now - start}), flush=True)
            if args.retime_rounds > 0 or args.snapshots:
                snapshots[marks[0]] = save_snapshot(loop, directory / f"{name}-{marks[0]}.pt")
            last, last_steps, last_cpu = time.perf_counter(), steps, time.process_time()
            collect_s = learn_s = loop.env_seconds = 0.0
            episodes = 0
            while marks and steps >= marks[0]:
                marks.pop(0)
    return snapshots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10**6, help="env steps per mixer, summed over the lifetimes")
    p.add_argument("--growing-steps", type=int, default=10**5,
                   help=f"env steps for {UNCAPPED_SOFTMAX!r} (its state grows with them)")
    p.add_argument("--mixers", nargs="*", default=None,
                   help=f"default: every parametric mixer and {UNCAPPED_SOFTMAX!r}")
    p.add_argument("--stream", default="smoke", help="configs/stream/<name>.yaml (default: smoke, DoorKey A/B/A)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--segment", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overlap", action="store_true", help="learn on a second thread (see benchmarks/throughput.py)")
    p.add_argument("--progress-every", type=int, default=10_000, help="env steps between progress lines (stderr)")
    p.add_argument("--retime-rounds", type=int, default=5,
                   help="rounds of re-timing each mark's agent side by side after the lifetime (0: none)")
    p.add_argument("--retime-segments", type=int, default=8, help="timed segments per mark and round")
    p.add_argument("--snapshots", default=None, metavar="DIR",
                   help="keep each mark's snapshot in DIR (<mixer>-<mark>.pt; default: a temporary directory)")
    p.add_argument("--retime-only", action="store_true",
                   help="run no lifetime: re-time the snapshots an earlier run left in --snapshots DIR")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--report", nargs="+", default=None, metavar="JSON",
                   help="run nothing: print the tables of these --json files (rows of several runs, merged)")
    p.add_argument("--plot", default=None, help="also draw the re-timed cost and the RSS against steps (a PNG)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.retime_only and not args.snapshots:
        p.error("--retime-only re-times the snapshots of an earlier run: pass its --snapshots DIR")
    if args.report:
        rows = [r for path in args.report for r in json.loads(Path(path).read_text())]
        print_table(rows, args)
        if args.plot:
            print(f"figure: {plot(rows, Path(args.plot))}")
        return

    mixers = args.mixers if args.mixers else [*parametric_mixers(), UNCAPPED_SOFTMAX]
    rows = [] if args.retime_only else finished_rows(args.json, args)
    forwarded = [a for a in sys.argv[1:]]
    for name in mixers:
        if any(r["mixer"] == name for r in rows):
            print(f"== {name}: in {args.json} already", file=sys.stderr, flush=True)
            continue
        print(f"== {name}: {steps_for(name, args):,} steps", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", name]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(f"[{name}] failed with exit code {proc.returncode}", file=sys.stderr, flush=True)
            got.append({"mixer": name, "error": f"exit code {proc.returncode}"})
        rows += got
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows, args)
    if args.plot:
        print(f"figure: {plot(rows, Path(args.plot))}")


def plot(rows: list[dict], path: Path) -> Path:
    """Two panels: each mixer's re-timed CPU time per step against its agent's age, over the first
    mark's (median and min-max over the rounds, the +-5% band shaded); the process RSS at each mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cost, ax_rss) = plt.subplots(1, 2, figsize=(12, 4.5))
    retimed = [r for r in rows if "retime_of" in r]
    for mixer in dict.fromkeys(r["mixer"] for r in retimed):
        by = {(r["retime_of"], r["retime_round"]): r["cpu_ms_per_step"] for r in retimed if r["mixer"] == mixer}
        marks = sorted({m for m, _ in by})
        ratios = [[by[m, rnd] / by[marks[0], rnd] for (mm, rnd) in by if mm == m and (marks[0], rnd) in by]
                  for m in marks]
        mid = [statistics.median(x) for x in ratios]
        err = [[y - min(x) for y, x in zip(mid, ratios)], [max(x) - y for y, x in zip(mid, ratios)]]
        ax_cost.errorbar(marks, mid, yerr=err, marker="o", capsize=3, label=mixer)
    ax_cost.axhspan(0.95, 1.05, color="grey", alpha=0.15, lw=0)
    ax_cost.set(xscale="log", xlabel="the agent's age (env steps of its lifetime)",
                ylabel="CPU time per step / at the first mark",
                title="re-timed side by side (median, min-max over rounds)")
    ax_cost.legend(fontsize=7)
    marked = [r for r in rows if "mark" in r and "error" not in r]
    for mixer in dict.fromkeys(r["mixer"] for r in marked):
        mine = [r for r in marked if r["mixer"] == mixer]
        ax_rss.plot([r["steps"] for r in mine], [r["rss_mib"] for r in mine], marker="o", label=mixer)
    ax_rss.set(xscale="log", xlabel="env steps", ylabel="process RSS (MiB)", title="resident memory", ylim=(0, None))
    ax_rss.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """The rows, with each window's CPU time per step, and its acting + learning time per step (the
    loop without the env), relative to the mixer's first window (10^4)."""
    settings = ("the settings of the runs that wrote the files" if args.report else
                f"stream {args.stream}, {args.num_envs} lifetimes, segment {args.segment}, {args.epochs} epochs, "
                f"d_model {args.d_model} x {args.layers} layers, {args.threads} threads")
    print(f"\nconstant cost: {settings}; "
          "per window ending at the mark: steps/s, CPU ms per step, acting + learning ms per step (the "
          "loop less the env's step), episodes per 1k steps; 'vs first': over the mixer's first window")
    print(f"{'mixer':<26} {'steps':>9} {'steps/s':>9} {'cpu ms/step':>12} {'vs first':>9} {'act+learn':>10} "
          f"{'vs first':>9} {'eps/1k':>7} {'RSS MiB':>9} {'state MiB':>10}")
    first: dict[str, tuple[float | None, float | None]] = {}

    def ratio(x: float | None, base: float | None) -> str:
        return "-" if x is None or not base else f"{x / base:.3f}"

    for r in rows:
        if "error" in r:
            print(f"{r['mixer']:<26} {r['error']}")
            continue
        if "retime_of" in r:
            continue
        cpu = r.get("window_cpu_ms_per_step")
        split = r.get("window_ms_per_step")
        model = split["acting"] + split["learning"] if split else None
        base_cpu, base_model = first.setdefault(r["mixer"], (cpu, model))
        eps = r.get("window_episodes_per_1k")
        print(f"{r['mixer']:<26} {r['steps']:>9,d} {r['window_steps_per_s']:>9.1f} "
              f"{'-' if cpu is None else f'{cpu:.3f}':>12} {ratio(cpu, base_cpu):>9} "
              f"{'-' if model is None else f'{model:.3f}':>10} {ratio(model, base_model):>9} "
              f"{'-' if eps is None else f'{eps:.1f}':>7} {r['rss_mib']:>9.1f} {r['state_mib']:>10.2f}")

    print_retime_table([r for r in rows if "retime_of" in r], args)


def print_retime_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Each mark's agent re-timed side by side: median CPU ms per step over the rounds, and the
    median (min-max) over the rounds of its ratio to the first mark's agent and to the previous mark's
    agent in the same round."""
    if not rows:
        return
    per_round = "" if getattr(args, "report", None) else f"{args.retime_segments} segments per mark and round; "
    print(f"\nre-timed side by side: {per_round}median over the rounds "
          "(ratio to the first mark taken within each round: median, min-max)")
    print(f"{'mixer':<26} {'agent at':>10} {'rounds':>6} {'cpu ms/step':>12} {'cpu vs first':>22} "
          f"{'cpu vs previous':>22} {'act+learn':>10} {'act+learn vs first':>22} {'eps/1k':>7}")

    def act_learn(r: dict) -> float:
        return r["ms_per_step"]["acting"] + r["ms_per_step"]["learning"]

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        mine = [r for r in rows if r["mixer"] == mixer]
        marks = sorted({r["retime_of"] for r in mine})
        by = {(r["retime_of"], r["retime_round"]): r for r in mine}
        for i, mark in enumerate(marks):
            rounds = sorted(rnd for (m, rnd) in by if m == mark)
            both = [rnd for rnd in rounds if (marks[0], rnd) in by]
            cpu_ratio = [by[mark, rnd]["cpu_ms_per_step"] / by[marks[0], rnd]["cpu_ms_per_step"] for rnd in both]
            previous = marks[max(i - 1, 0)]
            cpu_step = [by[mark, rnd]["cpu_ms_per_step"] / by[previous, rnd]["cpu_ms_per_step"]
                        for rnd in rounds if (previous, rnd) in by]
            model_ratio = [act_learn(by[mark, rnd]) / act_learn(by[marks[0], rnd]) for rnd in both]
            cpu = statistics.median(by[mark, rnd]["cpu_ms_per_step"] for rnd in rounds)
            model = statistics.median(act_learn(by[mark, rnd]) for rnd in rounds)
            eps = statistics.median(by[mark, rnd]["episodes_per_1k"] for rnd in rounds)
            print(f"{mixer:<26} {mark:>10,d} {len(rounds):>6} {cpu:>12.3f} {spread(cpu_ratio):>22} "
                  f"{spread(cpu_step):>22} {model:>10.3f} {spread(model_ratio):>22} {eps:>7.1f}")


if __name__ == "__main__":
    main()
