"""TTT-Linear: the token-by-token reference and the single-token step.

The inner model of each head is f(x) = LN(x W + b) (LN over V with weight/bias ``ln_weight``,
``ln_bias`` ``[H, V]``), trained online on l_t(W, b) = 1/2 ||LN(k_t W + b) - (v_t - k_t)||^2 by
mini-batch gradient descent. Tokens are grouped into mini-batches of ``mini_batch_size`` (counted
from the start of the lifetime). Within a mini-batch every gradient is taken at the weights
(W0, b0) of the mini-batch start, and token t reads out with the running sum of the mini-batch's
gradients so far, scaled by its own learning rate eta_t (the formulation of flash-linear-
attention's ``fla.ops.ttt.naive``):

    G_s = d l_s / dZ at Z = k_s W0 + b0                                  [V]
    W_t = W0 - eta_t sum_{s<=t} k_s G_s^T,   b_t = b0 - eta_t sum_{s<=t} G_s
    o_t = scale q_t W_t + b_t                                            (raw readout)

When the mini-batch completes (its last token m), (W0, b0) <- (W_m, b_m). The residual
"o + LN(o)" of the TTT paper is left to the layer.

So that one token at a time gives the same result as a whole sequence (the memory protocol), the
state carries the pending mini-batch: ``TTTState(W, b, grad_W, grad_b, pos)`` with (W, b) the
weights at the start of the pending mini-batch, (grad_W, grad_b) the sums of its gradients so far
and ``pos`` ``[B]`` the number of its tokens already seen (0 .. mini_batch_size - 1). Its size
never depends on the number of tokens seen.
Shapes: q, k, v ``[B, T, H, D]`` (K = V = D: the residual target v - k needs it), eta ``[B, T, H]``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lifelong.kernels.utils.checks import check_ttt_inputs

class TTTState(NamedTuple):
    """Inner-model weights and the pending mini-batch (constant size)."""

    W: torch.Tensor  # [B, H, K, V] fp32, weights at the start of the pending mini-batch
    b: torch.Tensor  # [B, H, 1, V] fp32, bias at the start of the pending mini-batch
    grad_W: torch.Tensor  # [B, H, K, V] fp32, sum of the pending mini-batch's gradients in W
    grad_b: torch.Tensor  # [B, H, 1, V] fp32, sum of the pending mini-batch's gradients in b
    pos: torch.Tensor  # [B] int64, tokens of the pending mini-batch already seen


def zero_ttt_state(batch_size: int, num_heads: int, head_dim: int, device: torch.device | str) -> TTTState:
    """All-zero weights, no pending mini-batch."""
    z = torch.zeros(batch_size, num_heads, head_dim, head_dim, dtype=torch.float32, device=device)
    zb = torch.zeros(batch_size, num_heads, 1, head_dim, dtype=torch.float32, device=device)
    return TTTState(z, zb, z.clone(), zb.clone(), torch.zeros(batch_size, dtype=torch.long, device=device))


def ln_fwd(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim with per-head affine: z ``[..., H, L, V]``, weight ``[H, 1, V]``."""
    mu = z.mean(-1, keepdim=True)
    var = (z - mu).pow(2).mean(-1, keepdim=True)
    return (z - mu) * torch.rsqrt(var + eps) * weight + bias


def ln_regression_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """d/dz of 1/2 ||LN(z) - target||^2 for z, target ``[B, H, L, V]``, weight/bias ``[H, 1, V]``.

    With x = (z - mean) * r, r = (var + eps)^-1/2, and g = (weight x + bias - target) * weight (the
    gradient in x), LayerNorm's backward is r (g - mean(g) - x mean(g x)).
    """
    mu = z.mean(-1, keepdim=True)
    r = torch.rsqrt((z - mu).pow(2).mean(-1, keepdim=True) + eps)
    x = (z - mu) * r
    g = (weight * x + bias - target) * weight
    return r * (g - g.mean(-1, keepdim=True) - x * (g * x).mean(-1, keepdim=True))


def ttt_linear_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    state: TTTState,
    *,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    scale: float | None = None,
    eps: float = 1e-6,
    mini_batch_size: int = 16,
) -> tuple[torch.Tensor, TTTState]:
    """One token: q, k, v ``[B, H, D]``, eta ``[B, H]`` -> raw readout o ``[B, H, D]``, new state."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    w, bln = ln_weight.float()[:, None], ln_bias.float()[:, None]  # [H, 1, V]
    qf, kf, vf = q.float()[..., None, :], k.float()[..., None, :], v.float()[..., None, :]  # [B,H,1,D]
    grad = ln_regression_grad(kf @ state.W + state.b, vf - kf, w, bln, eps)  # [B, H, 1, V]
    grad_W = state.grad_W + kf.transpose(-1, -2) @ grad
    grad_b = state.grad_b + grad
    e = eta.float()[..., None, None]
    W_t = state.W - e * grad_W
    b_t = state.b - e * grad_b
    o = (qf * scale) @ W_t + b_t
    # Completing the mini-batch commits (W_t, b_t) and empties the accumulators.
    done = (state.pos + 1 >= mini_batch_size).view(-1, 1, 1, 1)
    new = TTTState(
        W=torch.where(done, W_t, state.W),
        b=torch.where(done, b_t, state.b),
        grad_W=torch.where(done, torch.zeros_like(grad_W), grad_W),
        grad_b=torch.where(done, torch.zeros_like(grad_b), grad_b),
        pos=(state.pos + 1) % mini_batch_size,
    )
    return o[..., 0, :].to(v.dtype), new


def ttt_linear_reference(
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
) -> tuple[torch.Tensor, TTTState]:
    """Naive fp32 loop over T of :func:`ttt_linear_step`: o ``[B, T, H, D]``, final state."""
    check_ttt_inputs(q, k, v, eta, state, ln_weight, ln_bias, mini_batch_size)
    B, T, H, D = q.shape
    if state is None:
        state = zero_ttt_state(B, H, D, q.device)
    outs = []
    for t in range(T):
        o_t, state = ttt_linear_step(
            q[:, t], k[:, t], v[:, t], eta[:, t], state, ln_weight=ln_weight, ln_bias=ln_bias,
            scale=scale, eps=eps, mini_batch_size=mini_batch_size,
        )
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, state
