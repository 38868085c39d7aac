"""CPU speed of every recurrence family: chunked torch form vs the naive loop, and ``step`` latency.

    python benchmarks/mixers_cpu.py                 # B=4, H=4, D=64, T=256,1024,4096; fwd+bwd
    python benchmarks/mixers_cpu.py --T 256 1024 --naive-max-T 1024 --threads 2

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


def time_layer_steps(batch: int, d_model: int, num_heads: int, repeats: int = 200) -> dict[str, float]:
    """Microseconds per ``step`` of each configured mixer layer (inference mode)."""
    from lifelong.memory_layers.registry import available_mixers, build_mixer, load_memory_config

    result = {}
    for name in available_mixers():
        cfg = load_memory_config(name)
        cfg.num_heads = num_heads
        mixer = build_mixer(cfg, d_model).eval()
        state = mixer.init_state(batch, "cpu")
        x = torch.randn(batch, d_model)
        with torch.inference_mode():
            for _ in range(20):
                _, state = mixer.step(x, state)
            start = time.perf_counter()
            for _ in range(repeats):
                _, state = mixer.step(x, state)
        result[name] = (time.perf_counter() - start) / repeats * 1e6
    return result


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console()

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

    steps = Table(title=f"layer step latency, batch 8, d_model={args.H * args.D}, {args.H} heads (us)")
    steps.add_column("memory")
    steps.add_column("us / step", justify="right")
    for name, micros in time_layer_steps(8, args.H * args.D, args.H).items():
        steps.add_row(name, f"{micros:.0f}")
    console.print(steps)


if __name__ == "__main__":
    main()
