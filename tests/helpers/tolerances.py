"""Relative RMS error, the one closeness measure of the kernel tests (DESIGN.md section 4).

rel_rms(a, b) = ||a - b||_rms / ||b||_rms, with b the reference. Tolerances: fp32 recurrent forms
1e-3, chunked forms 5e-3, gradients of gates 1e-2.
"""
from __future__ import annotations

import torch

TOL_RECURRENT = 1e-3
TOL_CHUNKED = 5e-3
TOL_GATE_GRAD = 1e-2


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of (a - b) over RMS of the reference b (computed in float64)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs reference {tuple(b.shape)}")
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12))


def assert_close_rms(a: torch.Tensor, b: torch.Tensor, tol: float, name: str) -> None:
    """Fail with the measured error when rel_rms(a, b) >= tol; b is the reference."""
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    err = rel_rms(a, b)
    assert err < tol, f"{name}: relative RMS error {err:.2e} >= tolerance {tol:.0e}"
