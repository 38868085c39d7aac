"""LoLA's pieces shared by the reference loop and the chunk form (arXiv 2505.23666).

Per head and per token (lifetime index n = tokens seen since the last reset):
1. (k_n, v_n) enters the sliding window W (born at n); the oldest pair c leaves it (born at n - eta;
   with eta = 0, c = (k_n, v_n));
2. c competes with the sparse cache G: every candidate of G u {c} gets a keep-priority
   (``selection``): ``sre``: self-recall error SRE(k, v) = ||phi(k)^T S / (phi(k)^T z) - v||^2
   against the linear state *before* this token's fold; ``recency``: its birth (newest stays);
   ``random``: a fixed pseudo-random number drawn from (birth, head), so G holds a uniform random
   sample of the pairs that left the window; invalid (empty) candidates get -inf;
3. the candidate with the lowest priority (the victim) leaves: it is folded into (S, z) if valid;
4. o_n = [(1-g) sum_{W u G} e^{q.k*scale - m} v + g e^{-m} phi(q)^T S] /
         [(1-g) sum_{W u G} e^{q.k*scale - m} + g e^{-m} phi(q)^T z],  m = max(0, max q.k*scale).

G is stored in a canonical order: valid pairs by birth, then the empty slots (zeroed). The
decisions (2-3) carry no gradient; the values they route do. The reference step calls the helpers
below; the chunk form's decision scan (``chunk._lola_decisions``) repeats :func:`recall_error_norm`
and :func:`fold` op for op on preallocated buffers (same shapes, same roundings), so both take the
same decisions (up to exact ties of SRE between two valid pairs, which only permute equal-priority
pairs). Change one, change the other: ``test_lola_chunk_takes_the_step_loops_exact_decisions...``
checks the recall errors agree bit for bit.
"""
from __future__ import annotations

import torch

from lifelong.kernels.attention.states import SELECTIONS
from lifelong.kernels.utils.checks import check_choice

#: added to phi(k)^T z when predicting a value from the linear state (empty state: prediction 0)
RECALL_EPS = 1e-6
#: keeps o finite when nothing at all is stored (cannot happen with phi > 0 unless everything underflows)
DEN_EPS = 1e-30
#: sort key of empty cache slots (after every valid birth)
_EMPTY_KEY = torch.iinfo(torch.long).max - 1


def check_selection(selection: str) -> None:
    """``selection`` must be one of :data:`SELECTIONS`."""
    check_choice("selection", selection, SELECTIONS)


