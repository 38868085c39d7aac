"""Gated linear recurrences: naive fp32 loops (the ground truth) and fast single-token steps.

Per head, with the state S ``[K, V]``:

* ``simple_gla`` (Mamba2): ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, g ``[B, T, H]`` (scalar decay)
* ``gla``:                 ``S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T``, g ``[B, T, H, K]``
* both read ``o_t = S_t^T q_t * scale`` (``scale=None`` means ``K ** -0.5``)
* ``linear_attn``: ``S_t = S_{t-1} + k_t v_t^T``, ``z_t = z_{t-1} + k_t``,
  ``o_t = S_t^T q_t / (z_t^T q_t + eps)`` with q, k already feature-mapped (positive); no scale,
  it cancels between numerator and denominator.

Gates are log decays ``g <= 0``; every form clamps them to ``[GATE_LOG_MIN, 0]`` (a decay of
``exp(-30) ~ 1e-13`` per token already erases the state at fp32 precision; the clamp keeps the
chunked forms' cumulative log gates small enough to subtract without losing digits). Every op
takes the state and returns the state after the last token (``state=None`` starts from zeros). Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``; the
``*_step`` ops take one token: q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]`` (or ``[B, H, K]``).
Outputs have the dtype of v, states are fp32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lifelong.kernels.utils.checks import check_gated_linear_inputs, check_linear_attn_inputs
from lifelong.kernels.utils.layout import zero_state

class LinearAttnState(NamedTuple):
    """Linear attention's state: ``S [B, H, K, V]`` and the normaliser ``z [B, H, K]`` (fp32)."""

    S: torch.Tensor
    z: torch.Tensor


#: lower bound of the log gates (see the module docstring)
GATE_LOG_MIN = -30.0


def clamp_gate(g: torch.Tensor) -> torch.Tensor:
    """fp32 log gates clamped to ``[GATE_LOG_MIN, 0]``; the gradient passes inside the range."""
    return g.float().clamp(GATE_LOG_MIN, 0.0)


# ---- states and scale -----------------------------------------------------------------------


def zero_linear_attn_state(k: torch.Tensor, v: torch.Tensor) -> LinearAttnState:
    """Zero ``LinearAttnState(S [B, H, K, V], z [B, H, K])`` fp32 for k ``[B, (T,) H, K]``, v ``[B, (T,) H, V]``."""
    S = zero_state(k, v)
    return LinearAttnState(S, S.new_zeros(S.shape[:-1]))


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    """``K ** -0.5`` when ``scale`` is None."""
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


# ---- naive loops (ground truth) -------------------------------------------------------------


def _gated_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    scale: float | None, per_channel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_gated_linear_inputs(q, k, v, g, state, per_channel=per_channel)
    scale = default_scale(q, scale)
    S = zero_state(k, v) if state is None else state.float()
    qf, kf, vf = q.float() * scale, k.float(), v.float()
    alpha = clamp_gate(g).exp()
    outs = []
    for t in range(q.shape[1]):
        a_t = alpha[:, t, :, :, None] if per_channel else alpha[:, t, :, None, None]
        S = a_t * S + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        outs.append((qf[:, t, :, :, None] * S).sum(-2))
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(vf.shape)
    return o.to(v.dtype), S


def simple_gla_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive loop of ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, g ``[B, T, H]``.

    Returns o ``[B, T, H, V]`` and the final state ``[B, H, K, V]`` (fp32).
    """
    return _gated_reference(q, k, v, g, state, scale, per_channel=False)


def gla_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive loop of ``S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T``, g ``[B, T, H, K]``.

    Returns o ``[B, T, H, V]`` and the final state ``[B, H, K, V]`` (fp32).
    """
    return _gated_reference(q, k, v, g, state, scale, per_channel=True)


def linear_attn_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttnState | None,
    *, eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Naive loop of normalised linear attention (q, k already feature-mapped, positive).

    ``S_t = S_{t-1} + k_t v_t^T``, ``z_t = z_{t-1} + k_t``, ``o_t = S_t^T q_t / (z_t^T q_t + eps)``.
    Returns o ``[B, T, H, V]`` and ``LinearAttnState(S [B, H, K, V], z [B, H, K])``.
    """
    check_linear_attn_inputs(q, k, v, state)
    S, z = zero_linear_attn_state(k, v) if state is None else (state[0].float(), state[1].float())
    qf, kf, vf = q.float(), k.float(), v.float()
    outs = []
    for t in range(q.shape[1]):
        S = S + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        z = z + kf[:, t]
        num = (qf[:, t, :, :, None] * S).sum(-2)
        den = (qf[:, t] * z).sum(-1, keepdim=True) + eps
        outs.append(num / den)
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(vf.shape)
    return o.to(v.dtype), LinearAttnState(S, z)


# ---- single-token steps (run at every env step: few, fused ops) -----------------------------


def _read(q: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``S^T q`` for q ``[B, H, K]`` and S ``[B, H, K, V]`` -> ``[B, H, V]`` (one batched matmul)."""
    return torch.matmul(q.unsqueeze(-2), S).squeeze(-2)


def simple_gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of simple GLA: q, k ``[B, H, K]``, v ``[B, H, V]``, g ``[B, H]`` -> (o ``[B, H, V]``, S)."""
    check_gated_linear_inputs(q, k, v, g, state, single_token=True)
    S = zero_state(k, v) if state is None else state.float()
    kf, vf = k.float(), v.float()
    S = torch.addcmul(S * clamp_gate(g).exp()[..., None, None], kf.unsqueeze(-1), vf.unsqueeze(-2))
    o = _read(q.float() * default_scale(q, scale), S)
    return o.to(v.dtype), S


def gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of GLA: q, k, g ``[B, H, K]``, v ``[B, H, V]`` -> (o ``[B, H, V]``, S ``[B, H, K, V]``)."""
    check_gated_linear_inputs(q, k, v, g, state, per_channel=True, single_token=True)
    S = zero_state(k, v) if state is None else state.float()
    kf, vf = k.float(), v.float()
    S = torch.addcmul(S * clamp_gate(g).exp().unsqueeze(-1), kf.unsqueeze(-1), vf.unsqueeze(-2))
    o = _read(q.float() * default_scale(q, scale), S)
    return o.to(v.dtype), S


def linear_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttnState | None,
    *, eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttnState]:
    """One token of linear attention: q, k ``[B, H, K]``, v ``[B, H, V]`` -> (o ``[B, H, V]``, state)."""
    check_linear_attn_inputs(q, k, v, state, single_token=True)
    S, z = zero_linear_attn_state(k, v) if state is None else (state[0].float(), state[1].float())
    qf, kf = q.float(), k.float()
    S = torch.addcmul(S, kf.unsqueeze(-1), v.float().unsqueeze(-2))
    z = z + kf
    den = (qf * z).sum(-1, keepdim=True) + eps
    o = _read(qf, S) / den
    return o.to(v.dtype), LinearAttnState(S, z)
