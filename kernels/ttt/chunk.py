"""TTT-Linear in mini-batch dual form (the CPU training path).

Same semantics as ``reference.py``. Inside one mini-batch every gradient G_s is taken at the
mini-batch's start weights (W0, b0), so all of them come from one matmul, and the readouts follow
without materialising W_t (the dual form of the TTT paper):

    o_t = scale q_t W0 + b0 - eta_t (scale q_t A0 + a0 + sum_{s<=t} (scale q_t . k_s + 1) G_s)

with (A0, a0) the gradient sums carried in from an unfinished mini-batch. Only the loop over
mini-batches is sequential (each needs the weights the previous one produced).

Lifetimes may sit at different positions of their pending mini-batch (``state.pos``, after a reset
of some of them). Each lifetime's tokens are therefore placed at padded positions pos_b + t, so
that every padded mini-batch starts on a mini-batch boundary of every lifetime; padded slots carry
no gradient, and a mini-batch commits its update only for lifetimes whose last slot is a real token.
"""
from __future__ import annotations

import torch

from lifelong.kernels.ttt.reference import TTTState, ln_regression_grad, zero_ttt_state
from lifelong.kernels.utils.checks import check_ttt_inputs


def _place(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """x ``[B, T, ...]`` -> ``[B, Tp, ...]`` with slot j holding x[b, src[b, j]] (T: a zero row)."""
    x_ext = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], dim=1)
    index = src.view(*src.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x_ext, 1, index)


def ttt_linear_chunk(
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
    """q, k, v ``[B, T, H, D]``, eta ``[B, T, H]`` -> raw readout o ``[B, T, H, D]``, final state."""
    check_ttt_inputs(q, k, v, eta, state, ln_weight, ln_bias, mini_batch_size)
    B, T, H, D = q.shape
    M = mini_batch_size
    scale = D**-0.5 if scale is None else scale
    if state is None:
        state = zero_ttt_state(B, H, D, q.device)
    if T == 0:
        return v.new_zeros(v.shape), state
    pos = state.pos
    if bool((pos < 0).any()) or bool((pos >= M).any()):
        raise ValueError(f"state.pos must lie in [0, mini_batch_size={M}): was the state built with another size?")
    Tp = -(-(int(pos.max()) + T) // M) * M
    N = Tp // M

    # Slot j of lifetime b holds token j - pos_b (or nothing: index T points at a zero row).
    slot = torch.arange(Tp, device=q.device)
    src = slot[None, :] - pos[:, None]  # [B, Tp]
    valid = (src >= 0) & (src < T)
    src = torch.where(valid, src, torch.full_like(src, T))

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, *D] -> [B, H, N, M, *D] fp32
        x = _place(x.float(), src).movedim(1, 2)
        return x.reshape(B, H, N, M, *x.shape[3:])

    qc, kc, vc, ec = blocks(q) * scale, blocks(k), blocks(v), blocks(eta)  # ec [B, H, N, M]
    mask = valid.view(B, 1, N, M, 1).float()
    complete = valid.view(B, N, M)[:, :, -1]  # [B, N]: the mini-batch ends on a real token
    w, bln = ln_weight.float()[:, None], ln_bias.float()[:, None]  # [H, 1, V]
    causal = torch.ones(M, M, dtype=torch.bool, device=q.device).tril()
    # sum_{s<=t} (scale q_t . k_s + 1) G_s: one [M, M] matrix per mini-batch, all at once.
    attn = torch.where(causal, qc @ kc.transpose(-1, -2) + 1.0, 0.0)  # [B, H, N, M, M]
    targets = vc - kc

    W, b, A, a = state.W, state.b, state.grad_W, state.grad_b
    outs = []
    for n in range(N):
        q_n, k_n, e_n = qc[:, :, n], kc[:, :, n], ec[:, :, n, :, None]  # [B,H,M,D], e [B,H,M,1]
        grad = ln_regression_grad(k_n @ W + b, targets[:, :, n], w, bln, eps) * mask[:, :, n]
        outs.append(q_n @ W + b - e_n * (q_n @ A + a + attn[:, :, n] @ grad))
        A = A + k_n.transpose(-1, -2) @ grad
        a = a + grad.sum(-2, keepdim=True)
        done = complete[:, n].view(B, 1, 1, 1)
        e_last = e_n[:, :, -1:, :]  # [B, H, 1, 1]
        W = torch.where(done, W - e_last * A, W)
        b = torch.where(done, b - e_last * a, b)
        A = torch.where(done, torch.zeros_like(A), A)
        a = torch.where(done, torch.zeros_like(a), a)

    o = torch.stack(outs, dim=2).reshape(B, H, Tp, D).movedim(1, 2)  # [B, Tp, H, D]
    if bool((pos == 0).all()):
        o = o[:, :T]
    else:  # token t of lifetime b sits at slot pos_b + t
        take = (torch.arange(T, device=q.device)[None, :] + pos[:, None]).view(B, T, 1, 1)
        o = torch.gather(o, 1, take.expand(-1, -1, H, D))
    return o.to(v.dtype), TTTState(W, b, A, a, (pos + T) % M)
