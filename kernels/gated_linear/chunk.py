"""Chunk-parallel torch forms of the gated linear recurrences (the CPU training path).

The sequence is cut into chunks of ``C = chunk_size`` tokens (the last one zero-padded: a padded
token has k = v = 0 and log gate 0, so it changes neither the outputs nor the state). Within a chunk,
with ``b`` the cumulative log gate from the chunk start (inclusive),

    o_t = scale * [ (q_t * exp(b_t))^T S_0  +  sum_{s <= t} (q_t * exp(b_t - b_s)) . k_s  v_s ]
    S_C = exp(b_C) * S_0 + sum_s (k_s * exp(b_C - b_s)) v_s^T

so each chunk costs a few matmuls, and only the chunk-start states ``S_0`` need a sequential scan
(one fused ``addcmul`` per chunk). Every decay factor is ``exp`` of a non-positive number, so
nothing overflows; log gates are clamped to ``[GATE_LOG_MIN, 0]`` as in ``reference.py``.

GLA's per-channel decay cannot be pulled out of ``q_t . k_s`` as one ``[C, C]`` matrix. When
the decay within every chunk spans at most ``FACTORED_SPAN_LIMIT`` in log space (the usual case:
GLA's gates are ``logsigmoid / 16``), the intra-chunk term is one masked matmul of
``q_t exp(b_t - m)`` and ``k_s exp(m - b_s)`` with ``m`` the middle of the chunk's log-decay range,
so every factor lies in ``[exp(-60), exp(60)]`` and fp32 keeps full relative precision. Otherwise
it is computed by recursive halving: a block of ``s`` tokens splits into two halves;
the pairs (second half, first half) form a ``[s/2, s/2]`` matmul with the decays taken relative to
the first token ``r`` of the second half, ``(q_t exp(b_t - b_r)) . (k_s exp(b_r - b_s))``, both
factors <= 1; the halves recurse down to single tokens (``q_t . k_t``). ``log2(C)`` levels, each one
batched matmul, and exact up to fp32 rounding for any gate values.

Gradients flow by autograd into q, k, v, the gates and the initial state.
"""
from __future__ import annotations

import torch

from lifelong.kernels.gated_linear.reference import (
    LinearAttnState,
    clamp_gate,
    default_scale,
    zero_linear_attn_state,
)
from lifelong.kernels.utils.checks import check_chunk_size, check_gated_linear_inputs, check_linear_attn_inputs
from lifelong.kernels.utils.layout import to_chunks, zero_state


#: largest log-decay span within a chunk for GLA's one-matmul intra-chunk form (factors <= e^60)
FACTORED_SPAN_LIMIT = 120.0


def _from_chunks(o: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, H, N, C, V]`` -> ``[B, T, H, V]`` (padding dropped)."""
    B, H, N, C, V = o.shape
    return o.reshape(B, H, N * C, V)[:, :, :T].movedim(2, 1)


def _scan_chunk_states(S0: torch.Tensor, decay: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States at every chunk start and after the last chunk.

    S0 ``[B, H, K, V]``; decay ``[B, H, N, K or 1, 1]`` (whole-chunk decay); U ``[B, H, N, K, V]``
    (the chunk's own writes, decayed to its end). Returns (``[B, H, N, K, V]``, ``[B, H, K, V]``).
    """
    starts = []
    S = S0
    for n in range(U.shape[2]):
        starts.append(S)
        S = torch.addcmul(U[:, :, n], decay[:, :, n], S)
    return torch.stack(starts, dim=2), S


def _causal_mask(C: int, device: torch.device) -> torch.Tensor:
    """``[C, C]`` bool, True where the key position s <= the query position t."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril()


def simple_gla_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t * scale``.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``, state ``[B, H, K, V]`` or None.
    Returns o ``[B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` fp32.
    """
    check_gated_linear_inputs(q, k, v, g, state)
    check_chunk_size(chunk_size)
    T = q.shape[1]
    C = min(chunk_size, max(T, 1))
    S0 = zero_state(k, v) if state is None else state.float()
    if T == 0:
        return v.new_zeros(v.shape), S0
    qc = to_chunks(q, C) * default_scale(q, scale)  # [B, H, N, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)
    b = to_chunks(clamp_gate(g).unsqueeze(-1), C).squeeze(-1).cumsum(-1)  # [B, H, N, C]

    # intra-chunk: decayed causal attention matrix, every exponent <= 0 after masking
    diff = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill(~_causal_mask(C, q.device), float("-inf"))
    attn = (qc @ kc.transpose(-1, -2)) * diff.exp()
    o = attn @ vc

    # inter-chunk: scan the chunk-start states, then read them with the decayed queries
    b_last = b[..., -1:]  # [B, H, N, 1]
    U = (kc * (b_last - b).exp().unsqueeze(-1)).transpose(-1, -2) @ vc  # [B, H, N, K, V]
    starts, S = _scan_chunk_states(S0, b_last.exp().unsqueeze(-1), U)
    o = o + (qc * b.exp().unsqueeze(-1)) @ starts
    return _from_chunks(o, T).to(v.dtype), S


