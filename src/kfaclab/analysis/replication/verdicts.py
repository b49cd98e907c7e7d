"""The paper's claims tested as what they say, with seeds of replications as units.

- C1 "λ = 1 is best": the best λ is a *band* (every λ not established worse than the lowest), also
  stated convention-free as λ over the mean eigenvalue of G⊗A; C1 holds if λ = 1 is in the band.
- C2 "the smallest λ is unstable": instability as instability: the share of the smallest λ's top
  configurations that diverge on new seeds against the best λ's (Fisher's exact test; Wilson
  intervals), not a loss ratio.
- C3 "the largest λ is slow": the area under the learning curve (mean capped minibatch loss) of
  the largest λ against the best λ, paired by seed; and against SGD, since under an lr/λ search a
  large λ is SGD with step lr (a tie with SGD says the damping swamped the curvature).
- C4/C5 "early, larger λ gives larger (∂L/∂θ)²; late, smaller λ does": one crossing. At every
  histogram iteration, each unit's least-squares slope of the median log10 (∂L/∂θ)² on log10 λ,
  over every λ with reruns (averaged over layers); C4 is the early slope > 0, C5 the late slope
  < 0, and the crossing holds only if both do. The interaction (late − early) is reported beside
  it: a difference of slopes without a sign change is no crossing. Plateau-escape time's slope in
  log10 λ is the direct test of "larger λ escapes the plateau".

"Established" (a difference that decides a verdict) means: the 95% t interval over all units
excludes zero *and* every replication's own mean difference has the same sign. The second part
makes a difference that one replication shows and another reverses undecided, whatever n is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.replication import units as U
from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.replication.paired import (
    Interval,
    Paired,
    divergence_difference,
    paired,
    t_interval,
    unit_slope,
)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
PAPER_BEST = 1.0


@dataclass(frozen=True)
class Thresholds:
    """Every number a verdict depends on, with why it has its value."""

    alpha: float = 0.05
    """Two-sided level of every test (95% intervals)."""

    @property
    def level(self) -> float:
        return 1.0 - self.alpha

    divergence_margin: float = 0.10
    """C2 is *not* reproduced when the smallest λ's divergence share is, at its Wilson upper bound,
    at most this much above the best λ's: an excess under ten points is not "unstable"."""
    tie_margin: float = 0.10
    """C1 counts λ = 1 as tied with the best only when the whole 95% interval of its paired
    difference lies within ± this fraction of the best cell's loss (an equivalence test): "not
    shown worse" alone would make C1 automatic for any study too small to separate anything."""


@dataclass
class Verdict:
    key: str
    title: str
    paper: str
    verdict: str
    finding: str
    evidence: dict[str, Any] = field(default_factory=dict)


def binding_of(reps: Sequence[U.Replication], label: str) -> list[str]:
    """Where a cell's search range binds its optimum, in any replication (directional use: only
    for the cell a verdict calls worse, since only its improvement could flip the verdict)."""
    return [f"{r.name}: {b}" for r in reps for b in r.bindings.get(label, [])]


def _unless_bound(v: Verdict, reps: Sequence[U.Replication], *labels: str) -> None:
    """A verdict that rests on ``labels`` being worse is undecided if any of their search ranges
    binds (with loss still falling toward the bound): a better optimum may lie outside it."""
    bound = {x: found for x in labels if (found := binding_of(reps, x))}
    if not bound or v.verdict not in (REPRODUCED, NOT_REPRODUCED):
        return
    bound_labels = list(bound)
    v.evidence["binding"] = [b for found in bound.values() for b in found]
    v.evidence["verdict_if_range_did_not_bind"] = v.verdict
    v.verdict = INCONCLUSIVE
    if len(bound_labels) == 1:
        v.finding += (
            f"; but {bound_labels[0]}'s search range binds its optimum, which may lie outside it"
        )
    else:
        v.finding += (
            f"; but the search ranges of {', '.join(bound_labels)} bind their optima, which may "
            "lie outside them"
        )


