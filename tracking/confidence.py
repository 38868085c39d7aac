"""95% confidence intervals for probe entries, for the figures of R, and across seeds (DESIGN.md
section 7: "every R entry and every figure from R carries a 95% confidence interval").

Pure numpy (no scipy). ``docs/metrics.md`` describes the method.

Shapes
------
A *probe entry* is a float array ``x [B, E]``: B lifetimes (independent agents run side by side,
the same B for every entry of one run), E evaluation episodes per lifetime for that entry (success
0/1 or a normalised return; E may differ between entries). The entry's value in R is ``x.mean()``.

- ``entry_ci``: interval for one entry by a two-stage (hierarchical) bootstrap: draw B lifetimes
  with replacement, then, inside each drawn lifetime, E of its episodes with replacement; the
  replicate is the mean of the drawn episodes. Percentile interval. This keeps the between-lifetime
  variance (often the larger part for in-context learners) and the within-lifetime episode noise.
- ``cl_metrics_ci``: the same bootstrap for every figure of ``tracking.metrics.cl_metrics``. A
  lifetime is one agent, so its entries are correlated: each replicate draws ONE set of lifetime
  indices shared by every entry (and by the baseline entries), then episodes independently per
  entry; R (and b) are recomputed from the replicate and so is every figure, with the very same
  batched definitions as ``cl_metrics``.
- ``mean_ci_over_seeds``: Student-t interval of a figure over independent seeds (runs).

Every random draw comes from ``numpy.random.default_rng(seed)`` in a fixed order: results are
deterministic given the seed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from lifelong.tracking.metrics import SCALAR_FIGURES, _cl_figures_batch, _check_schedule, _Schedule

__all__ = ["entry_ci", "cl_metrics_ci", "mean_ci_over_seeds", "student_t_quantile"]

_CHUNK_ELEMENTS = 1 << 22  # gathered values per chunk of replicates (bounds memory for large B * E)

Rng = np.random.Generator | int | None


def _generator(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_level(level: float, n_boot: int | None = None) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a coverage probability in (0, 1), e.g. 0.95; got {level}")
    if n_boot is not None and n_boot < 1:
        raise ValueError(f"n_boot must be a positive number of bootstrap replicates, got {n_boot}")


def _entry(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where}: a probe entry is [B lifetimes, E episodes], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: probe entry has non-finite values (pass None for an unmeasured entry)")
    return x


def _percentile(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite replicate values; (nan, nan) if there is none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _resampled_means(x: np.ndarray, lifetimes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two-stage bootstrap means ``[n]`` of entry ``x [B, E]`` given drawn lifetimes ``[n, B]``."""
    n, B = lifetimes.shape
    E = x.shape[1]
    out = np.empty(n)
    step = max(1, _CHUNK_ELEMENTS // (B * E))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        episodes = rng.integers(0, E, size=(hi - lo, B, E))
        out[lo:hi] = x[lifetimes[lo:hi, :, None], episodes].mean(axis=(1, 2))
    return out


def entry_ci(
    x: np.ndarray, n_boot: int = 2000, level: float = 0.95, rng: Rng = None
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of one probe entry ``x [B, E]``.

    Two-stage bootstrap: B lifetimes drawn with replacement, then E episodes drawn with replacement
    inside each drawn lifetime; the replicate is their mean. With B = 1 only episodes are
    resampled. A constant entry gives a zero-width interval. ``rng``: a Generator or a seed.
    """
    _check_level(level, n_boot)
    x = _entry(x, "entry_ci")
    gen = _generator(rng)
    lifetimes = gen.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    return _percentile(_resampled_means(x, lifetimes, gen), level)


def cl_metrics_ci(
    entries: Sequence[Sequence[np.ndarray | None]],
    block_tasks: Sequence[int] | None = None,
    baseline_entries: Sequence[np.ndarray | None] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals ``{name: (low, high)}`` for every scalar figure of ``cl_metrics``.

    ``entries``: ``[K][N]`` nested lists, ``entries[k][j]`` the probe of task j at the end of block k
    as ``[B, E_kj]`` (the same B lifetimes everywhere), or None where unmeasured (NaN in R).
    ``block_tasks [K]`` as in ``cl_metrics``. ``baseline_entries``: ``[N]`` step-0 probes
    ``[B, E_j]`` or None (None overall: FWT has no interval).

    Each of the ``n_boot`` replicates draws one set of B lifetime indices shared by every entry and
    baseline entry (a lifetime's entries are correlated), then episodes independently inside each
    entry; it recomputes R ``[K, N]`` and b ``[N]`` as means and every figure from them. Names:
    ``acc, forgetting, forgetting_cw, bwt, fwt, learning_accuracy, retention``. A figure that is
    NaN in the point estimate (``cl_metrics`` on the entry means) gets ``(nan, nan)``.
    """
    _check_level(level, n_boot)
    K = len(entries)
    if K == 0:
        raise ValueError("entries must have one row per probed block, got none")
    N = len(entries[0])
    if N == 0 or any(len(row) != N for row in entries):
        lengths = [len(r) for r in entries]
        raise ValueError(f"entries must be a [K][N] nested list with N > 0, got rows of lengths {lengths}")
    bt = _check_schedule((K, N), block_tasks)
    grid = [[None if e is None else _entry(e, f"entries[{k}][{j}]") for j, e in enumerate(row)]
            for k, row in enumerate(entries)]
    base = None
    if baseline_entries is not None:
        if len(baseline_entries) != N:
            raise ValueError(f"baseline_entries must have one entry per task column ({N}), got {len(baseline_entries)}")
        base = [None if e is None else _entry(e, f"baseline_entries[{j}]") for j, e in enumerate(baseline_entries)]
    sizes = {e.shape[0] for row in grid for e in row if e is not None}
    sizes |= {e.shape[0] for e in base or [] if e is not None}
    if len(sizes) > 1:
        raise ValueError(f"every entry must hold the same B lifetimes, got B in {sorted(sizes)}")
    s = _Schedule.of(bt, N)
    R = np.array([[math.nan if e is None else e.mean() for e in row] for row in grid])
    b = None if base is None else np.array([math.nan if e is None else e.mean() for e in base])
    point = _cl_figures_batch(R[None], s, None if b is None else b[None])
    if not sizes:  # nothing measured at all: every figure is undefined
        return {name: (math.nan, math.nan) for name in SCALAR_FIGURES}
    B = sizes.pop()

    gen = np.random.default_rng(seed)
    lifetimes = gen.integers(0, B, size=(n_boot, B))
    Rb = np.full((n_boot, K, N), np.nan)
    for k, row in enumerate(grid):
        for j, e in enumerate(row):
            if e is not None:
                Rb[:, k, j] = _resampled_means(e, lifetimes, gen)
    bb = None
    if base is not None:
        bb = np.full((n_boot, N), np.nan)
        for j, e in enumerate(base):
            if e is not None:
                bb[:, j] = _resampled_means(e, lifetimes, gen)
    reps = _cl_figures_batch(Rb, s, bb)
    out: dict[str, tuple[float, float]] = {}
    for name in SCALAR_FIGURES:
        out[name] = (math.nan, math.nan) if not np.isfinite(point[name][0]) else _percentile(reps[name], level)
    return out


# ---- Student t -------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Quantile t_{p, df} of Student's t distribution (e.g. ``student_t_quantile(0.975, 2)`` = 4.303).

    Exact closed forms for df = 1, 2; otherwise bisection on the CDF, itself from the regularised
    incomplete beta function (I_x(df/2, 1/2), x = df / (df + t^2)); df > 1000 uses the
    Cornish-Fisher expansion around the normal quantile (error below 1e-9).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be a probability in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    if df > 1000:
        z = NormalDist().inv_cdf(p)
        return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
                + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))
    lo, hi = 0.0, 2.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci_over_seeds(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a figure over S independent seeds ``values [S]``: Student-t interval
    mean +- t_{(1+level)/2, S-1} * sd / sqrt(S), sd with ddof = 1.

    Non-finite values (a figure undefined in that seed) are dropped first. S = 1: ``(v, nan, nan)``;
    S = 0: all NaN.
    """
    _check_level(level)
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    half = student_t_quantile((1.0 + level) / 2.0, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half