def _gla_intra(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GLA's within-chunk term by recursive halving (see the module docstring).

    qc, kc, b ``[B, H, N, C, K]`` (b: inclusive cumulative log gate), vc ``[B, H, N, C, V]``;
    C a power of two. Returns ``sum_{s <= t} (q_t exp(b_t - b_s)) . k_s v_s`` as ``[B, H, N, C, V]``.
    """
    *lead, C, K = qc.shape
    V = vc.shape[-1]
    o = (qc * kc).sum(-1, keepdim=True) * vc  # s == t
    size = C
    while size > 1:
        half = size // 2
        split = (*lead, C // size, 2, half)
        q2 = qc.reshape(*split, K)[..., 1, :, :]  # queries in the second halves [.., m, half, K]
        b_q = b.reshape(*split, K)[..., 1, :, :]
        k1 = kc.reshape(*split, K)[..., 0, :, :]  # keys in the first halves
        b_k = b.reshape(*split, K)[..., 0, :, :]
        v1 = vc.reshape(*split, V)[..., 0, :, :]
        b_ref = b_q[..., :1, :]  # first token of the second half
        attn = (q2 * (b_q - b_ref).exp()) @ (k1 * (b_ref - b_k).exp()).transpose(-1, -2)
        part = attn @ v1  # [.., m, half, V]
        o = o + torch.stack([torch.zeros_like(part), part], dim=-3).reshape(*lead, C, V)
        size = half
    return o


def _gla_intra_factored(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GLA's within-chunk term as one masked matmul, for chunks whose log decay spans at most
    ``FACTORED_SPAN_LIMIT`` (shapes as :func:`_gla_intra`). Entries above the diagonal may overflow;
    they are masked out before use and get zero gradient."""
    mid = 0.5 * (b[..., :1, :] + b[..., -1:, :])  # [B, H, N, 1, K]
    attn = (qc * (b - mid).exp()) @ (kc * (mid - b).exp()).transpose(-1, -2)
    attn = attn.masked_fill(~_causal_mask(qc.shape[-2], qc.device), 0.0)
    return attn @ vc


def gla_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None,
    *, scale: float | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked ``S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t * scale``.

    q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]`` or None; chunk_size a power
    of two. Returns o ``[B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` fp32.
    """
    check_gated_linear_inputs(q, k, v, g, state, per_channel=True)
    check_chunk_size(chunk_size, power_of_two_for="gla")
    T = q.shape[1]
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # no more padding than one chunk needs
    S0 = zero_state(k, v) if state is None else state.float()
    if T == 0:
        return v.new_zeros(v.shape), S0
    qc = to_chunks(q, C) * default_scale(q, scale)  # [B, H, N, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)
    b = to_chunks(clamp_gate(g), C).cumsum(-2)  # [B, H, N, C, K]

    span = float((b[..., 0, :] - b[..., -1, :]).detach().max())  # log decay within the chunks, >= 0
    o = (_gla_intra_factored if span <= FACTORED_SPAN_LIMIT else _gla_intra)(qc, kc, vc, b)
    b_last = b[..., -1:, :]  # [B, H, N, 1, K]
    U = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc  # [B, H, N, K, V]
    starts, S = _scan_chunk_states(S0, b_last.exp().transpose(-1, -2), U)
    o = o + (qc * b.exp()) @ starts
    return _from_chunks(o, T).to(v.dtype), S


def linear_attn_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttnState | None,
    *, eps: float = 1e-6, chunk_size: int = 64,
) -> tuple[torch.Tensor, LinearAttnState]:
    """Chunked normalised linear attention, ``o_t = S_t^T q_t / (z_t^T q_t + eps)``.

    q, k ``[B, T, H, K]`` (feature-mapped, positive), v ``[B, T, H, V]``, state
    ``LinearAttnState(S [B, H, K, V], z [B, H, K])`` or None. The normaliser rides along as an
    extra value column of ones. Returns o ``[B, T, H, V]`` and the final state.
    """
    check_linear_attn_inputs(q, k, v, state)
    check_chunk_size(chunk_size)
    T = q.shape[1]
    C = min(chunk_size, max(T, 1))
    S0, z0 = zero_linear_attn_state(k, v) if state is None else (state[0].float(), state[1].float())
    if T == 0:
        return v.new_zeros(v.shape), LinearAttnState(S0, z0)
    qc, kc = to_chunks(q, C), to_chunks(k, C)
    vc = to_chunks(v, C)
    vz = torch.cat([vc, vc.new_ones(*vc.shape[:-1], 1)], dim=-1)  # [B, H, N, C, V + 1]
    Sz0 = torch.cat([S0, z0.unsqueeze(-1)], dim=-1)  # [B, H, K, V + 1]

    attn = (qc @ kc.transpose(-1, -2)).masked_fill(~_causal_mask(C, q.device), 0.0)
    U = kc.transpose(-1, -2) @ vz  # [B, H, N, K, V + 1]
    after = Sz0.unsqueeze(2) + U.cumsum(2)  # state after each chunk
    starts = torch.cat([Sz0.unsqueeze(2), after[:, :, :-1]], dim=2)
    out = attn @ vz + qc @ starts  # [B, H, N, C, V + 1]: numerator and denominator
    o = out[..., :-1] / (out[..., -1:] + eps)
    final = after[:, :, -1]
    return _from_chunks(o, T).to(v.dtype), LinearAttnState(final[..., :-1].contiguous(), final[..., -1].contiguous())
