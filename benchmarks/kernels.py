"""Kernel speed: our Triton kernels vs our chunked torch forms vs flash-linear-attention's chunk ops.

For each op (simple GLA, GLA, linear attention, gated delta rule, delta rule), head dim D and length
T it times the forward and the forward+backward, and reports achieved FLOP rate and memory bandwidth
against the card's peak (model FLOPs of the chunked algorithm, minimal bytes: every input read and
every output written once). DESIGN.md's target: Triton within 1.2x of fla for simple GLA and the gated
delta rule.

    python benchmarks/kernels.py                       # GPU: B=8, H=8, D=64,128, T=1024..16384, bf16
    python benchmarks/kernels.py --ops simple_gla gated_delta_rule --T 4096 --D 128 --json out.json
    python benchmarks/kernels.py --smoke               # CPU, TRITON_INTERPRET=1, tiny: checks it runs

Columns: ms (median), ratio to fla's time, TFLOP/s and GB/s achieved, and their share of the peak.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

if "--smoke" in sys.argv:  # the interpreter must be on before any @triton.jit module is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


OPS = ("simple_gla", "gated_delta_rule", "delta_rule", "gla", "linear_attn")
IMPLS = ("triton", "torch", "fla")
CHUNK = 64

#: (dense bf16 tensor-core FLOP/s, memory bandwidth B/s), from the vendors' data sheets
PEAKS = {
    "H100 PCIe": (756e12, 2.0e12),
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.0e12),
}


@dataclass
class Row:
    op: str
    impl: str
    D: int
    T: int
    mode: str  # "fwd" or "fwd+bwd"
    ms: float | None
    tflops: float | None = None
    gbs: float | None = None
    vs_fla: float | None = None
    note: str = ""


def device_peaks(device: torch.device) -> tuple[str, float | None, float | None]:
    if device.type != "cuda":
        return "cpu", None, None
    name = torch.cuda.get_device_name(device)
    for key, (flops, bw) in PEAKS.items():
        if key in name:
            return name, flops, bw
    return name, None, None


# ---- inputs -------------------------------------------------------------------------------------
def make_inputs(op: str, B: int, T: int, H: int, D: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Leaf tensors (requires_grad) for one op: q, k, v, gates, and an fp32 initial state."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    x = {"state": (rnd(B, H, D, D) * 0.1).float()}
    if op in ("gated_delta_rule", "delta_rule"):
        k = F.normalize(k, dim=-1)
        x["beta"] = torch.rand(B, T, H, generator=gen).to(device).to(dtype)
    if op == "linear_attn":
        q, k = F.elu(q) + 1, F.elu(k) + 1
        x["z"] = (torch.rand(B, H, D, generator=gen).to(device) * 10).float()
    if op in ("simple_gla", "gated_delta_rule"):
        x["g"] = F.logsigmoid(rnd(B, T, H) + 3.0).float()
    if op == "gla":
        x["g"] = F.logsigmoid(rnd(B, T, H, D) + 3.0).float()
    x.update(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype))
    return {name: t.requires_grad_() for name, t in x.items()}


def make_call(op: str, impl: str, x: dict) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A closure running one forward; returns (o, final state) as tensors to back-propagate from."""
    q, k, v, S0 = x["q"], x["k"], x["v"], x["state"]
    g, beta = x.get("g"), x.get("beta")
    if impl == "triton":
        from lifelong.kernels.delta_rule.triton import gated_delta_rule_triton
        from lifelong.kernels.gated_linear.reference import LinearAttnState
        from lifelong.kernels.gated_linear.triton import gla_triton, linear_attn_triton, simple_gla_triton

        table = {
            "simple_gla": lambda: simple_gla_triton(q, k, v, g, S0, chunk_size=CHUNK),
            "gla": lambda: gla_triton(q, k, v, g, S0, chunk_size=CHUNK),
            "gated_delta_rule": lambda: gated_delta_rule_triton(q, k, v, g, beta, S0, chunk_size=CHUNK),
            "delta_rule": lambda: gated_delta_rule_triton(q, k, v, None, beta, S0, chunk_size=CHUNK),
            "linear_attn": lambda: _la(linear_attn_triton(q, k, v, LinearAttnState(S0, x["z"]), chunk_size=CHUNK)),
        }
    elif impl == "torch":
        from lifelong.kernels.delta_rule.chunk import gated_delta_rule_chunk
        from lifelong.kernels.gated_linear.chunk import gla_chunk, linear_attn_chunk, simple_gla_chunk
        from lifelong.kernels.gated_linear.reference import LinearAttnState

        table = {
            "simple_gla": lambda: simple_gla_chunk(q, k, v, g, S0, chunk_size=CHUNK),
            "gla": lambda: gla_chunk(q, k, v, g, S0, chunk_size=CHUNK),
            "gated_delta_rule": lambda: gated_delta_rule_chunk(q, k, v, g, beta, S0, chunk_size=CHUNK),
            "delta_rule": lambda: gated_delta_rule_chunk(q, k, v, None, beta, S0, chunk_size=CHUNK),
            "linear_attn": lambda: _la(linear_attn_chunk(q, k, v, LinearAttnState(S0, x["z"]), chunk_size=CHUNK)),
        }
    else:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
        from fla.ops.linear_attn import chunk_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla

        kw = {"initial_state": S0, "output_final_state": True}
        table = {
            "simple_gla": lambda: chunk_simple_gla(q, k, v, g=g, **kw),
            "gla": lambda: chunk_gla(q, k, v, g, **kw),
            "gated_delta_rule": lambda: chunk_gated_delta_rule(q, k, v, g, beta, **kw),
            "delta_rule": lambda: chunk_delta_rule(q, k, v, beta, **kw),
            "linear_attn": lambda: chunk_linear_attn(q, k, v, normalize=True, **kw),
        }
    return table[op]


