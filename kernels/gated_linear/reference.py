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


class LinearAttnState(NamedTuple):
    """Linear attention's state: ``S [B, H, K, V]`` and the normaliser ``z [B, H, K]`` (fp32)."""

    S: torch.Tensor
    z: torch.Tensor


#: lower bound of the log gates (see the module docstring)
GATE_LOG_MIN = -30.0


def clamp_gate(g: torch.Tensor) -> torch.Tensor:
    """fp32 log gates clamped to ``[GATE_LOG_MIN, 0]``; the gradient passes inside the range."""
    return g.float().clamp(GATE_LOG_MIN, 0.0)


# ---- input checks ---------------------------------------------------------------------------


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, single_token: bool) -> None:
    """Raise a ValueError naming the fix when q, k, v do not follow the layout of this module."""
    ndim = 3 if single_token else 4
    lead = "[B, H" if single_token else "[B, T, H"
    if q.dim() != ndim or k.dim() != ndim or v.dim() != ndim:
        hint = (
            " (use the sequence op for [B, T, H, K] inputs)" if single_token
            else " (use the *_step op for one token [B, H, K])"
        )
        raise ValueError(
            f"q, k, v must be {lead}, K/V] tensors ({ndim}-D); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}{hint}"
        )
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)} in every dim but the last")


def check_gate(g: torch.Tensor, k: torch.Tensor, *, per_channel: bool) -> None:
    """g must be ``k.shape[:-1]`` (scalar per head) or ``k.shape`` (per key channel)."""
    want = tuple(k.shape) if per_channel else tuple(k.shape[:-1])
    if tuple(g.shape) != want:
        what = "one log-decay per key channel (gla)" if per_channel else "one log-decay per head (simple_gla)"
        raise ValueError(f"g must have shape {want}: {what}; got {tuple(g.shape)}")


def check_state(state: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor) -> None:
    if state is None:
        return
    B, H, K, V = k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be a [B, H, K, V] tensor (pass state.S for a GLAState), got {type(state)}")
    if tuple(state.shape) != (B, H, K, V):
        raise ValueError(f"state must be [B, H, K, V] = {(B, H, K, V)}, got {tuple(state.shape)}")


def check_linear_attn_state(state: LinearAttnState | None, k: torch.Tensor, v: torch.Tensor) -> None:
    if state is None:
        return
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError("linear attention's state must be LinearAttnState(S [B,H,K,V], z [B,H,K]) or None")
    B, H, K, V = k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]
    if tuple(state[0].shape) != (B, H, K, V) or tuple(state[1].shape) != (B, H, K):
        raise ValueError(
            f"LinearAttnState must hold S {(B, H, K, V)} and z {(B, H, K)}, got S "
            f"{tuple(state[0].shape)} and z {tuple(state[1].shape)}"
        )


def zero_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A zero fp32 state ``[B, H, K, V]`` for k ``[B, (T,) H, K]`` and v ``[B, (T,) H, V]``."""
    return torch.zeros(k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1], dtype=torch.float32, device=k.device)


def zero_linear_attn_state(k: torch.Tensor, v: torch.Tensor) -> LinearAttnState:
    S = zero_state(k, v)
    return LinearAttnState(S, S.new_zeros(S.shape[:-1]))


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


# ---- naive loops (ground truth) -------------------------------------------------------------


def _gated_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    scale: float | None, per_channel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_qkv(q, k, v, single_token=False)
    check_gate(g, k, per_channel=per_channel)
    check_state(state, k, v)
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
    check_qkv(q, k, v, single_token=False)
    check_linear_attn_state(state, k, v)
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
    check_qkv(q, k, v, single_token=True)
    check_gate(g, k, per_channel=False)
    check_state(state, k, v)
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
    check_qkv(q, k, v, single_token=True)
    check_gate(g, k, per_channel=True)
    check_state(state, k, v)
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
    check_qkv(q, k, v, single_token=True)
    check_linear_attn_state(state, k, v)
    S, z = zero_linear_attn_state(k, v) if state is None else (state[0].float(), state[1].float())
    qf, kf = q.float(), k.float()
    S = torch.addcmul(S, kf.unsqueeze(-1), v.float().unsqueeze(-2))
    z = z + kf
    den = (qf * z).sum(-1, keepdim=True) + eps
    o = _read(qf, S) / den
    return o.to(v.dtype), LinearAttnState(S, z)
