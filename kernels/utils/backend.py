"""Choosing between the pure-torch path and the Triton path of a kernel family.

``auto`` takes Triton for CUDA tensors and torch otherwise. ``triton`` on a CPU tensor is only valid
under ``TRITON_INTERPRET=1`` (set before any kernel module is imported), which is how CI tests the
kernels without a GPU.
"""
from __future__ import annotations

import os

import torch

from lifelong.kernels.utils.checks import check_choice

BACKENDS = ("auto", "torch", "triton")


def triton_interpret() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend_name(backend: str) -> None:
    """Raise a ValueError listing the valid names when ``backend`` is not one of :data:`BACKENDS`."""
    check_choice("backend", backend, BACKENDS)


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for an op whose inputs live where ``tensor`` lives."""
    check_backend_name(backend)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if not tensor.is_cuda and not triton_interpret():
        raise RuntimeError(
            "backend='triton' was asked for CPU tensors: Triton needs a CUDA device, or "
            "TRITON_INTERPRET=1 set in the environment before the kernels are imported "
            "(slow; for tests). Use backend='auto' or 'torch' on CPU."
        )
    return "triton"


def require_triton_device(x: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests)."""
    if not x.is_cuda and not triton_interpret():
        raise RuntimeError(
            "the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set in the environment before "
            "the kernels are imported (slow; for tests). On CPU call the op with backend='auto' or 'torch'."
        )