def fold(
    S: torch.Tensor, z: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the pairs where ``valid`` to the linear state (elementwise, no matmul: exact products).

    S ``[B, H, K, V]``, z ``[B, H, K]``, phi_k ``[B, H, K]``, v ``[B, H, V]``, valid ``[B, H]`` bool.
    """
    phi_k = phi_k * valid[..., None]
    return S + phi_k[..., :, None] * v[..., None, :], z + phi_k


def augment(S: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """[S | z]: ``[..., K, V]`` and ``[..., K]`` -> ``[..., K, V + 1]`` (one matmul reads both)."""
    return torch.cat([S, z[..., None]], dim=-1)


def recall_error_norm(phi_k: torch.Tensor, vz: torch.Tensor, SZ: torch.Tensor) -> torch.Tensor:
    """sqrt(SRE): ||phi(k)^T S / (phi(k)^T z) - v|| for candidates phi_k ``[N, n, K]``,
    vz = [v | 1] ``[N, n, V + 1]``, SZ = [S | z] ``[N, K, V + 1]`` -> ``[N, n]``."""
    out = phi_k @ SZ
    pred = out[..., :-1] / (out[..., -1:] + RECALL_EPS)
    return torch.linalg.vector_norm(pred - vz[..., :-1], dim=-1)


def hash_uniform(birth: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Pseudo-random numbers in [0, 1) from (birth ``[B, H, n]`` int64, head): ``[B, H, n]`` fp32.

    Integer hashing (exact on every device), so a step loop and a chunked forward draw the same.
    """
    mask = 0x7FFFFFFF
    h = torch.arange(num_heads, device=birth.device, dtype=torch.long).view(1, -1, *([1] * (birth.dim() - 2)))
    x = ((birth & mask) * 0x5BD1E995 + h * 0x27D4EB2F + 0x3C6EF372) & mask
    for mult in (0x45D9F3B, 0x2C1B3C6D):
        x = x ^ (x >> 15)
        x = (x * mult) & mask
    x = x ^ (x >> 16)
    return x.to(torch.float32) / float(mask + 1)


def static_priority(selection: str, birth: torch.Tensor, count: torch.Tensor) -> torch.Tensor | None:
    """Keep-priority that does not depend on the linear state: birth ``[B, H, n]``, count ``[B]``.

    ``recency``: birth relative to now (small exact floats); ``random``: hash of (birth, head);
    ``sre``: None (computed at each decision).
    """
    check_selection(selection)
    if selection == "recency":
        return (birth - count.view(-1, *([1] * (birth.dim() - 1)))).to(torch.float32)
    if selection == "random":
        return hash_uniform(birth, birth.shape[1])
    return None


def candidate_scores(
    selection: str, phi_k: torch.Tensor, vz: torch.Tensor, SZ: torch.Tensor, prio: torch.Tensor | None,
    valid: torch.Tensor, need_sre: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Priority of every candidate ``[N, n]`` (-inf where invalid) and, when computed, sqrt(SRE).

    phi_k ``[N, n, K]``, vz ``[N, n, V + 1]``, SZ ``[N, K, V + 1]``, prio ``[N, n]`` (non-sre).
    """
    sre = recall_error_norm(phi_k, vz, SZ) if (selection == "sre" or need_sre) else None
    score = sre if selection == "sre" else prio
    return torch.where(valid, score, float("-inf")), sre


def canonical_order(valid: torch.Tensor, birth: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Slots in canonical cache order: valid ones by birth, then the empty ones; ``drop`` slots last.

    valid, drop ``[..., n]`` bool, birth ``[..., n]`` int64 -> permutation ``[..., n]``.
    """
    key = torch.where(valid, birth, _EMPTY_KEY)
    key = torch.where(drop, _EMPTY_KEY + 1, key)
    return torch.sort(key, dim=-1, stable=True).indices


def gather_slots(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x ``[B, H, n, *F]`` at index ``[B, H, m]`` -> ``[B, H, m, *F]`` (``index [B, H]`` -> ``[B, H, *F]``)."""
    squeeze = index.dim() == 2
    idx = index[..., None] if squeeze else index
    feat = x.shape[3:]
    idx = idx.reshape(*idx.shape, *([1] * len(feat))).expand(*idx.shape, *feat)
    out = torch.gather(x, 2, idx)
    return out[:, :, 0] if squeeze else out


def mix(
    num_soft: torch.Tensor, den_soft: torch.Tensor, m: torch.Tensor, lin_num: torch.Tensor,
    lin_den: torch.Tensor, gate: torch.Tensor,
) -> torch.Tensor:
    """Combine the exact part and the linear part of every query.

    num_soft ``[B, H, ..., V]`` = sum e^{s - m} v, den_soft ``[B, H, ...]`` = sum e^{s - m},
    m ``[B, H, ...]`` (>= 0), lin_num ``[B, H, ..., V]`` = phi(q)^T S, lin_den ``[B, H, ...]`` =
    phi(q)^T z, gate ``[H]`` in [0, 1] -> o ``[B, H, ..., V]``.
    """
    g = gate.view(1, -1, *([1] * (den_soft.dim() - 2))).to(den_soft.dtype)
    w_lin = g * torch.exp(-m)
    num = (1 - g)[..., None] * num_soft + w_lin[..., None] * lin_num
    den = (1 - g) * den_soft + w_lin * lin_den + DEN_EPS
    return num / den[..., None]


def score_max(scores: torch.Tensor) -> torch.Tensor:
    """m = max(0, max over the last dim) of masked scores ``[..., n]`` (no gradient): ``[...]``."""
    if scores.shape[-1] == 0:
        return scores.new_zeros(scores.shape[:-1])
    return scores.detach().amax(-1).clamp_min(0.0)
