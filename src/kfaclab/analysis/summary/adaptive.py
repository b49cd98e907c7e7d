"""The adaptive-damping section: strategies ranked against the best fixed λ and SGD.

Tuning cost is what a user pays to get the reported loss: a strategy needs its own search only;
a fixed λ needs the whole grid (every constant-λ cell in the storage) to know which λ is best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kfaclab.analysis.statistics.intervals import MeanCI
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.types import TrialLike


@dataclass
class StrategyRow:
    label: str
    kind: str  # "adaptive" | "fixed" | "sgd"
    final_loss: MeanCI  # top-k mean with its 95% t-interval
    seconds_per_trial: MeanCI
    trials_total: int  # trials paid for, the grid included for a fixed λ
    seconds_total: float
    trials_to_reach: int | None  # search trials until the running best ≤ this row's top-k mean
    note: str = ""


@dataclass
class DampingTrace:
    """λ over training across the top-k trials: geometric mean and 10–90% quantiles per step."""

    label: str
    steps: list[int]
    geo_mean: list[float]
    q10: list[float]
    q90: list[float]
    n: int


@dataclass
class AdaptiveSection:
    rows: list[StrategyRow]  # best first (nan losses last)
    traces: list[DampingTrace]
    fixed_reference: list[tuple[str, float]]  # (label, λ) of the constant cells, for the trace plot
    notes: list[str] = field(default_factory=list)


def adaptive_section(
    cells: Sequence[CellSummary],
    trials_by_cell: Mapping[str, Sequence[TrialLike]],
    fixed_grid_cells: int | None = None,
) -> AdaptiveSection | None:
    """``fixed_grid_cells`` (protocol ``[report] fixed_grid_cells``): how many λ cells the grid that
    chose the fixed λ had, when that grid ran in another storage (an adaptive protocol carries
    only its best λ). The fixed route's tuning cost is then scaled up to it, and says so."""
    strategies = [c for c in cells if c.strategy is not None]
    if not strategies:
        return None
    fixed = [c for c in cells if c.lam is not None and c.n_ok]
    rows = [_row(c, "adaptive", c.n_complete, c.seconds_total) for c in strategies]
    notes = []
    if fixed:
        best_fixed = min(fixed, key=lambda c: c.final_loss.mean)
        grid_trials = sum(c.n_complete for c in cells if c.lam is not None)
        grid_seconds = sum(c.seconds_total for c in cells if c.lam is not None)
        n_grid = sum(c.lam is not None for c in cells)
        rows.append(
            _row(
                best_fixed,
                "fixed",
                grid_trials,
                grid_seconds,
                note=f"best of {n_grid} fixed λ; cost counts all {n_grid} grid cells",
            )
        )
        if fixed_grid_cells is not None and fixed_grid_cells > n_grid:
            scale = fixed_grid_cells / n_grid
            rows[-1] = _row(
                best_fixed,
                "fixed",
                round(grid_trials * scale),
                grid_seconds * scale,
                note=(
                    f"best of a {fixed_grid_cells}-λ grid run elsewhere; cost = this storage's "
                    f"{n_grid} fixed cell(s) × {scale:g} (estimate)"
                ),
            )
        elif n_grid == 1:
            notes.append(
                "only one fixed λ is in this storage: the grid that chose it ran elsewhere, "
                "so its tuning cost here is a lower bound (one cell, not the grid); set "
                "[report] fixed_grid_cells to count the whole grid"
            )
    for c in cells:
        if c.optimizer == "sgd":
            rows.append(_row(c, "sgd", c.n_complete, c.seconds_total))
    rows.sort(key=lambda r: (math.isnan(r.final_loss.mean), r.final_loss.mean))
    traces = [
        t
        for c in strategies + fixed
        if (t := _trace(c, trials_by_cell.get(c.name, []))) is not None
    ]
    ref = [(c.label, float(c.lam)) for c in fixed if c.lam is not None]
    return AdaptiveSection(rows, traces, ref, notes)


def _row(c: CellSummary, kind: str, trials: int, seconds: float, note: str = "") -> StrategyRow:
    reach = None
    if math.isfinite(c.final_loss.mean):
        best = np.minimum.accumulate(np.asarray(c.values_in_order, dtype=float))
        hit = np.nonzero(best <= c.final_loss.mean)[0]
        reach = int(hit[0]) + 1 if hit.size else None
    return StrategyRow(c.label, kind, c.final_loss, c.seconds, trials, seconds, reach, note)


def _trace(c: CellSummary, trials: Sequence[TrialLike]) -> DampingTrace | None:
    top = set(c.top_numbers)
    traces = [
        t.record.damping_trace
        for t in trials
        if t.number in top and t.record is not None and t.record.damping_trace
    ]
    if not traces:
        return None
    length = min(len(x) for x in traces)
    arr = np.log10(np.clip(np.asarray([x[:length] for x in traces], dtype=float), 1e-300, None))
    q10, q90 = np.quantile(arr, [0.1, 0.9], axis=0)
    return DampingTrace(
        c.label,
        list(range(1, length + 1)),
        (10 ** arr.mean(axis=0)).tolist(),
        (10**q10).tolist(),
        (10**q90).tolist(),
        len(traces),
    )
