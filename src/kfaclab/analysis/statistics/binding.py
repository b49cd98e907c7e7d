"""Does a search range decide the answer? Per cell and hyperparameter, whether the optimum presses
against a range the protocol chose (as opposed to a bound the hyperparameter cannot cross).

A cell's result is only a property of λ if its optimum lies inside the search space: if the best
learning rate of λ = 100 sits at lr's upper bound, "λ = 100 is slow" may only say "lr ≤ 1 is too
small for λ = 100". Claims that depend on such a cell are inconclusive (see claims.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kfaclab.analysis.statistics.search import Range
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.types import TrialLike

LOG_OUTER = 0.05
"""Fraction of a log-scaled range, at each end, that counts as "pressing on the bound". 5% of the
9 decades of lr is ~0.45 decades: an optimum that close to a bound of a Bayesian search could well
lie beyond it (TPE's density there is still rising)."""

LINEAR_OUTER = 0.02
"""The same for a linear range (momentum): only its edge, since a linear range's last 5% is often
where a real optimum sits (momentum 0.95 of [0, 0.99])."""

TOP_FRACTION = 0.10
"""A range binds when more than this fraction of the top-k sits in the outer band at one end, even
if the best trial does not: the top-k mean, which the claims compare, is then shaped by it."""

NATURAL_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "lr_decay": (0.0, 1.0),  # α = final lr / initial lr: 1 is "no decay", 0 "decay to zero"
    "momentum": (0.0, None),  # no momentum: the search cannot go below it
}
"""Bounds of the hyperparameter itself rather than of our search: an optimum there is an answer
(e.g. "no decay is best"), not an artefact, so it never binds."""


@dataclass(frozen=True)
class Binding:
    """A search range that binds one cell's optimum."""

    cell: str  # the cell's label
    param: str
    edge: str  # "low" | "high"
    bound: float
    best: float  # the best trial's value of the parameter
    best_in_band: bool
    top_fraction: float  # fraction of the top-k in the outer band at that edge

    def sentence(self) -> str:
        where = "the best trial and " if self.best_in_band else ""
        return (
            f"{self.cell}: the search range of {self.param} binds at its {self.edge} end "
            f"({self.bound:.3g}): {where}{self.top_fraction:.0%} of the top-k lie in its outer "
            "band, so the optimum may lie outside the range."
        )


def _position(x: float, r: Range) -> float:
    """Where x lies in the range, 0 at low and 1 at high (log scale for a log range)."""
    if r.log:
        if x <= 0:
            return -math.inf
        return (math.log(x) - math.log(r.low)) / (math.log(r.high) - math.log(r.low))
    return (x - r.low) / (r.high - r.low)


def _in_band(x: float, r: Range, edge: str, band: float) -> bool:
    pos = _position(x, r)
    return pos <= band if edge == "low" else pos >= 1 - band


def _natural(param: str, edge: str, bound: float) -> bool:
    lo, hi = NATURAL_BOUNDS.get(param, (None, None))
    ref = lo if edge == "low" else hi
    return ref is not None and math.isclose(bound, ref, abs_tol=1e-12)


def cell_bindings(
    cell: CellSummary, trials: Sequence[TrialLike], ranges: Sequence[Range]
) -> list[Binding]:
    """The ranges that bind this cell's optimum (best trial or > TOP_FRACTION of its top-k in the
    outer band of one end); empty for a cell without a best trial."""
    if cell.best is None:
        return []
    top = set(cell.top_numbers)
    top_params = [t.params for t in trials if t.number in top]
    out = []
    for r in ranges:
        band = LOG_OUTER if r.log else LINEAR_OUTER
        best = cell.best.params.get(r.name)
        if not isinstance(best, int | float):
            continue
        values = [float(p[r.name]) for p in top_params if isinstance(p.get(r.name), int | float)]
        for edge, bound in (("low", r.low), ("high", r.high)):
            if _natural(r.name, edge, bound):
                continue

            frac = sum(_in_band(v, r, edge, band) for v in values) / len(values) if values else 0.0
            best_in = _in_band(float(best), r, edge, band)
            if (best_in or frac > TOP_FRACTION) and not flat_toward(trials, r, edge):
                out.append(Binding(cell.label, r.name, edge, bound, float(best), best_in, frac))
    return out


SLOPE_BAND = 0.25
"""The slope test looks at the finished trials within this fraction of the range (log scale for a
log range) next to the bound: near enough to describe the loss at the edge, wide enough to hold
tens of trials of a 300-trial search."""

MIN_SLOPE_TRIALS = 8


def flat_toward(trials: Sequence[TrialLike], r: Range, edge: str) -> bool:
    """True when the loss is flat toward the bound: the finished, non-diverged trials in the
    ``SLOPE_BAND`` next to it show no significant decrease of log loss toward it (least squares,
    95%). An optimum pressed against a bound along a flat direction (lr under a KL clip, say) would
    be no better past it, so the range does not decide the answer. Too few trials: not flat."""
    from scipy import stats

    pts = []
    for t in trials:
        v, x = t.value, t.params.get(r.name)
        if v is None or not math.isfinite(v) or v <= 0 or not isinstance(x, int | float):
            continue
        pos = _position(float(x), r)
        toward = pos if edge == "high" else 1.0 - pos  # 1 at the bound
        if toward >= 1.0 - SLOPE_BAND:
            pts.append((toward, math.log(v)))
    if len(pts) < MIN_SLOPE_TRIALS or len({p for p, _ in pts}) < 3:
        return False
    fit = stats.linregress([p for p, _ in pts], [y for _, y in pts])
    half = stats.t.ppf(0.975, len(pts) - 2) * fit.stderr
    return bool(fit.slope + half >= 0.0)  # not significantly decreasing toward the bound


def bindings(
    cells: Sequence[CellSummary],
    trials_by_cell: Mapping[str, Sequence[TrialLike]],
    ranges_of: Callable[[CellSummary], Sequence[Range]],
) -> dict[str, list[Binding]]:
    """Cell label → its binding ranges (cells with none are absent); ``ranges_of(cell)``: the
    ranges that cell was searched in."""
    out = {}
    for c in cells:
        found = cell_bindings(c, trials_by_cell.get(c.name, []), ranges_of(c))
        if found:
            out[c.label] = found
    return out
