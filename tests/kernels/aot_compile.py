"""Ahead-of-time compilation of Triton kernels for NVIDIA GPUs, without a GPU (Triton ships ptxas).

Catches GPU-only compile errors, shared-memory overflows and register spills on CPU CI. Compiling
needs TRITON_INTERPRET unset, so tests run their compile script in a subprocess
(:func:`run_compile_script`), which imports this module to call :func:`aot_compile`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: shared memory per thread block on an H100 / H200 (227 KiB)
H100_SHARED_BYTES = 232448

_HERE = Path(__file__).resolve().parent


def aot_compile(
    kernel, constexprs: dict, *, ints: tuple[str, ...] = ("T", "NT"), floats: tuple[str, ...] = ("scale",),
    pointer_dtype: str = "bf16", fp32_pointers: tuple[str, ...] = (), arch: int = 90,
    num_warps: int = 4, num_stages: int = 2,
):
    """Compile ``kernel`` (a ``@triton.jit`` function, autotuned or not) for ``sm_<arch>`` and return
    the compiled kernel. Arguments named in ``constexprs`` take those values, ``ints`` are i32,
    ``floats`` fp32, every other argument a pointer to ``pointer_dtype`` unless named in ``fp32_pointers``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = kernel
    while hasattr(fn, "fn"):  # autotuner -> JITFunction -> python function
        fn = fn.fn
    jit_fn = JITFunction(fn)
    sig = {}
    for name in jit_fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ints:
            sig[name] = "i32"
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "*" + ("fp32" if name in fp32_pointers else pointer_dtype)
    src = ASTSource(fn=jit_fn, signature=sig, constexprs=constexprs)
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def shared_bytes(compiled) -> int:
    """Shared memory per thread block of a compiled kernel, in bytes."""
    return int(compiled.metadata.shared)


def spills_registers(compiled, arch: int) -> bool:
    """Whether ptxas spills registers when assembling the kernel's PTX for ``sm_<arch>``."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"  # Triton emits sm_90a PTX for Hopper
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run(
            [ptxas, f"-arch={gpu}", "-v", ptx, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
    return " 0 bytes spill stores" not in log


def run_compile_script(script: str, *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` with TRITON_INTERPRET unset, from the repository root, with this folder on
    the import path (``from aot_compile import aot_compile``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_HERE), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", script], cwd=_HERE.parents[1], env=env, capture_output=True, text=True,
        timeout=timeout,
    )
