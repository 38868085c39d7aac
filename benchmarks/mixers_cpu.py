"""CPU speed of every recurrence family: chunked torch form vs the naive loop, and ``step`` latency.

    python benchmarks/mixers_cpu.py                 # B=4, H=4, D=64, T=256,1024,4096; fwd+bwd
    python benchmarks/mixers_cpu.py --T 256 1024 --naive-max-T 1024 --threads 2
    python benchmarks/mixers_cpu.py --steps-only --H 4 --D 32 --mixers gated_deltanet lola --step-rounds 9 --step-threads 1
                                                    # acting: LoLA's step against Gated DeltaNet's, one run
    python benchmarks/mixers_cpu.py --steps-only ... --compile      # the same through torch.compile (compile=true)

Prints one table per run (family, T, chunked ms, naive ms, speed-up) and the per-token ``step``
latency of each mixer layer for a batch of 8 lifetimes (d_model = H * D).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table


Inputs = dict[str, torch.Tensor]


def _qkv(B: int, T: int, H: int, D: int) -> Inputs:
    q = torch.randn(B, T, H, D)
    k = F.normalize(torch.randn(B, T, H, D), dim=-1)
    return {"q": q, "k": k, "v": torch.randn(B, T, H, D)}


def _decay(B: int, T: int, H: int, *extra: int) -> torch.Tensor:
    return F.logsigmoid(torch.randn(B, T, H, *extra) + 4.0)


def families() -> dict[str, tuple[Callable, Callable, Callable[[int, int, int, int], tuple[Inputs, dict]]]]:
    """name -> (chunked op, naive op, input builder returning (tensors, constant kwargs))."""
    from lifelong.kernels.delta_rule import gated_delta_rule_chunk, gated_delta_rule_reference
    from lifelong.kernels.gated_linear.chunk import gla_chunk, linear_attn_chunk, simple_gla_chunk
    from lifelong.kernels.gated_linear.reference import gla_reference, linear_attn_reference, simple_gla_reference
    from lifelong.kernels.palimpsa import palimpsa_chunk, palimpsa_reference

    def gated(B, T, H, D):
        return {**_qkv(B, T, H, D), "g": _decay(B, T, H)}, {}

    def per_channel(B, T, H, D):
        return {**_qkv(B, T, H, D), "g": _decay(B, T, H, D)}, {}

    def linear(B, T, H, D):
        x = _qkv(B, T, H, D)
        return {"q": F.elu(x["q"]) + 1, "k": F.elu(x["k"]) + 1, "v": x["v"]}, {}

    def delta(B, T, H, D):
        return {**_qkv(B, T, H, D), "g": _decay(B, T, H), "beta": torch.rand(B, T, H)}, {}

    def palimpsa(B, T, H, D):
        return {**_qkv(B, T, H, D), "g": _decay(B, T, H), "b": torch.rand(B, T, H, D)}, {"prior_precision": 1.0, "chunk_size": 16}

    table = {
        "linear_attn": (linear_attn_chunk, linear_attn_reference, linear),
        "simple_gla (mamba2)": (simple_gla_chunk, simple_gla_reference, gated),
        "gla": (gla_chunk, gla_reference, per_channel),
        "gated_delta_rule": (gated_delta_rule_chunk, gated_delta_rule_reference, delta),
        "palimpsa": (palimpsa_chunk, palimpsa_reference, palimpsa),
    }
    from lifelong.kernels.attention.chunk import lola_attn_chunk, sliding_window_attn_chunk, softmax_attn_chunk
    from lifelong.kernels.attention.reference import (
        lola_attn_reference,
        sliding_window_attn_reference,
        softmax_attn_reference,
    )
    from lifelong.kernels.ttt import ttt_linear_chunk, ttt_linear_reference

    def ttt(B, T, H, D):
        consts = {"ln_weight": torch.ones(H, D), "ln_bias": torch.zeros(H, D)}
        return {**_qkv(B, T, H, D), "eta": torch.rand(B, T, H) * 0.1}, consts

    def attention(**consts):
        return lambda B, T, H, D: (_qkv(B, T, H, D), consts)

    table["ttt_linear"] = (ttt_linear_chunk, ttt_linear_reference, ttt)
    table["softmax_attn"] = (softmax_attn_chunk, softmax_attn_reference, attention())
    table["sliding_window (64)"] = (sliding_window_attn_chunk, sliding_window_attn_reference, attention(window=64))
    def lola(B, T, H, D):
        return _qkv(B, T, H, D), {"window": 16, "cache_size": 16, "gate": torch.full((H,), 0.5)}

    table["lola (16, 16)"] = (lola_attn_chunk, lola_attn_reference, lola)
    return table


def time_fwd_bwd(op: Callable, tensors: Inputs, consts: dict, repeats: int) -> float:
    """Median milliseconds of forward + backward (loss = sum of outputs) from a zero state."""
    times = []
    for _ in range(repeats + 1):
        leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
        start = time.perf_counter()
        o, _ = op(*leaves.values(), None, **consts)
        o.sum().backward()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def time_layer_steps(batch: int, d_model: int, num_heads: int, repeats: int = 200, names: list[str] | None = None,
                     rounds: int = 1, compile: bool = False) -> dict[str, float]:
    """Microseconds per ``step`` of each configured mixer layer (inference mode, as when acting), the
    median over ``rounds`` rounds that visit the mixers in turn (drift hits all alike). ``compile``:
    each layer's step through ``torch.compile(dynamic=False)``, as ``compile=true`` compiles the agent's
    acting step (compiled during the warm-up, not timed)."""
    from lifelong.memory_layers.registry import available_mixers, build_mixer, load_memory_config

    layers = {}
    for name in names or available_mixers():
        cfg = load_memory_config(name)
        cfg.num_heads = num_heads
        mixer = build_mixer(cfg, d_model).eval()
        state = mixer.init_state(batch, "cpu")
        x = torch.randn(batch, d_model)
        step = torch.compile(mixer.step, dynamic=False) if compile else mixer.step
        with torch.inference_mode():
            for _ in range(64):  # past LoLA's window and cache: evictions every step
                _, state = step(x, state)
        layers[name] = (step, state, x)
    times: dict[str, list[float]] = {name: [] for name in layers}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (step, state, x) in layers.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    _, state = step(x, state)
                times[name].append((time.perf_counter() - start) / repeats * 1e6)
                layers[name] = (step, state, x)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--D", type=int, default=64)
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--naive-max-T", type=int, default=4096, help="skip the naive loop above this T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="family names to run")
    parser.add_argument("--steps-only", action="store_true", help="only the layer step latencies (acting)")
    parser.add_argument("--mixers", nargs="*", default=None, help="mixers for the step table (default: all)")
    parser.add_argument("--step-rounds", type=int, default=1, help="interleaved rounds of the step table (median)")
    parser.add_argument("--step-threads", type=int, default=None, help="torch threads of the step table (default: --threads)")
    parser.add_argument("--compile", action="store_true", help="the step table through torch.compile (as compile=true acts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console()

    if not args.steps_only:
        run_sequence_table(args, console)
    if args.step_threads:
        torch.set_num_threads(args.step_threads)
    steps = Table(title=f"layer step latency{' (torch.compile)' if args.compile else ''}, batch 8, "
                        f"d_model={args.H * args.D}, {args.H} heads, "
                        f"{torch.get_num_threads()} threads (us; median of {args.step_rounds} rounds)")
    steps.add_column("memory")
    steps.add_column("us / step", justify="right")
    steps.add_column("/ gated_deltanet", justify="right")
    micros = time_layer_steps(8, args.H * args.D, args.H, names=args.mixers, rounds=args.step_rounds,
                              compile=args.compile)
    for name, t in micros.items():
        ratio = f"{t / micros['gated_deltanet']:.2f}" if "gated_deltanet" in micros else "-"
        steps.add_row(name, f"{t:.0f}", ratio)
    console.print(steps)


def run_sequence_table(args: argparse.Namespace, console: Console) -> None:
    table = Table(title=f"fwd+bwd on CPU, B={args.B} H={args.H} D={args.D}, {args.threads} threads (ms)")
    for column in ("family", "T", "chunked", "naive", "speed-up"):
        table.add_column(column, justify="right")
    for name, (chunked, naive, build) in families().items():
        if args.only and name.split()[0] not in args.only:
            continue
        for T in args.T:
            tensors, consts = build(args.B, T, args.H, args.D)
            t_chunk = time_fwd_bwd(chunked, tensors, consts, args.repeats)
            if T <= args.naive_max_T:
                loop_consts = {k: v for k, v in consts.items() if k != "chunk_size"}  # a loop has no chunks
                t_naive = time_fwd_bwd(naive, tensors, loop_consts, max(1, args.repeats - 2))
                table.add_row(name, str(T), f"{t_chunk:.1f}", f"{t_naive:.1f}", f"{t_naive / t_chunk:.1f}x")
            else:
                table.add_row(name, str(T), f"{t_chunk:.1f}", "-", "-")
            console.print(f"  {name} T={T} done", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