def established(reps: Sequence[U.Replication], p: Paired, per_rep: Sequence[float]) -> int:
    """+1 / -1 when the paired difference is established on that side (module docstring), else
    0."""
    s = p.diff.sign
    if s == 0 or not per_rep:
        return 0
    return s if all(math.isfinite(m) and np.sign(m) == s for m in per_rep) else 0


def compare(
    reps: Sequence[U.Replication],
    a: str,
    b: str,
    metric: Callable[[RerunOutcome], float],
    level: float = 0.95,
) -> tuple[Paired, list[float], int]:
    """a − b per unit, the per-replication mean differences, and whether it is established
    (``level``: of the interval over units)."""
    at = U.units(reps)
    pa, pb = U.per_unit(reps, a, metric, at), U.per_unit(reps, b, metric, at)
    p = paired(pa, pb, level)
    per_rep = []
    for r in reps:
        d = [x - y for u, x, y in zip(at, pa, pb, strict=True) if u[0] == r.name]
        d = [v for v in d if math.isfinite(v)]
        if d:
            per_rep.append(float(np.mean(d)))
    return p, per_rep, established(reps, p, per_rep)


def _iv(i: Interval) -> dict[str, float]:
    return {"estimate": i.estimate, "lo": i.lo, "hi": i.hi, "n": i.n}


def _pd(p: Paired, per_rep: Sequence[float], est: int) -> dict[str, Any]:
    return {
        **_iv(p.diff),
        "p_signed_rank": p.p_signed_rank,
        "n_positive": p.n_positive,
        "n_negative": p.n_negative,
        "per_replication": list(per_rep),
        "established": est,
    }


def fmt_diff(p: Paired, per_rep: Sequence[float]) -> str:
    d = p.diff
    return (
        f"{d.estimate:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}] over {d.n} seeds "
        f"({p.n_positive} of {d.n} positive; replications "
        + ", ".join(f"{m:+.3g}" for m in per_rep)
        + ")"
    )


def capped(o: RerunOutcome) -> float:
    return o.capped_loss


def area(o: RerunOutcome) -> float:
    return o.mean_step_loss


def _fixed(reps: Sequence[U.Replication]) -> list[str]:
    lam = U.lambdas(reps)
    return [x for x in U.labels(reps) if x in lam]


def best_band(reps: Sequence[U.Replication], th: Thresholds) -> Verdict:
    v = Verdict("C1", "best λ", f"λ = {PAPER_BEST:g} gives the lowest training loss", "", "")
    v.verdict = INCONCLUSIVE
    fixed = _fixed(reps)
    if len(fixed) < 2:  # a best among one is no finding (the smoke preset's reruns)
        v.finding = "fewer than two λ have reruns" if fixed else "no λ has reruns"
        return v
    at = U.units(reps)
    means = {x: float(np.nanmean(U.per_unit(reps, x, capped, at))) for x in fixed}
    best = min(fixed, key=lambda x: means[x])
    lam = U.lambdas(reps)
    band, rows = [best], {}
    for x in fixed:
        if x == best:
            continue
        p, per_rep, est = compare(reps, x, best, capped, th.level)
        rows[x] = _pd(p, per_rep, est)
        if est <= 0:
            band.append(x)
    band.sort(key=lambda x: lam[x])
    rel = {x: _relative(reps, x) for x in fixed}
    # the other reading of divergence, reported beside it: the runs that did not diverge only
    finite = {
        x: float(
            np.nanmean([o.value for o in U.outcomes_of(reps, x) if not o.diverged] or [np.nan])
        )
        for x in fixed
    }
    finite_best = min(
        (x for x in fixed if math.isfinite(finite[x])), key=lambda x: finite[x], default=best
    )
    v.evidence = {
        "best": best,
        "finite_only_best": finite_best,
        "finite_only_mean": finite,
        "band": band,
        "mean_capped_loss": means,
        "minus_best": rows,
        "relative_damping": rel,
    }
    paper = next((x for x in fixed if math.isclose(lam[x], PAPER_BEST)), None)
    rlo, rhi = _span([rel[x] for x in band])
    v.finding = (
        f"lowest: {best} ({means[best]:.3g}); not established worse: "
        f"{_band_text(band, fixed, lam)} (λ / mean eigenvalue of G⊗A ∈ [{rlo:.2g}, {rhi:.2g}])"
    )
    if finite_best != best:
        v.finding += (
            f"; counting only reruns that did not diverge, {finite_best} is lowest "
            f"({finite[finite_best]:.3g}): its good configurations lie at the edge of stability"
        )
    if paper is None:
        v.finding += f"; the grid has no λ = {PAPER_BEST:g}"
        return v
    if paper == best:
        # best by its mean; reproduced if every other λ is tied with it or shown worse, unless
        # the search range of a λ shown worse binds: its better optimum could take the lead
        v.verdict = (
            REPRODUCED
            if all(_tied_or_worse(rows[x], means[best], th) for x in rows)
            else INCONCLUSIVE
        )
        _unless_bound(v, reps, *(x for x in rows if rows[x]["established"] > 0))
        return v
    row = rows[paper]
    v.finding += f"; {paper} − {best}: " + _row_text(row)
    margin = th.tie_margin * means[best]
    v.evidence["tie_margin"] = margin
    if row["established"] > 0:
        v.verdict = NOT_REPRODUCED
        _unless_bound(v, reps, paper)
    elif tied_within(row, means[best], th):
        v.verdict = REPRODUCED
        v.finding += f": tied within ±{margin:.2g}"
    else:
        v.finding += f": neither shown worse nor within ±{margin:.2g} of it"
    return v


