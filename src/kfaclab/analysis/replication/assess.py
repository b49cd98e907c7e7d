"""Everything the replication-level verdicts show, as one plain data object (figures draw it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from kfaclab.analysis.replication import units as U
from kfaclab.analysis.replication.crossing import (
    NoiseFloor,
    crossing,
    crossing_verdict,
    noise_floor,
)
from kfaclab.analysis.replication.outcomes import CHANCE_LOSS, RerunOutcome
from kfaclab.analysis.replication.paired import positive_mean, proportion, t_interval
from kfaclab.analysis.replication.verdicts import (
    Thresholds,
    Verdict,
    best_band,
    largest_slow,
    smallest_unstable,
)

CURVE_EVERY = 10
"""Learning curves are averaged over windows of this many steps: minibatch noise (sd ≈ 0.05 at
B = 128 late in training) would otherwise hide the differences between λ."""


@dataclass
class CellRow:
    label: str
    lam: float | None
    relative_damping: float  # λ / mean eigenvalue of G⊗A (geometric mean over reruns)
    capped_loss: dict[str, float]  # geometric mean over units, lo, hi, n (log-scale interval)
    diverged: list[float]  # [k, n, Wilson lo, Wilson hi]
    escape: dict[str, float]  # mean escape step over units with its t interval
    sd_topk: float  # between-replication SD of the stored top-k mean
    sd_rerun: float  # between-replication SD of the mean capped rerun loss


@dataclass
class Curve:
    label: str
    lam: float | None
    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]


@dataclass
class Assessment:
    replications: list[str]
    n_units: int
    claims: list[Verdict]
    crossing: str
    cells: list[CellRow]
    noise: NoiseFloor
    curves: list[Curve]
    # per cell: every unit's capped loss and whether each of its reruns diverged (figure dots)
    dots: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # rows of (threshold changed, its value, the five verdicts and the crossing's under it)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def claim(self, key: str) -> Verdict:
        return next(c for c in self.claims if c.key == key)


def assess(
    reps: Sequence[U.Replication], th: Thresholds | None = None, *, with_sensitivity: bool = True
) -> Assessment:
    th = th or Thresholds()
    c1 = best_band(reps, th)
    best = str(c1.evidence.get("best", ""))
    c2 = smallest_unstable(reps, best, th)
    c3 = largest_slow(reps, best, th)
    c4, c5, _ = crossing(reps, th.level)
    nf = noise_floor(reps)
    at = U.units(reps)
    cells = [_cell_row(reps, x, at, nf) for x in U.labels(reps)]
    dots = {
        x: {
            "capped": U.per_unit(reps, x, lambda o: o.capped_loss, at),
            "diverged_share": U.per_unit(reps, x, lambda o: float(o.diverged), at),
        }
        for x in U.labels(reps)
    }
    return Assessment(
        replications=[r.name for r in reps],
        n_units=len(at),
        claims=[c1, c2, c3, c4, c5],
        crossing=crossing_verdict(c4, c5),
        cells=cells,
        noise=nf,
        curves=[learning_curve(reps, x) for x in U.labels(reps)],
        dots=dots,
        thresholds=th,
        sensitivity=sensitivity(reps, th) if with_sensitivity else [],
    )


SENSITIVITY = (
    ("alpha", (0.01, 0.10)),
    ("tie_margin", (0.05, 0.20)),
    ("divergence_margin", (0.05, 0.20)),
)
"""Other thresholds a reader might prefer: the verdicts under each, one change at a time."""


def sensitivity(reps: Sequence[U.Replication], th: Thresholds) -> list[dict[str, Any]]:
    rows = []
    for name, values in SENSITIVITY:
        for v in values:
            other = replace(th, **{name: v})
            b = assess(reps, other, with_sensitivity=False)
            rows.append(
                {
                    "threshold": name,
                    "value": v,
                    "verdicts": [c.verdict for c in b.claims] + [b.crossing],
                }
            )
    return rows


def _cell_row(reps: Sequence[U.Replication], x: str, at: list[U.Unit], nf: NoiseFloor) -> CellRow:
    from kfaclab.analysis.replication.crossing import _escape
    from kfaclab.analysis.replication.verdicts import _relative

    k, n = U.divergence_counts(reps, x)
    p = proportion(k, n)
    lam = U.lambdas(reps).get(x)
    cap = positive_mean(U.per_unit(reps, x, lambda o: o.capped_loss, at))
    esc = t_interval(U.per_unit(reps, x, _escape, at))
    return CellRow(
        label=x,
        lam=lam,
        relative_damping=_relative(reps, x) if lam is not None else math.nan,
        capped_loss={"estimate": cap.estimate, "lo": cap.lo, "hi": cap.hi, "n": cap.n},
        diverged=[k, n, p.lo, p.hi],
        escape={"estimate": esc.estimate, "lo": esc.lo, "hi": esc.hi, "n": esc.n},
        sd_topk=nf.sd_topk.get(x, math.nan),
        sd_rerun=nf.sd_rerun.get(x, math.nan),
    )


def _windowed(o: RerunOutcome, n_windows: int) -> list[float]:
    """The run's minibatch losses averaged over ``CURVE_EVERY``-step windows, capped at chance;
    after a divergence every window is at chance (divergence is an outcome, not missing data)."""
    x = np.asarray(o.step_losses, dtype=float)
    if o.diverged_at is not None:
        x = x[: o.diverged_at]
    x = np.minimum(np.where(np.isfinite(x), x, CHANCE_LOSS), CHANCE_LOSS)
    out = []
    for w in range(n_windows):
        seg = x[w * CURVE_EVERY : (w + 1) * CURVE_EVERY]
        out.append(float(seg.mean()) if seg.size else CHANCE_LOSS)
    return out


def learning_curve(reps: Sequence[U.Replication], label: str) -> Curve:
    """Geometric mean over units of the windowed minibatch loss (each unit: the mean over the
    cell's reruns at that seed), with its 95% interval from the log scale at every window."""
    outs = U.outcomes_of(reps, label)
    lam = U.lambdas(reps).get(label)
    if not outs:
        return Curve(label, lam, [], [], [], [])
    n_steps = max(max(o.n_steps, len(o.step_losses)) for o in outs)
    n_windows = n_steps // CURVE_EVERY
    by_unit: dict[U.Unit, list[list[float]]] = {}
    for r in reps:
        for o in r.outcomes:
            if o.label == label:
                by_unit.setdefault((r.name, o.seed), []).append(_windowed(o, n_windows))
    rows = np.asarray([np.mean(v, axis=0) for v in by_unit.values()], dtype=float)
    steps = [w * CURVE_EVERY + CURVE_EVERY // 2 for w in range(n_windows)]
    # geometric mean over units with its log-scale interval: a loss band never reaches below 0
    ivs = [positive_mean(rows[:, w].tolist()) for w in range(n_windows)]
    return Curve(
        label,
        lam,
        steps,
        [i.estimate for i in ivs],
        [i.lo for i in ivs],
        [i.hi for i in ivs],
    )
