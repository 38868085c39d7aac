"""Continual-learning figures computed from the performance matrix R (DESIGN.md section 7).

Pure functions on numpy arrays; no torch, no I/O.

Notation
--------
``R`` is ``[K, N]``: row ``k`` is a probe taken at the end of the k-th task *block* (0-based), column
``j`` one of the N unique tasks (order of first appearance); ``R[k, j]`` is task j's success rate in
[0, 1]. NaN marks an entry that was not measured (e.g. a task not yet seen and not the next one).
``block_tasks`` is ``[K]``: the column of the task trained during block k. The default
``block_tasks = [0, 1, ..., K-1]`` is the classic setting of the GEM paper (task k learned in block
k, no revisits); with revisits (A B C A B C) ``K > N`` and a task has several blocks.
``baseline`` is ``[N]``: b_j, the untrained agent's performance (the probe at step 0).

For task j let ``first(j)`` / ``last(j)`` be the first / last block in which it is trained and
``F = K - 1`` the final row. Tasks never trained (not in ``block_tasks``) are left out of every
average. Every function ignores NaN entries; a figure with no defined term is NaN (never 0), e.g.
one task only: forgetting, BWT and FWT are all NaN (undefined), ACC = LA = R[0, 0].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_accuracy",
    "forgetting_chaudhry",
    "forgetting_continual_world",
    "backward_transfer",
    "forward_transfer",
    "learning_accuracy",
    "retention",
    "normalized_auc",
    "forward_transfer_cw",
    "cl_metrics",
]


def _check(R: np.ndarray, block_tasks: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate R ``[K, N]`` and block_tasks ``[K]``; return them as float / int arrays."""
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"R must be a non-empty [K blocks, N tasks] matrix, got shape {R.shape}")
    K, N = R.shape
    if block_tasks is None:
        if K > N:
            raise ValueError(
                f"R has {K} rows (blocks) but only {N} task columns: pass block_tasks (the task "
                f"column trained in each block) for a schedule with revisits"
            )
        block_tasks = range(K)
    bt = np.asarray(list(block_tasks), dtype=int)
    if bt.shape != (K,):
        raise ValueError(f"block_tasks must have one entry per row of R ({K}), got {bt.shape[0]}")
    if (bt < 0).any() or (bt >= N).any():
        raise ValueError(f"block_tasks entries must be task columns in [0, {N}), got {bt.tolist()}")
    return R, bt


