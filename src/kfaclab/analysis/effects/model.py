"""Factor effects of a design on one response: ordinary least squares (statsmodels), seeds as
replicates.

Two-level designs use the textbook coding x = ±1 (level 0 → −1) and report each effect as the
mean response at + minus the mean at − (twice the regression coefficient). The terms are the
main effects and one column per alias class of two-factor interactions that the design can
estimate (``TwoLevelDesign.estimable``): all of them in a full factorial; at resolution IV one
per chain (its label names the whole chain, "AB=CE=FG": the estimate is their sum); at
resolution III none (each is aliased with a main effect). Each seed enters as a block (its own
intercept: a seed shifts every run alike through the shared initialisation and batch order). A
2^(7−3) design with 2 seeds has 32 observations and 1 + 7 + 7 + 1 = 16 parameters: of its 16
residual degrees of freedom, 15 are the seeds' disagreement and 1 the one alias class of
three-factor interactions left out (assumed small), so the intervals are t-intervals across
replicates. A full factorial with a factor of 3 or
more levels gets main effects only: level j minus level 0.

Without replicates (one seed, or only one seed's runs finished yet) the residual is at most the
left-out alias classes (1 df in a 2^(7−3)); while the residual has fewer than m/3 df (the
second seed's first runs add one each), the intervals come instead from Lenth's (1989)
pseudo standard error of the m estimated effects, assuming few of them are real (effect
sparsity): s0 = 1.5·median|c|, PSE = 1.5·median{|c| : |c| < 2.5·s0}, t with m/3 df. It needs
``LENTH_MIN`` effects or more; fewer get no intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kfaclab.study.design import word_name, word_order
from kfaclab.study.design_schema import Design


@dataclass(frozen=True)
class Observation:
    levels: tuple[int, ...]  # level index per factor
    seed: int
    value: float  # nan: this run has no value for the response (dropped)


@dataclass(frozen=True)
class Effect:
    term: str  # "A", "AB=CE=FG", or "B[1-0]" for a factor of 3+ levels
    names: str  # the same in factor names: "activation", "activation×init = …"
    estimate: float
    ci_low: float  # nan when the residual has no degrees of freedom
    ci_high: float
    p_value: float

    @property
    def order(self) -> int:
        return 1 if "×" not in self.names.split(" = ")[0] else 2

    @property
    def clear_of_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


@dataclass
class EffectsTable:
    response: str
    effects: list[Effect]
    n_obs: int
    df_resid: int
    grand_mean: float
    level: float
    notes: list[str] = field(default_factory=list)
    interval: str = "replicates"  # "replicates" (OLS t), "lenth" (pseudo standard error), "none"


LENTH_MIN = 7  # effects needed for Lenth's pseudo standard error (df = m/3 ≥ 2.3)


def lenth_pse(effects: Sequence[float] | np.ndarray) -> float:
    """Lenth's pseudo standard error of unreplicated two-level effects."""
    c = np.abs(np.asarray(effects, dtype=np.float64))
    s0 = 1.5 * float(np.median(c))
    small = c[c < 2.5 * s0]
    return 1.5 * float(np.median(small)) if small.size else 0.0


def _columns(design: Design) -> tuple[list[tuple[str, str]], list[Sequence[int]]]:
    """(term, names) and, per term, how to build its column: a word's factors (two-level) or
    (factor, level) for a treatment dummy."""
    names = [f.name for f in design.factors]
    two = design.two_level
    out: list[tuple[str, str]] = []
    specs: list[Sequence[int]] = []
    if two is None:
        for i, f in enumerate(design.factors):
            for j in range(1, len(f.levels)):
                out.append((f"{f.letter}[{j}-0]", f"{f.name}[{f.labels[j]}−{f.labels[0]}]"))
                specs.append((i, j))
        return out, specs
    for chain in two.estimable(max_order=2):
        words = [[i for i in range(two.k) if w >> i & 1] for w in chain]
        out.append(
            (
                "=".join(word_name(w) for w in chain),
                " = ".join("×".join(names[i] for i in w) for w in words),
            )
        )
        specs.append(words[0])
    return out, specs


