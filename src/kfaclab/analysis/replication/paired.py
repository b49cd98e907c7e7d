"""Statistics with whole reruns (seeds) as units, on scipy.stats.

Every function takes plain per-unit numbers and returns a small frozen record; none knows about
studies. Intervals are 95% unless a ``level`` says otherwise.

- ``paired``: the mean of per-seed differences with Student's t interval, the signed-rank test's
  p-value (no normality assumed), and how many differences are positive;
- ``proportion``: a share with Wilson's score interval (sane at 0 and n; never below 0 or above 1);
- ``divergence_difference``: two shares compared with Fisher's exact test;
- ``positive_ratio``: a mean of positive values (losses) with its interval computed on the log
  scale, so it never reaches below zero;
- ``slopes``: per-unit least-squares slopes of y on x, summarised over units with a t interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    @property
    def sign(self) -> int:
        """+1 or -1 when the interval lies wholly on that side of 0, else 0."""
        if not self.excludes_zero:
            return 0
        return 1 if self.lo > 0 else -1


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student's t interval of finite values (nan bounds below two of them)."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:
        return Interval(mean, mean, mean, n)
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return Interval(mean, float(lo), float(hi), n)


@dataclass(frozen=True)
class Paired:
    diff: Interval  # mean of a - b over units, with its t interval
    p_signed_rank: float  # Wilcoxon's two-sided p-value (nan below 2 nonzero differences)
    n_positive: int
    n_negative: int

    @property
    def n(self) -> int:
        return self.diff.n


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """``a[i] - b[i]`` for every unit i where both are finite."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    nonzero = [v for v in d if v != 0.0]
    p = math.nan
    if len(nonzero) >= 2:
        p = float(stats.wilcoxon(nonzero).pvalue)
    return Paired(t_interval(d, level), p, sum(v > 0 for v in d), sum(v < 0 for v in d))


@dataclass(frozen=True)
class Proportion:
    k: int
    n: int
    lo: float
    hi: float

    @property
    def share(self) -> float:
        return self.k / self.n if self.n else math.nan


def proportion(k: int, n: int, level: float = LEVEL) -> Proportion:
    if n == 0:
        return Proportion(0, 0, math.nan, math.nan)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return Proportion(k, n, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class ShareDifference:
    a: Proportion
    b: Proportion
    p_fisher: float  # two-sided

    @property
    def excess(self) -> float:
        return self.a.share - self.b.share


def divergence_difference(k_a: int, n_a: int, k_b: int, n_b: int) -> ShareDifference:
    table = [[k_a, n_a - k_a], [k_b, n_b - k_b]]
    p = float(stats.fisher_exact(table).pvalue) if n_a and n_b else math.nan
    return ShareDifference(proportion(k_a, n_a), proportion(k_b, n_b), p)


def positive_mean(values: Sequence[float], level: float = LEVEL) -> Interval:
    """A positive quantity's geometric mean with its interval from the log scale: never below 0
    (a loss near zero with a wide spread must not get a negative lower bound)."""
    x = [v for v in values if math.isfinite(v) and v > 0]
    logs = t_interval([math.log(v) for v in x], level)
    if logs.n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    return Interval(math.exp(logs.estimate), math.exp(logs.lo), math.exp(logs.hi), logs.n)


def unit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x over the finite pairs (nan below two distinct x)."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len({a for a, _ in pts}) < 2:
        return math.nan
    xs, ys = np.asarray(pts, dtype=float).T
    return float(stats.linregress(xs, ys).slope)


def slopes(x: Sequence[float], ys_per_unit: Sequence[Sequence[float]]) -> Interval:
    """Each unit's slope of its y on the shared x, and the t interval over units."""
    return t_interval([unit_slope(x, ys) for ys in ys_per_unit])


def between_sd(means: Sequence[float]) -> float:
    """The sample SD of replication-level means (nan below two): the noise floor a difference
    between cells must clear to survive a rerun of the whole protocol."""
    x = [m for m in means if math.isfinite(m)]
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan
