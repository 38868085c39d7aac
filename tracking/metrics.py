"""Continual-learning figures computed from the performance matrix R (DESIGN.md section 7).

Pure functions on numpy arrays; no torch, no I/O. ``docs/metrics.md`` is the long form.

Notation
--------
``R`` is ``[K, N]``: row ``k`` is a probe taken at the end of the k-th task *block* (0-based), column
``j`` one of the N unique tasks (order of first appearance); ``R[k, j]`` is task j's success rate in
[0, 1] (or normalised return). NaN marks an entry that was not measured (a task not yet seen and not
the next one, or a task left out of a partial final probe). ``block_tasks`` is ``[K]``: the column of
the task trained during block k. The default ``block_tasks = [0, 1, ..., K-1]`` is the classic
setting of the GEM paper (task k learned in block k, no revisits); with revisits (A B C A B C)
``K > N`` and a task has several blocks. ``baseline`` is ``[N]``: b_j, the untrained agent's
performance (the probe at step 0).

For task j let ``first(j)`` / ``last(j)`` be the first / last block in which it is trained,
``F = K - 1`` the final row and ``f = block_tasks[F]`` the task of the final block. Two task sets
recur below:

- ``J_old`` = trained tasks other than f (the tasks *not* trained in the final block). Without
  revisits this is exactly the literature's "j < T" (every task but the last); with revisits it
  also drops a task revisited in the final block, whose final value is fresh relearning, not
  retention.
- ``J_new`` = trained tasks with first(j) >= 1 (every task but the one learned first).

Tasks never trained (absent from ``block_tasks``) are left out of every average. Every figure
ignores NaN terms (an unmeasured entry drops its task from that average, it is never read as 0); a
figure with no defined term is NaN, never 0 (one task only: forgetting, BWT, FWT are NaN).

=================  ============================================  ====================  ==============================
figure             formula (ours, 0-based rows, F = K - 1)       source                extension (revisits, partial)
=================  ============================================  ====================  ==============================
acc                mean_{j trained} R[F, j]                      GEM Sec. 2, ACC       never-trained tasks left out
bwt                mean_{j in J_old} R[F, j] - R[first(j), j]    GEM Sec. 2, BWT       J_old; R_ii after j's *first*
                                                                                       block
fwt                mean_{j in J_new} R[first(j)-1, j] - b_j      GEM Sec. 2, FWT       R_{i-1,i} just before j's
                                                                                       first block
forgetting         mean_{j in J_old} f_j, f_j =                  RWalk, f_j^k and F_k  max from first(j); J_old
                   max_{first(j)<=l<F} R[l, j] - R[F, j]
forgetting_cw      mean_{j in J_old} R[last(j), j] - R[F, j]     Continual World, F_i  after j's *last* block; mean
                   (per task: 0 for the final block's task)                            over J_old, not 1/N
learning_accuracy  mean_k R[k, block_tasks[k]]                   MER, LA               every block counts
retention          1 - forgetting                                stability side        J_old, so <= 1 unless
                                                                                       genuine positive transfer
forward_transfer   (AUC_j - AUC_j^ref) / (1 - AUC_j^ref), AUC =  Continual World, FT_i  probe points, trapezoid,
_cw                ``evaluated_auc`` over j's first block                              held ends
=================  ============================================  ====================  ==============================

Sources: GEM = Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"; RWalk =
Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"; Continual World = Wolczyk et al.
2021; MER = Riemer et al. 2019, "Learning to Learn without Forgetting by Maximizing Transfer and
Minimizing Interference".

Implementation: every figure is computed by one batched routine on ``[n, K, N]`` stacks of R so that
the bootstrap in ``tracking/confidence.py`` recomputes exactly the same definitions per replicate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "average_accuracy",
    "forgetting_chaudhry",
    "forgetting_continual_world",
    "backward_transfer",
    "forward_transfer",
    "learning_accuracy",
    "retention",
    "evaluated_auc",
    "normalized_auc",
    "forward_transfer_cw",
    "cl_metrics",
    "SCALAR_FIGURES",
]

#: The scalar keys of ``cl_metrics`` (the per-task lists are the two ``*_per_task`` keys).
SCALAR_FIGURES = ("acc", "forgetting", "forgetting_cw", "bwt", "fwt", "learning_accuracy", "retention")


# ---- schedule bookkeeping ----------------------------------------------------------------------
def _check(R: np.ndarray, block_tasks: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate R ``[K, N]`` and block_tasks ``[K]``; return them as float / int arrays."""
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"R must be a non-empty [K blocks, N tasks] matrix, got shape {R.shape}")
    return R, _check_schedule(R.shape, block_tasks)


def _check_schedule(shape: tuple[int, int], block_tasks: Sequence[int] | None) -> np.ndarray:
    K, N = shape
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
    return bt


