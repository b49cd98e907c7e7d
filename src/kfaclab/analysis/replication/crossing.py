"""C4/C5 as one crossing test, plateau escape, and the between-replication noise floor.

See verdicts.py for the definitions. Slopes are in decades of (∂L/∂θ)² per decade of λ; escape
times in steps per decade of λ. A unit is one seed of one replication.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.replication import units as U
from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.replication.paired import between_sd, paired, t_interval, unit_slope
from kfaclab.analysis.replication.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Verdict,
    _fixed,
    _iv,
    slope_series,
)


def _median_metric(step: str, layer: str) -> Any:
    return U.grad_metric(step, layer, 0)


def _zero_metric(step: str, layer: str) -> Any:
    return U.grad_metric(step, layer, 1)


def crossing(
    reps: Sequence[U.Replication], level: float = 0.95
) -> tuple[Verdict, Verdict, dict[str, Any]]:
    """(C4, C5, evidence): the early and late halves of the crossing, and the data behind them
    (slopes at every iteration, the interaction, zero fractions, escape times)."""
    c4 = Verdict(
        "C4",
        "early: larger λ, larger (∂L/∂θ)²",
        "early in training, larger λ gives larger (∂L/∂θ)² (plateau escape)",
        INCONCLUSIVE,
        "",
    )
    c5 = Verdict(
        "C5",
        "late: smaller λ, larger (∂L/∂θ)²",
        "late in training, smaller λ gives larger (∂L/∂θ)²",
        INCONCLUSIVE,
        "",
    )
    fixed = _fixed(reps)
    series = slope_series(reps, _median_metric, level)
    steps = series["steps"]
    if len(fixed) < 2 or len(steps) < 2:
        c4.finding = c5.finding = "fewer than two λ or two histogram iterations with reruns"
        return c4, c5, {}
    early, late = str(steps[0]), str(steps[-1])
    e_units, l_units = series["by_step"][early]["units"], series["by_step"][late]["units"]
    inter = paired(l_units, e_units, level)
    at = U.units(reps)
    per_rep = {
        k: [
            float(np.nanmean([v for u, v in zip(at, us, strict=True) if u[0] == r.name]))
            for r in reps
        ]
        for k, us in (("early", e_units), ("late", l_units))
    }
    e_iv, l_iv = t_interval(e_units, level), t_interval(l_units, level)
    e_sign = _established(e_iv, per_rep["early"])
    l_sign = _established(l_iv, per_rep["late"])
    zeros = zero_fractions(reps, [early, late])
    medians = {
        lab: {
            s: {
                layer: _iv(t_interval(U.per_unit(reps, lab, _median_metric(s, layer), at)))
                for layer in series["layers"]
            }
            for s in map(str, steps)
        }
        for lab in fixed
    }
    escape = escape_slope(reps, level)
    evidence = {
        "early": int(early),
        "late": int(late),
        "lambdas": fixed,
        "slopes": series,
        "interaction": {**_iv(inter.diff), "n_positive": inter.n_positive},
        "zero_fraction": zeros,
        "medians": medians,  # [λ label][step][layer]: median log10 (∂L/∂θ)², t over seeds
        "escape": escape,
    }
    c4.evidence, c5.evidence = evidence, {"see": "C4"}
    c4.finding = (
        f"at iteration {early}, slope of median log10 (∂L/∂θ)² on log10 λ over {len(fixed)} λ: "
        f"{e_iv.estimate:+.3f} [{e_iv.lo:+.3f}, {e_iv.hi:+.3f}] decades per decade "
        f"({e_iv.n} seeds); plateau escape: {escape['text']}"
    )
    c5.finding = (
        f"at iteration {late}: {l_iv.estimate:+.3f} [{l_iv.lo:+.3f}, {l_iv.hi:+.3f}]; "
        f"late − early {inter.diff.estimate:+.3f} [{inter.diff.lo:+.3f}, {inter.diff.hi:+.3f}]"
        + ("; the slope never changes sign: no crossing" if e_sign == l_sign != 0 else "")
    )
    c4.verdict = {1: REPRODUCED, -1: NOT_REPRODUCED}.get(e_sign, INCONCLUSIVE)
    c5.verdict = {-1: REPRODUCED, 1: NOT_REPRODUCED}.get(l_sign, INCONCLUSIVE)
    return c4, c5, evidence


def _established(iv: Any, per_rep: Sequence[float]) -> int:
    s = iv.sign
    if s == 0:
        return 0
    return s if all(math.isfinite(m) and np.sign(m) == s for m in per_rep) else 0


def crossing_verdict(c4: Verdict, c5: Verdict) -> str:
    """The paper's claim is the crossing: both halves, or it does not hold."""
    if c4.verdict == REPRODUCED and c5.verdict == REPRODUCED:
        return REPRODUCED
    if NOT_REPRODUCED in (c4.verdict, c5.verdict):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def zero_fractions(reps: Sequence[U.Replication], steps: Sequence[str]) -> dict[str, Any]:
    """Mean over units of each layer's share of (∂L/∂θ)² at or below 1e-20, per λ and step."""
    _, layers = U.grad_steps_and_layers(reps)
    at = U.units(reps)
    out: dict[str, Any] = {}
    for lab in _fixed(reps):
        out[lab] = {
            s: {
                layer: float(np.nanmean(U.per_unit(reps, lab, _zero_metric(s, layer), at)))
                for layer in layers
            }
            for s in steps
        }
    return out


