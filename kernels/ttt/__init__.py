"""TTT family: TTT-Linear (``ttt_linear``), an inner linear model trained at test time.

q, k, v ``[B, T, H, D]``, eta ``[B, T, H]`` (per-token inner learning rate), state ``TTTState``
(weights and the pending mini-batch, see ``reference.py``), LayerNorm affine ``ln_weight``,
``ln_bias`` ``[H, D]``. Ops return the raw readout o = scale q W_t + b_t and the new state.
There is no Triton kernel for this family: every backend runs the torch forms, which also run on
CUDA tensors (``backend="triton"`` is refused with a message by ``kernels.utils.guard.op_guard``,
which every op goes through).
"""
from __future__ import annotations

import torch

from lifelong.kernels.ttt.chunk import ttt_linear_chunk
from lifelong.kernels.ttt.reference import (
    TTTState,
    ln_fwd,
    ln_regression_grad,
    ttt_linear_reference,
    zero_ttt_state,
)
from lifelong.kernels.ttt.reference import ttt_linear_step as _ttt_linear_step_torch
from lifelong.kernels.utils.checks import check_ttt_inputs
from lifelong.kernels.utils.guard import op_guard

__all__ = [
    "TTTState",
    "ln_fwd",
    "ln_regression_grad",
    "ttt_linear",
    "ttt_linear_chunk",
    "ttt_linear_reference",
    "ttt_linear_step",
    "zero_ttt_state",
]


def ttt_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    state: TTTState | None,
    *,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    scale: float | None = None,
    eps: float = 1e-6,
    mini_batch_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, TTTState]:
    """Mini-batch dual form over a sequence: o ``[B, T, H, D]``, final ``TTTState``."""
    op_guard(
        backend, q, check_ttt_inputs, q, k, v, eta, state, ln_weight, ln_bias, mini_batch_size, no_triton="TTT-Linear"
    )
    return ttt_linear_chunk(
        q, k, v, eta, state, ln_weight=ln_weight, ln_bias=ln_bias, scale=scale, eps=eps,
        mini_batch_size=mini_batch_size,
    )


def ttt_linear_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    state: TTTState | None,
    *,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    scale: float | None = None,
    eps: float = 1e-6,
    mini_batch_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, TTTState]:
    """One token: q, k, v ``[B, H, D]``, eta ``[B, H]`` -> o ``[B, H, D]``, new ``TTTState``."""
    op_guard(
        backend, q, check_ttt_inputs, q, k, v, eta, state, ln_weight, ln_bias, mini_batch_size, single_token=True,
        no_triton="TTT-Linear",
    )
    if state is None:
        state = zero_ttt_state(q.shape[0], q.shape[1], q.shape[2], q.device)
    return _ttt_linear_step_torch(
        q, k, v, eta, state, ln_weight=ln_weight, ln_bias=ln_bias, scale=scale, eps=eps,
        mini_batch_size=mini_batch_size,
    )
