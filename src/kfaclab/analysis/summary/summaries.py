"""Everything the report shows, as plain data computed from a stored study (no drawing here).

``summarize(study)`` is the one entry point; figures and the report read only its result, and
tests check its numbers against direct computations from the exported trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfaclab.analysis.statistics.binding import Binding, bindings
from kfaclab.analysis.statistics.search import (
    BudgetCurve,
    EdgeWarning,
    ParamSpread,
    Range,
    budget_curve,
    cell_ranges,
    edge_warnings,
    param_spread,
)
from kfaclab.analysis.summary.adaptive import AdaptiveSection, adaptive_section
from kfaclab.analysis.summary.cells import CellSummary, summarize_cell
from kfaclab.analysis.summary.curvature import CurvatureSummary, curvature_summary
from kfaclab.analysis.summary.gradients import (
    DEFAULT_HISTOGRAM_LAMBDAS,
    GradientHistograms,
    TrialMedians,
    choose_cells,
    gradient_histograms,
    per_trial_medians,
)
from kfaclab.analysis.summary.reruns import RerunRecord, RerunSummary, rerun_summaries
from kfaclab.analysis.summary.types import StudySetLike, TrialLike

HYPERPARAMETERS = ("lr", "momentum", "lr_decay")


@dataclass
class StudySummary:
    protocol: dict[str, Any]
    cells: list[CellSummary]  # fixed λ ascending, then adaptive strategies, then SGD
    histograms: GradientHistograms | None
    curvature: CurvatureSummary | None
    # hyperparams[cell label][param] = best value and top-k quartiles
    hyperparams: dict[str, dict[str, ParamSpread]]
    edge_warnings: list[EdgeWarning]
    budgets: list[BudgetCurve]
    reruns: list[RerunSummary]
    adaptive: AdaptiveSection | None
    notes: list[str] = field(default_factory=list)
    # cell label -> the search ranges that bind its optimum (binding.py); absent: none binds
    bindings: dict[str, list[Binding]] = field(default_factory=dict)
    # the histogram cells' per-trial medians of log10 (∂L/∂θ)², for the claims' bootstrap
    trial_medians: TrialMedians = field(default_factory=dict)

    @property
    def fixed(self) -> list[CellSummary]:
        return [c for c in self.cells if c.lam is not None]

    @property
    def sgd(self) -> CellSummary | None:
        return next((c for c in self.cells if c.optimizer == "sgd"), None)

    @property
    def best_fixed(self) -> CellSummary | None:
        ok = [c for c in self.fixed if math.isfinite(c.final_loss.mean)]
        return min(ok, key=lambda c: c.final_loss.mean) if ok else None

    @property
    def complete(self) -> bool:
        return all(c.finished for c in self.cells)


def all_cells_finished(study: StudySetLike) -> bool:
    """Whether every cell of a stored sweep has run all its trials (its top-k is final)."""
    by_cell = trials_by_cell(study)
    return all(summarize_cell(c, by_cell.get(c.name, [])).finished for c in study.cells)


def trials_by_cell(study: StudySetLike) -> dict[str, list[TrialLike]]:
    out: dict[str, list[TrialLike]] = {c.name: [] for c in study.cells}
    for t in study.trials:
        out.setdefault(t.cell, []).append(t)
    return out


def _order(c: CellSummary) -> tuple[int, float, str]:
    if c.lam is not None:
        return (0, c.lam, c.name)
    return (1, 0.0, c.label) if c.strategy is not None else (2, 0.0, c.name)


def summarize(study: StudySetLike, reruns: Mapping[str, RerunRecord] | None = None) -> StudySummary:
    by_cell = trials_by_cell(study)
    cells = sorted((summarize_cell(c, by_cell.get(c.name, [])) for c in study.cells), key=_order)
    protocol = dict(study.protocol)
    wanted = _histogram_lambdas(protocol)
    chosen, hist_notes = choose_cells(cells, wanted)
    hists = gradient_histograms(chosen, by_cell)
    if hists is not None:
        hists.notes.extend(hist_notes)
    hyper = {}
    for c in cells:
        spreads = {
            p: s for p in HYPERPARAMETERS if (s := param_spread(c, by_cell.get(c.name, []), p))
        }
        if spreads:
            hyper[c.label] = spreads
    notes = [f"{c.label}: {n}" for c in cells for n in c.notes]

    def ranges_of(cell: CellSummary) -> list[Range]:
        return cell_ranges(protocol, cell)

    return StudySummary(
        protocol=protocol,
        cells=cells,
        histograms=hists,
        curvature=curvature_summary(cells, by_cell),
        hyperparams=hyper,
        edge_warnings=edge_warnings(cells, by_cell, ranges_of),
        budgets=[b for c in cells if (b := budget_curve(c)) is not None],
        reruns=rerun_summaries(cells, reruns or {}),
        adaptive=adaptive_section(cells, by_cell, _fixed_grid_cells(protocol)),
        notes=notes,
        bindings=bindings(cells, by_cell, ranges_of),
        trial_medians=per_trial_medians(chosen, by_cell),
    )


def _histogram_lambdas(protocol: Mapping[str, Any]) -> Sequence[float]:
    report = protocol.get("report", {})
    wanted = report.get("histogram_lambdas") if isinstance(report, Mapping) else None
    if isinstance(wanted, list) and all(isinstance(x, int | float) for x in wanted):
        return [float(x) for x in wanted]
    return DEFAULT_HISTOGRAM_LAMBDAS


def _fixed_grid_cells(protocol: Mapping[str, Any]) -> int | None:
    report = protocol.get("report", {})
    value = report.get("fixed_grid_cells") if isinstance(report, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
