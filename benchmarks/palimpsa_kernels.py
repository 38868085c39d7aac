"""Palimpsa kernel timings: forward+backward of the naive loop, the chunked torch form and (on
CUDA) the Triton kernels, at T = 1024 by default.

    python benchmarks/palimpsa_kernels.py --batch 1 --heads 4 --dim 32 --seq 1024
    python benchmarks/palimpsa_kernels.py --device cuda --dtype bfloat16   # adds Triton (and fla's
                                                                            # chunk_gated_delta_rule at
                                                                            # equal state size if found)
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch


from lifelong.kernels.palimpsa import palimpsa_chunk, palimpsa_reference  # noqa: E402


def make_inputs(batch: int, seq: int, heads: int, dim: int, device: str, dtype: torch.dtype):
    """q, k ``[B, T, H, K]`` (k L2-normalised), v, b ``[B, T, H, V]``, g ``[B, T, H]``, all requiring grad."""
    q = torch.randn(batch, seq, heads, dim, device=device, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(batch, seq, heads, dim, device=device), dim=-1).to(dtype)
    v = torch.randn(batch, seq, heads, dim, device=device, dtype=dtype)
    g = -torch.rand(batch, seq, heads, device=device) * 0.2
    b = torch.rand(batch, seq, heads, dim, device=device, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v, g, b)]


def time_fwd_bwd(fn: Callable, inputs: list[torch.Tensor], repeats: int) -> float:
    """Best wall time in ms of forward + backward over ``repeats`` runs (after one warm-up)."""
    best = float("inf")
    for i in range(repeats + 1):
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        o, state = fn(*inputs)
        (o.float().sum() + state[0].sum()).backward()
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        if i > 0:
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32, help="K = V, the head dim")
    parser.add_argument("--chunk", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(args.batch, args.seq, args.heads, args.dim, args.device, dtype)
    rows: list[tuple[str, float]] = []
    if not args.skip_reference:
        rows.append(("reference loop", time_fwd_bwd(lambda *x: palimpsa_reference(*x, None), inputs, 1)))
    for c in args.chunk:
        rows.append((f"chunked torch C={c}",
                     time_fwd_bwd(lambda *x, c=c: palimpsa_chunk(*x, None, chunk_size=c), inputs, args.repeats)))
    if args.device.startswith("cuda"):
        from lifelong.kernels.palimpsa.triton import palimpsa_triton

        rows.append(("triton", time_fwd_bwd(lambda *x: palimpsa_triton(*x, None), inputs, args.repeats)))
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            q, k, v, g, b = inputs
            beta = torch.rand(q.shape[:3], device=q.device, dtype=q.dtype).requires_grad_()
            rows.append(("fla chunk_gated_delta_rule", time_fwd_bwd(
                lambda *x: chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True), inputs,
                args.repeats)))
        except ImportError:
            pass
    base = rows[0][1]
    print(f"B={args.batch} T={args.seq} H={args.heads} K=V={args.dim} {args.device} {args.dtype} (fwd+bwd)")
    for name, ms in rows:
        print(f"  {name:28s} {ms:9.1f} ms   x{base / ms:5.1f} vs {rows[0][0]}")


if __name__ == "__main__":
    main()