def _first_last(bt: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """first(j), last(j) ``[N]`` (-1 for tasks never trained)."""
    first = np.full(N, -1)
    last = np.full(N, -1)
    for k, j in enumerate(bt):
        if first[j] < 0:
            first[j] = k
        last[j] = k
    return first, last


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def average_accuracy(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """ACC = (1/N') sum_j R[F, j] over the N' tasks trained at least once (final row)."""
    R, bt = _check(R, block_tasks)
    trained = np.unique(bt)
    return _nanmean(R[-1, trained])


def forgetting_chaudhry(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> np.ndarray:
    """Per-task forgetting ``[N]``: F_j = max_{first(j) <= k < F} R[k, j] - R[F, j] (Chaudhry 2018).

    The max runs over the rows since j was first learned (rows before that measure an untrained
    task). Defined only for tasks first trained before the final block, NaN otherwise (so the task
    of the final block, and every task when there is one block, is NaN).
    """
    R, bt = _check(R, block_tasks)
    K, N = R.shape
    first, _ = _first_last(bt, N)
    out = np.full(N, math.nan)
    for j in range(N):
        if 0 <= first[j] < K - 1:
            past = R[first[j] : K - 1, j]
            past = past[np.isfinite(past)]
            if past.size and np.isfinite(R[-1, j]):
                out[j] = past.max() - R[-1, j]
    return out


def forgetting_continual_world(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> np.ndarray:
    """Per-task forgetting ``[N]``, Continual World form: F_j = R[last(j), j] - R[F, j].

    p_j at the end of its (most recent) block minus p_j at the end of the run. As in Continual
    World, the task trained in the final block has F_j = 0 by definition (also with one task);
    tasks never trained are NaN.
    """
    R, bt = _check(R, block_tasks)
    N = R.shape[1]
    _, last = _first_last(bt, N)
    out = np.full(N, math.nan)
    for j in range(N):
        if last[j] >= 0:
            out[j] = R[last[j], j] - R[-1, j]
    return out


def backward_transfer(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """BWT = 1/|J| sum_{j in J} (R[F, j] - R[first(j), j]), J = tasks first trained before F.

    The GEM paper's formula BWT = 1/(T-1) sum_{i<T} (R[T, i] - R[i, i]); with revisits R[i, i] is
    read at the end of task i's first block, so relearning on a revisit counts as backward
    transfer. NaN with a single block (nothing learned afterwards).
    """
    R, bt = _check(R, block_tasks)
    K, N = R.shape
    first, _ = _first_last(bt, N)
    return _nanmean(R[-1, j] - R[first[j], j] for j in range(N) if 0 <= first[j] < K - 1)


def forward_transfer(
    R: np.ndarray, baseline: Sequence[float], block_tasks: Sequence[int] | None = None
) -> float:
    """FWT = 1/|J| sum_{j in J} (R[first(j) - 1, j] - b_j), J = tasks first trained after block 0.

    The GEM paper's formula FWT = 1/(T-1) sum_{i>=2} (R[i-1, i] - b_i): performance on a task just
    before it is first trained, over the untrained agent's. NaN with one task, or without b.
    """
    R, bt = _check(R, block_tasks)
    K, N = R.shape
    b = np.asarray(baseline, dtype=float)
    if b.shape != (N,):
        raise ValueError(f"baseline must have one entry per task column ({N}), got shape {b.shape}")
    first, _ = _first_last(bt, N)
    return _nanmean(R[first[j] - 1, j] - b[j] for j in range(N) if first[j] >= 1)


def learning_accuracy(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """LA = (1/K) sum_k R[k, block_tasks[k]]: performance on each block's task at its end.

    Equals the (1/N) sum_j R[j, j] of DESIGN.md without revisits; with revisits every block counts,
    so a loss of plasticity late in the lifetime lowers LA.
    """
    R, bt = _check(R, block_tasks)
    return _nanmean(R[np.arange(R.shape[0]), bt])


def retention(forgetting: Sequence[float]) -> float:
    """Stability: 1 - mean_j F_j over the defined per-task forgetting values (NaN if none)."""
    return 1.0 - _nanmean(forgetting)


def normalized_auc(
    steps: Sequence[float], values: Sequence[float], start: float, end: float, n_bins: int = 20
) -> float:
    """Area under a learning curve over ``[start, end]``, with time normalised to [0, 1].

    The span is cut into ``n_bins`` equal bins; a bin's value is the mean of the points falling in
    it, an empty bin repeats the previous one (a step function between measurements), leading
    empty bins are skipped. Returns the mean over bins (in [0, 1] for success rates), NaN if no
    point lies in the span.
    """
    if not end > start:
        raise ValueError(f"normalized_auc needs end > start, got start={start}, end={end}")
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    if s.shape != v.shape:
        raise ValueError(f"steps and values must have the same shape, got {s.shape} and {v.shape}")
    keep = (s >= start) & (s <= end) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size == 0:
        return math.nan
    idx = np.minimum(((s - start) / (end - start) * n_bins).astype(int), n_bins - 1)
    sums = np.bincount(idx, weights=v, minlength=n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    bins: list[float] = []
    prev = math.nan
    for total, count in zip(sums, counts):
        if count:
            prev = total / count
        if not math.isnan(prev):
            bins.append(prev)
    return float(np.mean(bins))


def forward_transfer_cw(auc: float, auc_ref: float) -> float:
    """Continual World forward transfer FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref).

    AUC_j: normalised area under task j's success curve during its first block; AUC_j^ref: the same
    for a single-task reference run. NaN when either is missing or AUC_ref = 1 (the reference
    leaves no room to improve, the ratio is undefined).
    """
    if not (math.isfinite(auc) and math.isfinite(auc_ref)) or auc_ref >= 1.0:
        return math.nan
    return (auc - auc_ref) / (1.0 - auc_ref)


def cl_metrics(
    R: np.ndarray,
    block_tasks: Sequence[int] | None = None,
    baseline: Sequence[float] | None = None,
) -> dict[str, float | list[float]]:
    """Every figure from R: acc, forgetting (mean Chaudhry), forgetting_cw (mean CW), bwt, fwt,
    learning_accuracy, retention, and the per-task lists ``forgetting_per_task`` /
    ``forgetting_cw_per_task`` ``[N]``. NaN where undefined (see each function)."""
    R, bt = _check(R, block_tasks)
    f_ch = forgetting_chaudhry(R, bt)
    f_cw = forgetting_continual_world(R, bt)
    fwt = forward_transfer(R, baseline, bt) if baseline is not None else math.nan
    return {
        "acc": average_accuracy(R, bt),
        "forgetting": _nanmean(f_ch),
        "forgetting_cw": _nanmean(f_cw),
        "bwt": backward_transfer(R, bt),
        "fwt": fwt,
        "learning_accuracy": learning_accuracy(R, bt),
        "retention": retention(f_ch),
        "forgetting_per_task": f_ch.tolist(),
        "forgetting_cw_per_task": f_cw.tolist(),
    }
