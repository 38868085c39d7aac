"""The one guard every public op of ``kernels/<family>/__init__.py`` goes through.

It validates the backend name, then the inputs (with the family's check from ``checks.py``, so the
message is the same whichever implementation would run), then resolves the backend. Families
without a Triton kernel either refuse ``backend="triton"`` (``no_triton``) or run their torch forms
for it (their forms are plain tensor ops that run on CUDA tensors as they are).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from lifelong.kernels.utils.backend import check_backend_name, resolve_backend


def op_guard(
    backend: str, like: torch.Tensor, check: Callable[..., None], *args: Any, no_triton: str | None = None,
    **kwargs: Any,
) -> str:
    """Validate ``backend`` and ``check(*args, **kwargs)``; return ``"torch"`` or ``"triton"`` for
    inputs living where ``like`` lives. ``no_triton`` names a family with no Triton kernel: asking
    for ``backend="triton"`` then raises NotImplementedError."""
    check_backend_name(backend)
    if no_triton is not None and backend == "triton":
        raise NotImplementedError(
            f"{no_triton} has no Triton kernel: use backend='auto' or 'torch' (the torch forms run on "
            "CUDA tensors too)"
        )
    check(*args, **kwargs)
    return resolve_backend(backend, like)