def _la(out):
    o, st = out
    return o, st[0]


# ---- cost model ---------------------------------------------------------------------------------
def model_flops(op: str, B: int, T: int, H: int, D: int, bwd: bool, chunk: int = CHUNK) -> float:
    """FLOPs of the chunked algorithm (matmuls only): per token and head, the intra-chunk scores and
    their product with V (2 * C * (K + V)), the state read and update (4 K V); the WY transform of
    the delta rule adds K K^T, W, U and W h (2 C K + 2 C (K + V) + 2 K V). The backward counts as
    twice the forward."""
    K = V = D
    per_token = 2 * chunk * (K + V) + 4 * K * V
    if op in ("gated_delta_rule", "delta_rule"):
        per_token += 2 * chunk * K + 2 * chunk * (K + V) + 2 * K * V
    fwd = B * T * H * per_token
    return fwd * (3 if bwd else 1)


def model_bytes(x: dict, bwd: bool) -> float:
    """Every input read and every output (o, final state) written once; backward adds do, the
    gradients and a re-read of the inputs."""
    ins = sum(t.numel() * t.element_size() for t in x.values())
    out = x["v"].numel() * x["v"].element_size() + x["state"].numel() * 4
    return (ins + out) * (3 if bwd else 1)


# ---- timing -------------------------------------------------------------------------------------
def bench(fn: Callable[[], None], device: torch.device, reps: int) -> float:
    """Median milliseconds of ``fn`` (after a warm-up that also triggers autotuning)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=max(reps, 1) * 20, return_mode="median"))
    fn()
    times = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run_case(op: str, impl: str, B: int, T: int, H: int, D: int, dtype, device, reps: int) -> list[Row]:
    rows = _time_case(op, impl, B, T, H, D, dtype, device, reps)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the case's tensors died with _time_case's frame
    return rows


def _time_case(op: str, impl: str, B: int, T: int, H: int, D: int, dtype, device, reps: int) -> list[Row]:
    x = make_inputs(op, B, T, H, D, dtype, device)
    call = make_call(op, impl, x)
    leaves = list(x.values())

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        o, S = call()
        torch.autograd.backward([o, S], [torch.ones_like(o), torch.ones_like(S)])

    rows = []
    for mode, fn, bwd in (("fwd", fwd, False), ("fwd+bwd", fwd_bwd, True)):
        try:
            ms = bench(fn, device, reps)
        except Exception as e:  # an implementation that cannot run here (e.g. fla on CPU) is reported
            rows.append(Row(op, impl, D, T, mode, None, note=f"{type(e).__name__}: {str(e)[:80]}"))
            continue
        rows.append(Row(
            op, impl, D, T, mode, ms,
            tflops=model_flops(op, B, T, H, D, bwd) / ms / 1e9,
            gbs=model_bytes(x, bwd) / ms / 1e6,
        ))
    return rows


def fill_ratios(rows: list[Row]) -> None:
    fla = {(r.op, r.D, r.T, r.mode): r.ms for r in rows if r.impl == "fla" and r.ms}
    for r in rows:
        ref = fla.get((r.op, r.D, r.T, r.mode))
        if r.ms and ref:
            r.vs_fla = r.ms / ref


def print_table(rows: list[Row], peak_flops: float | None, peak_bw: float | None) -> None:
    head = (f"{'op':<17}{'impl':<7}{'D':>4}{'T':>7} {'mode':<8}{'ms':>9}{'x fla':>7}"
            f"{'TFLOP/s':>9}{'%pk':>5}{'GB/s':>8}{'%pk':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.ms is None:
            print(f"{r.op:<17}{r.impl:<7}{r.D:>4}{r.T:>7} {r.mode:<8}   n/a   ({r.note})")
            continue
        pf = f"{100 * r.tflops * 1e12 / peak_flops:4.0f}%" if peak_flops else "    -"
        pb = f"{100 * r.gbs * 1e9 / peak_bw:4.0f}%" if peak_bw else "    -"
        ratio = f"{r.vs_fla:6.2f}x" if r.vs_fla else "      -"
        print(f"{r.op:<17}{r.impl:<7}{r.D:>4}{r.T:>7} {r.mode:<8}{r.ms:9.3f}{ratio}{r.tflops:9.2f}{pf}{r.gbs:8.1f}{pb}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run under TRITON_INTERPRET=1")
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--D", type=int, nargs="+", default=[64, 128])
    p.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--torch-max-T", type=int, default=4096, help="skip our torch forms above this T")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.smoke:
        args.B, args.H, args.D, args.T, args.reps, args.dtype = 1, 2, [16], [32], 1, "fp32"
        args.impls = [i for i in args.impls if i != "fla"]  # fla's chunk ops need a GPU
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(1 if args.smoke else torch.get_num_threads())
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: the Triton kernels need a GPU here; use --smoke for a CPU check")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    name, peak_flops, peak_bw = device_peaks(device)
    print(f"device: {name}; B={args.B} H={args.H} dtype={args.dtype} chunk={CHUNK}")
    rows: list[Row] = []
    for op in args.ops:
        for D in args.D:
            for T in args.T:
                for impl in args.impls:
                    if impl == "torch" and T > args.torch_max_T:
                        continue
                    rows += run_case(op, impl, args.B, T, args.H, D, dtype, device, args.reps)
    fill_ratios(rows)
    print_table(rows, peak_flops, peak_bw)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "args": vars(args) | {"json": str(args.json)},
                                         "rows": [asdict(r) for r in rows]}, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