def _check_baseline(baseline: Sequence[float] | None, N: int) -> np.ndarray | None:
    if baseline is None:
        return None
    b = np.asarray(baseline, dtype=float)
    if b.shape != (N,):
        raise ValueError(f"baseline must have one entry per task column ({N}), got shape {b.shape}")
    return b


@dataclass(frozen=True)
class _Schedule:
    """Index sets derived from block_tasks (see the module docstring)."""

    K: int
    N: int
    bt: np.ndarray        # [K] task column per block
    first: np.ndarray     # [N] first block of each task, -1 if never trained
    last: np.ndarray      # [N] last block of each task, -1 if never trained
    trained: np.ndarray   # column indices of tasks trained at least once
    old: np.ndarray       # J_old: trained tasks not trained in the final block
    new: np.ndarray       # J_new: trained tasks first trained after block 0
    final_task: int       # f = block_tasks[F]

    @classmethod
    def of(cls, bt: np.ndarray, N: int) -> _Schedule:
        K = bt.shape[0]
        first = np.full(N, -1)
        last = np.full(N, -1)
        for k, j in enumerate(bt):
            if first[j] < 0:
                first[j] = k
            last[j] = k
        trained = np.flatnonzero(first >= 0)
        final_task = int(bt[-1])
        return cls(
            K=K, N=N, bt=bt, first=first, last=last, trained=trained,
            old=trained[trained != final_task], new=np.flatnonzero(first >= 1), final_task=final_task,
        )