def _escape(o: RerunOutcome) -> float:
    # Escape time is a property of runs that train: a diverged run has no escape time (nan, left
    # out of its cell's mean; divergence is counted where it is the outcome, C2). Counting it as
    # "never escaped" made the small-λ cells' escape a measure of their divergence rate.
    # A run that trained but never escaped is censored at its planned length.
    if o.diverged:
        return math.nan
    e = o.escape_step
    return e if math.isfinite(e) else float(max(o.n_steps, len(o.step_losses)))


def escape_slope(reps: Sequence[U.Replication], level: float = 0.95) -> dict[str, Any]:
    """Each λ's mean plateau-escape step, and each unit's slope of escape step on log10 λ: the
    paper's "larger λ escapes the plateau" is a negative slope."""
    fixed = _fixed(reps)
    lam = U.lambdas(reps)
    at = U.units(reps)
    cols = [U.per_unit(reps, f, _escape, at) for f in fixed]
    x = [math.log10(lam[f]) for f in fixed]
    sl = t_interval([unit_slope(x, [c[i] for c in cols]) for i in range(len(at))], level)
    means = {f: _iv(t_interval(c)) for f, c in zip(fixed, cols, strict=True)}
    text = (
        f"escape step (5-step mean loss < 2.0) changes by {sl.estimate:+.1f} "
        f"[{sl.lo:+.1f}, {sl.hi:+.1f}] steps per decade of λ ("
        + ", ".join(f"{f.removeprefix('λ=')}: {means[f]['estimate']:.0f}" for f in fixed)
        + ")"
    )
    return {"slope": _iv(sl), "mean_step": means, "text": text}


@dataclass
class NoiseFloor:
    """Between-replication spread of each cell, and which top-k separations survive it."""

    replications: list[str]
    sd_topk: dict[str, float]  # SD over replications of a cell's stored top-k mean
    sd_rerun: dict[str, float]  # SD over replications of a cell's mean capped rerun loss
    # pairs (a, b) of fixed λ: separated by one replication's top-k intervals, and by the
    # replication-level test (t over replications of the difference of top-k means)
    pairs: list[dict[str, Any]] = field(default_factory=list)


def noise_floor(reps: Sequence[U.Replication]) -> NoiseFloor:
    names = [r.name for r in reps]
    labels = sorted({x for r in reps for x in r.topk_mean}, key=lambda x: _order(reps, x))
    sd_topk = {x: between_sd([r.topk_mean.get(x, math.nan) for r in reps]) for x in labels}
    at = U.units(reps)
    sd_rerun = {}
    for x in U.labels(reps):
        vals = U.per_unit(reps, x, lambda o: o.capped_loss, at)
        sd_rerun[x] = between_sd(
            [
                float(
                    np.nanmean(
                        [v for u, v in zip(at, vals, strict=True) if u[0] == r.name] or [math.nan]
                    )
                )
                for r in reps
            ]
        )
    nf = NoiseFloor(names, sd_topk, sd_rerun)
    fixed = [x for x in labels if reps[0].lam.get(x) is not None]
    for a, b in itertools.combinations(fixed, 2):
        diffs = [r.topk_mean.get(a, math.nan) - r.topk_mean.get(b, math.nan) for r in reps]
        iv = t_interval(diffs)
        first = reps[0]
        sep = _topk_separate(first, a, b)
        nf.pairs.append(
            {
                "a": a,
                "b": b,
                "diffs": diffs,
                "separate_in_first": sep,
                "survives": iv.sign != 0,
                "interval": _iv(iv),
            }
        )
    return nf


def _topk_separate(rep: U.Replication, a: str, b: str) -> bool:
    ia, ib = rep.topk_ci.get(a), rep.topk_ci.get(b)
    if ia is None or ib is None:
        return False
    return ia[1] > ib[2] or ib[1] > ia[2]


def _order(reps: Sequence[U.Replication], x: str) -> tuple[bool, float, str]:
    lam = reps[0].lam.get(x)
    return (lam is None, lam or 0.0, x)