def _band_text(band: list[str], fixed: list[str], lam: dict[str, float]) -> str:
    """ "λ ∈ [lo, hi]" when the band is a run of neighbouring grid values, else the λ listed: an
    interval would hide a λ inside it that *is* established worse."""
    grid = sorted(fixed, key=lambda x: lam[x])
    at = [grid.index(x) for x in band]
    if max(at) - min(at) + 1 == len(band):
        return f"λ ∈ [{lam[band[0]]:g}, {lam[band[-1]]:g}]"
    return "λ ∈ {" + ", ".join(f"{lam[x]:g}" for x in band) + "}"


def tied_within(diff: dict[str, Any], reference_loss: float, th: Thresholds) -> bool:
    """The equivalence test: the paired difference's whole interval (over two or more units)
    lies within ± ``tie_margin`` × the reference's loss (``_pd``'s dict)."""
    margin = th.tie_margin * reference_loss
    return bool(diff["n"] >= 2 and -margin <= diff["lo"] and diff["hi"] <= margin)


def _tied_or_worse(row: dict[str, Any], best: float, th: Thresholds) -> bool:
    return row["established"] > 0 or tied_within(row, best, th)


def _row_text(row: dict[str, Any]) -> str:
    per = ", ".join(f"{m:+.3g}" for m in row["per_replication"])
    return (
        f"{row['estimate']:+.3g} [{row['lo']:+.3g}, {row['hi']:+.3g}] over {row['n']} seeds, "
        f"{row['n_positive']} of {row['n']} positive (replications: {per})"
    )


def _relative(reps: Sequence[U.Replication], label: str) -> float:
    rel = [o.relative_damping for o in U.outcomes_of(reps, label)]
    rel = [r for r in rel if math.isfinite(r) and r > 0]
    return float(np.exp(np.mean(np.log(rel)))) if rel else math.nan


def _span(xs: Sequence[float]) -> tuple[float, float]:
    f = [x for x in xs if math.isfinite(x)]
    return (min(f), max(f)) if f else (math.nan, math.nan)