def _nanmean_last(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring non-finite terms; NaN (no warning) where none is finite."""
    ok = np.isfinite(a)
    count = ok.sum(axis=-1)
    total = np.where(ok, a, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


# ---- batched definitions: Rb is [n, K, N], bb is [n, N] ---------------------------------------
def _acc_b(Rb: np.ndarray, s: _Schedule) -> np.ndarray:
    return _nanmean_last(Rb[:, -1, s.trained])


def _forgetting_chaudhry_b(Rb: np.ndarray, s: _Schedule) -> np.ndarray:
    out = np.full((Rb.shape[0], s.N), np.nan)
    for j in s.old:  # first(j) < F for every j in J_old, so the window below is never empty
        past = Rb[:, s.first[j] : s.K - 1, j]
        best = np.where(np.isfinite(past), past, -np.inf).max(axis=1)
        best[np.isneginf(best)] = np.nan
        out[:, j] = best - Rb[:, -1, j]
    return out


def _forgetting_cw_b(Rb: np.ndarray, s: _Schedule) -> np.ndarray:
    out = np.full((Rb.shape[0], s.N), np.nan)
    out[:, s.old] = Rb[:, s.last[s.old], s.old] - Rb[:, -1, s.old]
    out[:, s.final_task] = 0.0  # Continual World: the task trained last has not been forgotten
    return out


def _bwt_b(Rb: np.ndarray, s: _Schedule) -> np.ndarray:
    return _nanmean_last(Rb[:, -1, s.old] - Rb[:, s.first[s.old], s.old])


def _fwt_b(Rb: np.ndarray, bb: np.ndarray | None, s: _Schedule) -> np.ndarray:
    if bb is None:
        return np.full(Rb.shape[0], np.nan)
    return _nanmean_last(Rb[:, s.first[s.new] - 1, s.new] - bb[:, s.new])


def _la_b(Rb: np.ndarray, s: _Schedule) -> np.ndarray:
    return _nanmean_last(Rb[:, np.arange(s.K), s.bt])


def _cl_figures_batch(Rb: np.ndarray, s: _Schedule, bb: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every figure for a stack of matrices: scalars ``[n]``, ``*_per_task`` ``[n, N]``."""
    f_ch = _forgetting_chaudhry_b(Rb, s)
    f_cw = _forgetting_cw_b(Rb, s)
    forgetting = _nanmean_last(f_ch)
    return {
        "acc": _acc_b(Rb, s),
        "forgetting": forgetting,
        "forgetting_cw": _nanmean_last(f_cw[:, s.old]),
        "bwt": _bwt_b(Rb, s),
        "fwt": _fwt_b(Rb, bb, s),
        "learning_accuracy": _la_b(Rb, s),
        "retention": 1.0 - forgetting,
        "forgetting_per_task": f_ch,
        "forgetting_cw_per_task": f_cw,
    }


def _one(R: np.ndarray, block_tasks: Sequence[int] | None) -> tuple[np.ndarray, _Schedule]:
    R, bt = _check(R, block_tasks)
    return R[None], _Schedule.of(bt, R.shape[1])


# ---- public figures --------------------------------------------------------------------------
def average_accuracy(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """Average accuracy ACC = (1/T) sum_{i=1}^{T} R_{T,i}.

    Source: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning", Sec. 2
    (the ACC display). Ours: ``ACC = mean_{j trained} R[F, j]`` over the final row, F = K - 1.

    Extension: with revisits T is the number of *distinct* tasks trained; tasks never trained are
    left out; a task unmeasured in the final row (NaN, partial final probe) drops out of the mean.
    """
    Rb, s = _one(R, block_tasks)
    return float(_acc_b(Rb, s)[0])


def forgetting_chaudhry(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> np.ndarray:
    """Per-task forgetting ``[N]``: f_j = max_{first(j) <= l <= F-1} R[l, j] - R[F, j].

    Source: Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning" (RWalk), the
    forgetting measure f_j^k = max_{l in {1..k-1}} a_{l,j} - a_{k,j} for j < k, averaged as
    F_k = 1/(k-1) sum_{j<k} f_j^k; we report k = the final block.

    Extension: the max starts at first(j) (rows before j was first trained measure an untrained
    task, not knowledge that could be forgotten) and ends at F-1. Defined only for j in J_old, the
    trained tasks *not* trained in the final block (the literature's j < k). Without revisits that
    is "every task but the last"; with revisits a task revisited in the final block is excluded
    too, since its final value is relearning, not retention (it used to enter as negative
    forgetting and pushed retention above 1). NaN for every other task, and where R[F, j] or all
    of the past rows are unmeasured. The mean ``cl_metrics()["forgetting"]`` runs over J_old.
    """
    Rb, s = _one(R, block_tasks)
    return _forgetting_chaudhry_b(Rb, s)[0]


def forgetting_continual_world(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> np.ndarray:
    """Per-task forgetting ``[N]``, Continual World form: F_j = R[last(j), j] - R[F, j].

    Source: Wolczyk et al. 2021, "Continual World: A Robotic Benchmark for Continual Reinforcement
    Learning", metrics: F_i = p_i(i * Delta) - p_i(T), success at the end of task i's
    training minus at the end of the run; the task trained last has F = 0.

    Extension: with revisits "end of its training" is the end of j's *last* block. The task of the
    final block has F_j = 0 exactly (as in CW, also with one task); tasks never trained are NaN.
    Averaging: Continual World divides by N including that 0; we average over the same set J_old
    as ``forgetting_chaudhry`` so the two forgetting figures differ only in their reference value
    (best past vs end of last block). Without revisits ours = N / (N - 1) * CW's mean.
    """
    Rb, s = _one(R, block_tasks)
    return _forgetting_cw_b(Rb, s)[0]


def backward_transfer(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """BWT = 1/(T-1) sum_{i=1}^{T-1} (R_{T,i} - R_{i,i}).

    Source: Lopez-Paz & Ranzato 2017 (GEM), Sec. 2, the BWT display (the paper's formula; its
    released code averages differently). Ours: ``mean_{j in J_old} R[F, j] - R[first(j), j]``.

    Extension: the sum "i < T" becomes J_old, every trained task *not* trained in the final block
    (a task revisited in the final block is left out, as is the last task in GEM). R_{i,i} is read
    at the end of task j's *first* block, so with revisits BWT is the net change since the task was
    first learned (relearning on intermediate revisits included; ``forgetting_cw`` measures the
    change since the last visit). NaN when J_old is empty (one task, or one block).
    """
    Rb, s = _one(R, block_tasks)
    return float(_bwt_b(Rb, s)[0])


def forward_transfer(
    R: np.ndarray, baseline: Sequence[float], block_tasks: Sequence[int] | None = None
) -> float:
    """FWT = 1/(T-1) sum_{i=2}^{T} (R_{i-1,i} - b_i).

    Source: Lopez-Paz & Ranzato 2017 (GEM), Sec. 2, the FWT display; b_i is the test performance
    of the untrained (randomly initialised) model. Ours: ``mean_{j in J_new} R[first(j)-1, j] - b_j``.

    Extension: R_{i-1,i} is the probe at the end of the block just before j's *first* block; every
    task but the one learned first enters once. NaN with one task, or where the entry or b_j is
    unmeasured.
    """
    R, bt = _check(R, block_tasks)
    b = _check_baseline(baseline, R.shape[1])
    if b is None:
        return math.nan
    return float(_fwt_b(R[None], b[None], _Schedule.of(bt, R.shape[1]))[0])


def learning_accuracy(R: np.ndarray, block_tasks: Sequence[int] | None = None) -> float:
    """LA = (1/T) sum_i R_{i,i}: performance on each task right after it is learned.

    Source: Riemer et al. 2019, "Learning to Learn without Forgetting by Maximizing Transfer and
    Minimizing Interference" (MER): learning accuracy (LA), reported beside retained accuracy (RA).
    Ours: ``LA = (1/K) sum_k R[k, block_tasks[k]]``.

    Extension: with revisits every block counts (not only first visits), so a loss of plasticity
    late in the lifetime lowers LA. Equals the published form without revisits.
    """
    Rb, s = _one(R, block_tasks)
    return float(_la_b(Rb, s)[0])


def retention(forgetting: Sequence[float]) -> float:
    """Stability: 1 - mean_j f_j over the defined per-task forgetting values (NaN if none).

    Pass ``forgetting_chaudhry(R, block_tasks)``: its values are NaN outside J_old, so the mean is
    the published average forgetting and a task relearned in the final block cannot push retention
    above 1. It can exceed 1 only by genuine positive backward transfer (a task not trained in the
    final block ending above every earlier measurement), which the published f_j keeps as a
    negative term.
    """
    return 1.0 - _nanmean(forgetting)


def evaluated_auc(steps: Sequence[float], success: Sequence[float], start: float, end: float) -> float:
    """Area under the *evaluated* success curve p_j(t) over ``[start, end]``, time normalised to [0, 1].

    ``steps`` / ``success`` ``[P]``: probe points (lifetime step, success of task j with learning
    off), in any order. AUC = 1/(end - start) * integral p(t) dt by the trapezoid rule over the
    finite points with ``start <= step <= end``. The point at ``start`` may be the probe taken at
    the end of the previous block (p_j just before training on j starts). Where the first / last
    point lies inside the span, the curve is held constant from ``start`` to the first point and
    from the last point to ``end`` (no extrapolation of a trend); several points at one step are
    averaged. One point: its value. No point in the span: NaN.

    Source: Wolczyk et al. 2021 (Continual World), metrics: AUC_i = 1/Delta integral over task i's
    training of p_i(t) dt, with p_i the *evaluated* success; use this (not training episodes) for
    ``forward_transfer_cw``, with a reference run of the same length.
    """
    if not end > start:
        raise ValueError(f"evaluated_auc needs end > start, got start={start}, end={end}")
    s = np.asarray(steps, dtype=float).ravel()
    v = np.asarray(success, dtype=float).ravel()
    if s.shape != v.shape:
        raise ValueError(f"steps and success must have the same shape, got {s.shape} and {v.shape}")
    keep = (s >= start) & (s <= end) & np.isfinite(v) & np.isfinite(s)
    s, v = s[keep], v[keep]
    if s.size == 0:
        return math.nan
    t, inverse = np.unique(s, return_inverse=True)
    p = np.bincount(inverse, weights=v) / np.bincount(inverse)
    t = np.concatenate(([start], t, [end]))
    p = np.concatenate(([p[0]], p, [p[-1]]))
    area = float(np.sum((t[1:] - t[:-1]) * (p[1:] + p[:-1]) / 2.0))
    return area / (end - start)


def normalized_auc(
    steps: Sequence[float], values: Sequence[float], start: float, end: float, n_bins: int = 20
) -> float:
    """Binned area under a *training-episode* curve over ``[start, end]``, time normalised to [0, 1].

    Kept for ``tracking/tracker.py:first_block_auc`` (the training-stream AUC it still uses);
    Continual World forward transfer is defined on the evaluated curve: use ``evaluated_auc``.

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

    Source: Wolczyk et al. 2021 (Continual World), metrics. AUC_j: ``evaluated_auc`` of task j's
    evaluated success over its first block; AUC_j^ref: the same for a single-task reference run of
    the same length. NaN when either is missing or AUC_ref >= 1 (the reference leaves no room to
    improve, the ratio is undefined).
    """
    if not (math.isfinite(auc) and math.isfinite(auc_ref)) or auc_ref >= 1.0:
        return math.nan
    return (auc - auc_ref) / (1.0 - auc_ref)


def cl_metrics(
    R: np.ndarray,
    block_tasks: Sequence[int] | None = None,
    baseline: Sequence[float] | None = None,
) -> dict[str, float | list[float]]:
    """Every figure from R ``[K, N]``, block_tasks ``[K]`` and baseline ``[N]`` (None: FWT is NaN).

    Keys: ``acc``, ``forgetting`` (mean Chaudhry over J_old), ``forgetting_cw`` (mean Continual
    World over J_old), ``bwt``, ``fwt``, ``learning_accuracy``, ``retention`` (1 - forgetting), and
    the per-task lists ``forgetting_per_task`` / ``forgetting_cw_per_task`` ``[N]``. NaN where
    undefined (see each function).
    """
    R, bt = _check(R, block_tasks)
    b = _check_baseline(baseline, R.shape[1])
    out = _cl_figures_batch(R[None], _Schedule.of(bt, R.shape[1]), None if b is None else b[None])
    figures: dict[str, float | list[float]] = {name: float(out[name][0]) for name in SCALAR_FIGURES}
    figures["forgetting_per_task"] = out["forgetting_per_task"][0].tolist()
    figures["forgetting_cw_per_task"] = out["forgetting_cw_per_task"][0].tolist()
    return figures
