"""Gated delta rule: the naive recurrence (ground truth) and the single-token step.

Per head, with alpha_t = exp(g_t) (alpha_t = 1 when ``g`` is None: DeltaNet):

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T q_t * scale

Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g and beta ``[B, T, H]``, state ``[B, H, K, V]``
(fp32). The caller L2-normalises k (the recurrence is only contractive for ||k|| = 1).
"""
from __future__ import annotations

import torch

from lifelong.kernels.utils.checks import check_delta_rule_inputs
from lifelong.kernels.utils.layout import zero_state

def gated_delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive fp32 loop over T. Returns o ``[B, T, H, V]`` (dtype of v) and S ``[B, H, K, V]`` fp32.

    ``state=None`` starts from zeros; ``g=None`` means no decay (DeltaNet).
    """
    check_delta_rule_inputs(q, k, v, g, beta, state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = zero_state(k, v) if state is None else state.float()
    qf, kf, vf, bf = q.float(), k.float(), v.float(), beta.float()
    alpha = None if g is None else g.float().exp()
    outs = []
    for t in range(q.shape[1]):
        if alpha is not None:
            S = S * alpha[:, t, :, None, None]
        k_t = kf[:, t]  # [B, H, K]
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)
        u = bf[:, t, :, None] * (vf[:, t] - pred)  # [B, H, V]
        S = S + k_t[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t], S) * scale)
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(v.shape)
    return o.to(v.dtype), S


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k ``[B, H, K]``, v ``[B, H, V]``, g, beta ``[B, H]``, state ``[B, H, K, V]``.

    Returns o ``[B, H, V]`` (dtype of v) and the new state ``[B, H, K, V]`` fp32. It runs every env
    step, so it is a handful of batched ops and does not re-check shapes beyond what matmul does.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = state.float()
    if g is not None:
        S = S * g.float().exp()[..., None, None]
    kr = k.float().unsqueeze(-2)  # [B, H, 1, K]
    u = beta.float().unsqueeze(-1) * (v.float() - (kr @ S).squeeze(-2))  # [B, H, V]
    S = torch.addcmul(S, kr.transpose(-1, -2), u.unsqueeze(-2))  # S + k u^T
    o = (q.float().unsqueeze(-2) @ S).squeeze(-2) * scale
    return o.to(v.dtype), S
