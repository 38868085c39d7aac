"""Palimpsa (Bayesian metaplasticity) ground truth: naive loops over T in fp32.

Per head, elementwise over the ``K x V`` state (DESIGN.md section 2)::

    f_t  = exp(g_t)                                       g_t <= 0, [B, T, H]
    I_t  = f_t I_{t-1} + (1 - f_t) I_p + k_t^2 (x) b_t    precision, b_t in [0, 1]^V
    mu_t = (f_t I_{t-1} . mu_{t-1} + k_t v_t^T) / I_t     posterior mean
    o_t  = scale * mu_t^T q_t

The kernels carry the ratio form: ``M_t = mu_t . I_t`` and ``I~_t = I_t - I_p`` obey
``M_t = f_t M_{t-1} + k_t v_t^T`` (Mamba2's recurrence) and ``I~_t = f_t I~_{t-1} + b_t k_t^2``, so
``mu_t = M_t / (I_p + I~_t)``. With ``b = 0`` and ``I_p = 1`` this is exactly Mamba2 / simple GLA.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lifelong.kernels.utils.checks import check_palimpsa_inputs

class PalimpsaState(NamedTuple):
    """Ratio-form state, fp32: ``M = mu . I`` and ``I_tilde = I - I_p``, both ``[B, H, K, V]``."""

    M: torch.Tensor
    I_tilde: torch.Tensor


def init_palimpsa_state(batch_size: int, num_heads: int, key_dim: int, value_dim: int,
                        device: torch.device | str = "cpu") -> PalimpsaState:
    """The prior: mu = 0 and I = I_p, i.e. ``M = 0`` and ``I_tilde = 0`` (``[B, H, K, V]`` fp32)."""
    zeros = torch.zeros(batch_size, num_heads, key_dim, value_dim, device=device, dtype=torch.float32)
    return PalimpsaState(zeros, zeros.clone())


def prior_precision_tensor(prior_precision: float | torch.Tensor, num_heads: int,
                           device: torch.device) -> torch.Tensor:
    """``I_p`` as an fp32 ``[H]`` tensor (differentiable when given a tensor). Must be positive."""
    if isinstance(prior_precision, torch.Tensor):
        p = prior_precision.to(device=device, dtype=torch.float32)
        if p.dim() > 1 or p.numel() not in (1, num_heads):
            raise ValueError(
                f"prior_precision must be a float or a tensor broadcastable to [H]=[{num_heads}], got "
                f"shape {tuple(prior_precision.shape)}"
            )
        if not p.is_cuda and not p.requires_grad and bool((p <= 0).any()):
            raise ValueError("prior_precision must be positive (it is the precision the state relaxes to)")
        return p.reshape(-1).expand(num_heads)
    if not float(prior_precision) > 0:
        raise ValueError(f"prior_precision must be positive, got {prior_precision}")
    return torch.full((num_heads,), float(prior_precision), device=device, dtype=torch.float32)


def resolve_state(q: torch.Tensor, v: torch.Tensor, state: PalimpsaState | None) -> PalimpsaState:
    """``state`` as fp32, or the prior (zeros) when None."""
    if state is not None:
        return PalimpsaState(state.M.float(), state.I_tilde.float())
    return init_palimpsa_state(q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1], q.device)


def palimpsa_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                  state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                  scale: float | None = None) -> tuple[torch.Tensor, PalimpsaState]:
    """One token in ratio form. q, k ``[B, H, K]``; v, b ``[B, H, V]``; g ``[B, H]``.

    Returns o ``[B, H, V]`` (q's dtype) and the new state (fp32).
    """
    check_palimpsa_inputs(q, k, v, g, b, state, single_token=True)
    H, K = q.shape[-2], q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    state = resolve_state(q, v, state)
    prior = prior_precision_tensor(prior_precision, H, q.device)[None, :, None, None]
    kf, vf, bf, qf = k.float(), v.float(), b.float(), q.float()
    f = g.float().exp()[..., None, None]
    M = f * state.M + kf[..., :, None] * vf[..., None, :]
    I_tilde = f * state.I_tilde + (kf * kf)[..., :, None] * bf[..., None, :]
    mu = M / (prior + I_tilde)
    o = torch.einsum("bhk,bhkv->bhv", qf, mu) * scale
    return o.to(q.dtype), PalimpsaState(M, I_tilde)


def palimpsa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                       state: PalimpsaState | None, *, prior_precision: float | torch.Tensor = 1.0,
                       scale: float | None = None) -> tuple[torch.Tensor, PalimpsaState]:
    """Naive loop over T of :func:`palimpsa_step`. q, k ``[B, T, H, K]``; v, b ``[B, T, H, V]``;
    g ``[B, T, H]``. Returns o ``[B, T, H, V]`` and the final state."""
    check_palimpsa_inputs(q, k, v, g, b, state)
    state = resolve_state(q, v, state)
    outputs = []
    for t in range(q.shape[1]):
        o_t, state = palimpsa_step(q[:, t], k[:, t], v[:, t], g[:, t], b[:, t], state,
                                   prior_precision=prior_precision, scale=scale)
        outputs.append(o_t)
    o = torch.stack(outputs, dim=1) if outputs else q.new_zeros(*q.shape[:-1], v.shape[-1])
    return o, state


def palimpsa_mu_form_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               b: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor, *,
                               prior_precision: float | torch.Tensor = 1.0, scale: float | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DESIGN.md's (mu, I) recurrence written literally, one step at a time (for tests).

    mu, precision ``[B, H, K, V]`` are the posterior mean and precision before token 0 (a fresh
    state is ``mu = 0``, ``precision = I_p``). Returns o ``[B, T, H, V]``, mu_T and I_T.
    """
    check_palimpsa_inputs(q, k, v, g, b, None)
    H, K = q.shape[-2], q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    prior = prior_precision_tensor(prior_precision, H, q.device)[None, :, None, None]
    mu, precision = mu.float(), precision.float()
    outputs = []
    for t in range(q.shape[1]):
        f = g[:, t].float().exp()[..., None, None]
        k2b = (k[:, t].float() ** 2)[..., :, None] * b[:, t].float()[..., None, :]
        kv = k[:, t].float()[..., :, None] * v[:, t].float()[..., None, :]
        new_precision = f * precision + (1 - f) * prior + k2b
        mu = (f * precision * mu + kv) / new_precision
        precision = new_precision
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].float(), mu) * scale)
    return torch.stack(outputs, dim=1), mu, precision


def palimpsa_predictive_variance(q: torch.Tensor, state: PalimpsaState, *,
                                 prior_precision: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Predictive variance of the readout, ``sum_k q_k^2 / I[k, v]``: q ``[B, H, K]`` -> ``[B, H, V]``."""
    prior = prior_precision_tensor(prior_precision, q.shape[-2], q.device)[None, :, None, None]
    return torch.einsum("bhk,bhkv->bhv", q.float() ** 2, 1.0 / (prior + state.I_tilde))
