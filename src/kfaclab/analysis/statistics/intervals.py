"""Small statistics the summaries need, on scipy.stats and numpy.

- ``t_quantile``: Student-t quantiles for 95% intervals of a mean (the bands are t-intervals:
  mean ± t₀.₉₇₅,ₙ₋₁ · sd/√n, i.e. where the mean of the top-k population lies, not where one
  trial lies); ``welch``: Welch's interval with its Satterthwaite degrees of freedom floored to
  a whole number (slightly wider than the fractional one).
- ``best_of_m``: the exact distribution of the best of m trials drawn without replacement from
  the observed ones (order statistics), for "is 300 trials enough?".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.stats import t as student_t


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` (> 0, not necessarily whole) degrees
    of freedom."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class MeanCI:
    """Mean, sample sd and 95% t-interval of the mean of ``n`` values (nan where undefined)."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


def mean_ci(values: np.ndarray | list[float], level: float = 0.95) -> MeanCI:
    """Mean ± t-interval; with one value the sd and the interval are nan (not zero: unknown)."""
    v = np.asarray(values, dtype=float)
    n = int(v.size)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if n == 1:
        return MeanCI(1, mean, math.nan, math.nan, math.nan)
    sd = float(v.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return MeanCI(n, mean, sd, mean - half, mean + half)


def curve_band(
    curves: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and t-interval of a (n_trials, n_steps) array; nan bands when n < 2."""
    n = curves.shape[0]
    mean = curves.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = t_quantile(0.5 + level / 2, n - 1) * curves.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class BestOfM:
    """Best-of-m statistics for m = 1..n from n observed values (inf = a diverged trial).

    ``mean[m-1]`` is E[min of m] (inf while m ≤ number of diverged trials, since then all m can
    have diverged); ``median``/``q10``/``q90`` are quantiles of the same distribution, finite as
    soon as the chance that all m diverged drops below that quantile.
    """

    m: list[int]
    mean: list[float]
    median: list[float]
    q10: list[float]
    q90: list[float]


def best_of_m(values: list[float]) -> BestOfM:
    """Exact order statistics: for sorted v₁ ≤ … ≤ vₙ, P(min of m = vᵢ) = C(n−i, m−1)/C(n, m).

    This treats the trials as exchangeable draws, which a Bayesian search's trials are not (its
    later trials are better on purpose), so it estimates what *random* subsets of these
    configurations would have found; the running best in trial order is shown beside it.
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = int(v.size)
    out = BestOfM([], [], [], [], [])
    for m in range(1, n + 1):
        # log C(n-i, m-1) - log C(n, m) for i = 1..n (zero probability where n-i < m-1)
        i = np.arange(1, n + 1)
        k = n - i
        ok = k >= m - 1
        logp = np.full(n, -np.inf)
        kk = k[ok].astype(float)
        logp[ok] = (
            gammaln(kk + 1)
            - gammaln(np.full_like(kk, m))
            - gammaln(kk - m + 2)
            - (math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1))
        )
        p = np.exp(logp)
        p /= p.sum()  # guard against rounding drift
        finite = np.isfinite(v)
        p_inf = float(p[~finite].sum())
        mean = float((p[finite] * v[finite]).sum()) if p_inf < 1e-12 else math.inf
        cdf = np.cumsum(p)
        out.m.append(m)
        out.mean.append(mean)
        out.median.append(float(v[min(int(np.searchsorted(cdf, 0.5)), n - 1)]))
        out.q10.append(float(v[min(int(np.searchsorted(cdf, 0.1)), n - 1)]))
        out.q90.append(float(v[min(int(np.searchsorted(cdf, 0.9)), n - 1)]))
    return out


def running_min(values: list[float]) -> list[float]:
    """Best value so far, in the order the trials were run."""
    return (
        [float(x) for x in np.minimum.accumulate(np.asarray(values, dtype=float))] if values else []
    )


@dataclass(frozen=True)
class Difference:
    """a − b with its 95% interval (nan bounds when either side has fewer than two values)."""

    diff: float
    lo: float
    hi: float


def welch(a: MeanCI, b: MeanCI, level: float = 0.95) -> Difference:
    """Welch's interval for the difference of two means from their summaries (n, mean, sd): no
    equal-variance assumption, since a cell's top-k spread depends on λ."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2 or not (math.isfinite(a.sd) and math.isfinite(b.sd)):
        return Difference(diff, math.nan, math.nan)
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    # df floored to a whole number: the conservative side, and what every stored report used
    half = t_quantile(0.5 + level / 2, max(1, int(df))) * se
    return Difference(diff, diff - half, diff + half)


LOWER, HIGHER, TIED, UNKNOWN = "lower", "higher", "tied", "unknown"


def compare_means(a: MeanCI, b: MeanCI) -> tuple[str, Difference]:
    """Is a's mean lower than, higher than or tied with b's (Welch's 95% interval of a − b below,
    above or around 0), or unknown (an interval that cannot be formed)? The one test of "better"
    for two top-k means: the report's adaptive caption and FINDINGS.md's adaptive section."""
    d = welch(a, b)
    if not (math.isfinite(d.lo) and math.isfinite(d.hi)):
        return UNKNOWN, d
    if d.hi < 0:
        return LOWER, d
    if d.lo > 0:
        return HIGHER, d
    return TIED, d


def bootstrap_median_diff(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int, level: float = 0.95
) -> Difference:
    """median(a) − median(b), percentile bootstrap over both samples independently."""
    ia = rng.integers(0, a.size, (n_boot, a.size))
    ib = rng.integers(0, b.size, (n_boot, b.size))
    d = np.median(a[ia], axis=1) - np.median(b[ib], axis=1)
    q = (1 - level) / 2
    lo, hi = np.quantile(d, [q, 1 - q])
    return Difference(float(np.median(a) - np.median(b)), float(lo), float(hi))


def bootstrap_median(
    a: np.ndarray, rng: np.random.Generator, n_boot: int, level: float = 0.95
) -> tuple[float, float, float]:
    """median, and its percentile-bootstrap interval."""
    m = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    q = (1 - level) / 2
    lo, hi = np.quantile(m, [q, 1 - q])
    return float(np.median(a)), float(lo), float(hi)
