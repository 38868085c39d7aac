"""Device functions shared by the Triton kernels, and the dtype their matmuls run in."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lifelong.kernels.utils.backend import triton_interpret

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def matmul_dtype(x: torch.Tensor):
    """The ``tl`` dtype fed to ``tl.dot`` (the ``MM`` constexpr of :func:`mm`) for inputs like ``x``:
    the input dtype (bf16, fp16), or fp32; always fp32 under the interpreter (bf16 dots are wrong there)."""
    if triton_interpret() or x.dtype not in _TL_DTYPES:
        return tl.float32
    return _TL_DTYPES[x.dtype]


@triton.jit
def mm(a, b, MM: tl.constexpr):
    """``tl.dot`` with fp32 accumulation: operands cast to ``MM``; fp32 runs as 3xTF32 on tensor
    cores (close to fp32 accuracy; plain TF32 would lose about three digits)."""
    if MM == tl.float32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    else:
        return tl.dot(a.to(MM), b.to(MM))


@triton.jit
def masked_exp(x, mask):
    """exp(x) where ``mask``, 0 elsewhere, without evaluating exp off the mask (no overflow there)."""
    return tl.where(mask, tl.exp(tl.where(mask, x, 0.0)), 0.0)
