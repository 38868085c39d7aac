"""Palimpsa (Bayesian metaplasticity, arXiv 2602.09075): dispatching ops.

``palimpsa`` runs a sequence (chunked torch form on CPU, Triton on CUDA); ``palimpsa_step`` one
token. Both take and return the ratio-form ``PalimpsaState(M, I_tilde)`` (see ``reference.py``), and
check their inputs and pick the backend through ``kernels.utils.guard.op_guard``.
"""
from __future__ import annotations

import torch

from lifelong.kernels.palimpsa.chunk import palimpsa_chunk
from lifelong.kernels.palimpsa.reference import (
    PalimpsaState,
    init_palimpsa_state,
    palimpsa_mu_form_reference,
    palimpsa_predictive_variance,
    palimpsa_reference,
)
from lifelong.kernels.palimpsa.reference import palimpsa_step as palimpsa_step_torch
from lifelong.kernels.utils.checks import check_palimpsa_inputs
from lifelong.kernels.utils.guard import op_guard

__all__ = [
    "PalimpsaState",
    "init_palimpsa_state",
    "palimpsa",
    "palimpsa_chunk",
    "palimpsa_mu_form_reference",
    "palimpsa_predictive_variance",
    "palimpsa_reference",
    "palimpsa_step",
]


def palimpsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
             state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
             scale: float | None = None, chunk_size: int = 64, backend: str = "auto"
             ) -> tuple[torch.Tensor, PalimpsaState]:
    """q, k ``[B, T, H, K]``; v, b ``[B, T, H, V]`` (b in [0, 1]); g ``[B, T, H]`` = log f_t <= 0.

    Returns o ``[B, T, H, V]`` and the fp32 state after the last token.
    """
    if op_guard(backend, q, check_palimpsa_inputs, q, k, v, g, b, state) == "triton":
        from lifelong.kernels.palimpsa.triton import palimpsa_triton

        return palimpsa_triton(q, k, v, g, b, state, prior_precision=prior_precision, scale=scale,
                               chunk_size=chunk_size)
    return palimpsa_chunk(q, k, v, g, b, state, prior_precision=prior_precision, scale=scale,
                          chunk_size=chunk_size)


def palimpsa_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                  state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                  scale: float | None = None, backend: str = "auto") -> tuple[torch.Tensor, PalimpsaState]:
    """One token: q, k ``[B, H, K]``; v, b ``[B, H, V]``; g ``[B, H]`` -> (o ``[B, H, V]``, state)."""
    if op_guard(backend, q, check_palimpsa_inputs, q, k, v, g, b, state, single_token=True) == "triton":
        from lifelong.kernels.palimpsa.triton import palimpsa_step_triton

        return palimpsa_step_triton(q, k, v, g, b, state, prior_precision=prior_precision, scale=scale)
    return palimpsa_step_torch(q, k, v, g, b, state, prior_precision=prior_precision, scale=scale)
