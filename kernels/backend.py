"""Choosing between the pure-torch path and the Triton path of a kernel family.

``auto`` takes Triton for CUDA tensors and torch otherwise. ``triton`` on a CPU tensor is only valid
under ``TRITON_INTERPRET=1`` (set before any kernel module is imported), which is how CI tests the
kernels without a GPU.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "torch", "triton")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for an op whose inputs live where ``tensor`` lives."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
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


def autotune_configs(configs: list, interpret_config_index: int = 0) -> list:
    """All autotune configs on a GPU; one config under the interpreter (it cannot benchmark)."""
    return [configs[interpret_config_index]] if triton_interpret() else configs
