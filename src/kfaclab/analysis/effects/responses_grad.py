"""The two responses of a design run that need its trials' records: the C4/C5 crossing statistic
and plateau escape's slope in λ. Both are the replication analysis's statistics
(analysis/replication), computed on the run's own top-k trials, since a screening run has no
reruns: each cell's value is the mean over its top-k trials.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from kfaclab.analysis.replication.outcomes import escape_step
from kfaclab.analysis.replication.paired import unit_slope
from kfaclab.analysis.summary.gradients import interpolated_median

if TYPE_CHECKING:
    from kfaclab.analysis.effects.responses import RunData


def _top_records(run: RunData, cell: object) -> list[object]:
    top = set(getattr(cell, "top_numbers", []))
    name = getattr(cell, "name", "")
    return [t.record for t in run.study.cell_trials(name) if t.number in top and t.record]


def _cell_median(records: list[object], step: str) -> float:
    """Mean over trials of the layer-mean median log10 (∂L/∂θ)² at ``step``."""
    per_trial = []
    for r in records:
        hist = getattr(r, "histograms", {}).get(step)
        if not hist:
            continue
        edges = r.config.histogram_bins.edges()  # type: ignore[attr-defined]
        meds = [interpolated_median(np.asarray(c, dtype=float), edges) for c in hist.values()]
        meds = [m for m in meds if math.isfinite(m)]
        if meds:
            per_trial.append(float(np.mean(meds)))
    return float(np.mean(per_trial)) if per_trial else math.nan


def crossing(run: RunData) -> float:
    """Slope of the median log10 (∂L/∂θ)² on log10 λ at the last histogram iteration minus the
    slope at the first: negative when the ordering turns toward "smaller λ, larger gradients"
    (the paper's crossing needs the first slope > 0 and the last < 0)."""
    cells = run.fixed
    steps = sorted(
        {s for c in cells for r in _top_records(run, c) for s in getattr(r, "histograms", {})},
        key=int,
    )
    if len(steps) < 2 or len(cells) < 2:
        run.notes.append("crossing: fewer than two λ or two histogram iterations with records")
        return math.nan
    x = [math.log10(float(c.lam or 0.0)) for c in cells]
    recs = [_top_records(run, c) for c in cells]
    early = unit_slope(x, [_cell_median(r, steps[0]) for r in recs])
    late = unit_slope(x, [_cell_median(r, steps[-1]) for r in recs])
    return late - early


def escape_slope(run: RunData) -> float:
    """Iterations by which the plateau escape (5-step mean loss < 2.0) moves per decade of λ;
    a trial that never escapes counts at its length (censored)."""
    cells = run.fixed
    x, y = [], []
    for c in cells:
        steps = []
        for r in _top_records(run, c):
            losses = list(getattr(r, "step_losses", []))
            e = escape_step(losses)
            steps.append(e if math.isfinite(e) else float(len(losses)))
        if steps:
            x.append(math.log10(float(c.lam or 0.0)))
            y.append(float(np.mean(steps)))
    if len(x) < 2:
        run.notes.append("escape_slope: fewer than two λ with records")
        return math.nan
    return unit_slope(x, y)