def smallest_unstable(reps: Sequence[U.Replication], best: str, th: Thresholds) -> Verdict:
    v = Verdict("C2", "smallest λ unstable", "the smallest λ makes training unstable", "", "")
    v.verdict = INCONCLUSIVE
    fixed = _fixed(reps)
    if len(fixed) < 2:
        v.finding = "fewer than two λ have reruns"
        return v
    small = fixed[0]
    ks, ns = U.divergence_counts(reps, small)
    kb, nb = U.divergence_counts(reps, best)
    d = divergence_difference(ks, ns, kb, nb)
    p, per_rep, est = compare(reps, small, best, capped, th.level)
    v.evidence = {
        "smallest": small,
        "best": best,
        "diverged": [ks, ns, d.a.lo, d.a.hi],
        "best_diverged": [kb, nb, d.b.lo, d.b.hi],
        "p_fisher": d.p_fisher,
        "capped_loss_minus_best": _pd(p, per_rep, est),
    }
    v.finding = (
        f"on new seeds {small}'s top configurations diverge in {ks}/{ns} "
        f"({d.a.share:.0%}, Wilson [{d.a.lo:.0%}, {d.a.hi:.0%}]) against {best}'s {kb}/{nb} "
        f"({d.b.share:.0%}); Fisher p = {d.p_fisher:.2g}"
    )
    if d.excess > 0 and d.p_fisher < th.alpha:
        v.verdict = REPRODUCED
        _unless_bound(v, reps, small)
    elif d.a.hi <= d.b.share + th.divergence_margin:
        v.verdict = NOT_REPRODUCED
    return v


def largest_slow(reps: Sequence[U.Replication], best: str, th: Thresholds | None = None) -> Verdict:
    level = (th or Thresholds()).level
    v = Verdict(
        "C3", "largest λ slower", "the largest λ trains more slowly than the best λ", "", ""
    )
    v.verdict = INCONCLUSIVE
    fixed = _fixed(reps)
    if len(fixed) < 2:
        v.finding = "fewer than two λ have reruns"
        return v
    large = fixed[-1]
    p, per_rep, est = compare(reps, large, best, area, level)
    v.evidence = {"largest": large, "best": best, "area_minus_best": _pd(p, per_rep, est)}
    v.finding = f"area under the learning curve, {large} − {best}: " + fmt_diff(p, per_rep)
    sgd = next((x for x in U.labels(reps) if x not in U.lambdas(reps)), None)
    if sgd is not None:
        ps, per_s, est_s = compare(reps, large, sgd, area, level)
        v.evidence["area_minus_sgd"] = _pd(ps, per_s, est_s)
        v.finding += f"; {large} − {sgd}: " + fmt_diff(ps, per_s)
    if est > 0:
        v.verdict = REPRODUCED
        _unless_bound(v, reps, large)
    elif est < 0:
        v.verdict = NOT_REPRODUCED
        _unless_bound(v, reps, best)
    return v


def slope_series(
    reps: Sequence[U.Replication],
    metric_of: Callable[[str, str], Callable[[RerunOutcome], float]],
    level: float = 0.95,
) -> dict[str, Any]:
    """Per histogram iteration: every unit's layer-mean slope of a gradient statistic on log10 λ,
    its interval over units, and the per-layer intervals."""
    fixed = _fixed(reps)
    lam = U.lambdas(reps)
    x = [math.log10(lam[f]) for f in fixed]
    at = U.units(reps)
    steps, layers = U.grad_steps_and_layers(reps)
    out: dict[str, Any] = {"steps": [int(s) for s in steps], "layers": layers, "by_step": {}}
    for s in steps:
        per_layer_units = {}
        for layer in layers:
            cols = [U.per_unit(reps, f, metric_of(s, layer), at) for f in fixed]
            per_layer_units[layer] = [unit_slope(x, [c[i] for c in cols]) for i in range(len(at))]
        mean_units = [
            float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            for v in np.asarray(list(per_layer_units.values()), dtype=float).T
        ]
        out["by_step"][s] = {
            "units": mean_units,
            "mean": _iv(t_interval(mean_units, level)),
            "layers": {k: _iv(t_interval(v, level)) for k, v in per_layer_units.items()},
        }
    return out


def to_dict(v: Verdict) -> dict[str, Any]:
    return asdict(v)