def design_matrix(
    design: Design, observations: Sequence[Observation], terms: int | None = None
) -> np.ndarray:
    """Intercept, the first ``terms`` effect columns, then one block column per extra seed."""
    _, specs = _columns(design)
    specs = specs[:terms] if terms is not None else specs
    # A block per seed present beyond the first: a seed none of whose runs has a value (not run
    # yet) must not add an all-zero column.
    present = sorted({o.seed for o in observations})
    rows = []
    for obs in observations:
        if design.two_level is None:
            cols = [1.0 if obs.levels[i] == j else 0.0 for i, j in specs]
        else:
            coded = [1.0 if level else -1.0 for level in obs.levels]
            cols = [float(np.prod([coded[i] for i in word])) for word in specs]
        blocks = [1.0 if obs.seed == s else 0.0 for s in present[1:]]
        rows.append([1.0, *cols, *blocks])
    return np.array(rows, dtype=np.float64).reshape(len(observations), -1)


def fit_effects(
    design: Design, observations: Sequence[Observation], response: str, level: float = 0.95
) -> EffectsTable:
    import statsmodels.api as sm

    obs = [o for o in observations if math.isfinite(o.value)]
    notes = []
    if len(obs) < len(observations):
        notes.append(f"{len(observations) - len(obs)} of {len(observations)} runs have no value")
    labels, _ = _columns(design)
    n_terms = len(labels)
    if not obs:  # no run has a value for this response (e.g. no histograms were recorded)
        notes.append("no run has a value for this response")
        return EffectsTable(response, [], 0, 0, math.nan, level, notes)
    X = design_matrix(design, obs)
    if obs and np.linalg.matrix_rank(X) < X.shape[1]:
        # Missing runs broke the design's balance: fall back to the main effects.
        n_terms = sum(1 for t, _ in labels if word_order_of(t) == 1)
        X = design_matrix(design, obs, n_terms)
        notes.append("missing runs leave the interactions inestimable: main effects only")
    y = np.array([o.value for o in obs], dtype=np.float64)
    if not obs or np.linalg.matrix_rank(X) < X.shape[1]:
        notes.append("too few runs for the main effects")
        return EffectsTable(response, [], len(obs), 0, math.nan, level, notes)
    fit = sm.OLS(y, X).fit()
    df = round(float(fit.df_resid))
    scale = 1.0 if design.two_level is None else 2.0  # ±1 coding: effect = 2 × coefficient
    estimates = scale * np.asarray(fit.params)[1 : 1 + n_terms]
    varies = bool(np.ptp(y) > 0)
    same = "the response is the same in every run: every effect is 0, no intervals"
    # Replicates decide once they give as many residual df as Lenth's m/3; before that (one seed,
    # or the second seed's first runs) their interval is wider than it is informative.
    if design.two_level is not None and n_terms >= LENTH_MIN and df < n_terms / 3:
        if df > 0 and not varies:
            notes.append(same)
        ci, pvalues, note = _lenth(estimates, level)
        notes.append(note)
        interval = "lenth"
    elif df > 0 and varies:
        ci = scale * np.asarray(fit.conf_int(alpha=1 - level))[1 : 1 + n_terms]
        pvalues = np.asarray(fit.pvalues)[1 : 1 + n_terms]
        interval = "replicates"
    else:
        notes.append(
            "no residual degrees of freedom (no replicates): no intervals" if df <= 0 else same
        )
        ci = np.full((n_terms, 2), math.nan)
        pvalues = np.full(n_terms, math.nan)
        interval = "none"
    effects = [
        Effect(
            term, names, float(estimates[k]), float(ci[k, 0]), float(ci[k, 1]), float(pvalues[k])
        )
        for k, (term, names) in enumerate(labels[:n_terms])
    ]
    return EffectsTable(response, effects, len(obs), df, float(y.mean()), level, notes, interval)


def _lenth(estimates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Intervals (rows of [low, high], in effect units) and p-values from Lenth's PSE."""
    from scipy import stats

    m = len(estimates)
    pse, df = lenth_pse(estimates), m / 3.0
    note = (
        f"too few replicates: intervals from Lenth's pseudo standard error of the {m} effects "
        f"(PSE {pse:.3g}, t with {df:.3g} df; assumes few effects are real)"
    )
    if pse <= 0:
        return np.full((m, 2), math.nan), np.full(m, math.nan), note
    half = float(stats.t.ppf(0.5 + level / 2, df)) * pse
    ci = np.stack([estimates - half, estimates + half], axis=1)
    p = 2.0 * stats.t.sf(np.abs(estimates) / pse, df)
    return ci, p, note


def word_order_of(term: str) -> int:
    """1 for a main effect's term ("A", "B[2-0]"), else the length of its first word."""
    head = term.split("=")[0].split("[")[0]
    return word_order(sum(1 << i for i in range(len(head))))
