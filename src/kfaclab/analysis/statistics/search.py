"""What the Bayesian search found: best hyperparameters against λ, search-space edges, and
whether the trial budget was enough (best loss against the number of trials)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfaclab.analysis.statistics.intervals import BestOfM, best_of_m, running_min
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.types import TrialLike
from kfaclab.lr_scale import cell_lr_bounds

EDGE_MARGIN = 0.02  # fraction of the (log-)range that counts as "on the edge"


@dataclass(frozen=True)
class Range:
    name: str
    low: float
    high: float
    log: bool


@dataclass
class ParamSpread:
    """One hyperparameter of one cell: the best trial's value and the top-k quartiles."""

    best: float
    q25: float
    median: float
    q75: float


@dataclass
class EdgeWarning:
    cell: str
    param: str
    value: float
    edge: str  # "low" | "high"
    bound: float
    top_fraction: float  # fraction of the top-k within the margin of that edge
    # the loss is flat toward the edge (binding.flat_toward): the edge decides nothing, and the
    # binding rule, which decides verdicts, does not count it
    flat: bool = False

    def sentence(self) -> str:
        where = (
            f"{self.cell}: best {self.param} = {self.value:.3g} is at the {self.edge} edge of the "
            f"search space ({self.bound:g}); {self.top_fraction:.0%} of the top-k are there too."
        )
        if self.flat:
            return where + (
                " The loss is flat toward it (no significant decrease over the trials near the "
                "bound), so a wider range would not change the answer."
            )
        return where + " The optimum may lie outside the range."


@dataclass
class BudgetCurve:
    """Best final loss against the number of trials, for one cell."""

    label: str
    running_best: list[float]  # in the order the search ran
    subsampled: BestOfM  # exchangeable-draw estimate (order statistics)


def search_ranges(protocol: Mapping[str, Any]) -> list[Range]:
    """Ranges from the protocol's search table, accepting ``name = [low, high]`` or
    ``name = {low=…, high=…, log=…}`` under ``search``/``search_space``; lr is log by default."""
    table = protocol.get("search") or protocol.get("search_space") or {}
    if isinstance(table, Mapping) and isinstance(table.get("space"), Mapping):
        table = table["space"]
    out = []
    for name, spec in table.items() if isinstance(table, Mapping) else []:
        low = high = None
        log = name in ("lr", "learning_rate")
        if (
            isinstance(spec, list | tuple)
            and len(spec) >= 2
            and all(isinstance(x, int | float) for x in spec[:2])
        ):
            low, high = float(spec[0]), float(spec[1])
        elif isinstance(spec, Mapping) and {"low", "high"} <= set(spec):
            low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", log))
        if low is not None and high is not None and high > low and (not log or low > 0):
            out.append(Range(str(name), low, high, log))
    return out


def cell_ranges(protocol: Mapping[str, Any], cell: CellSummary) -> list[Range]:
    """The ranges ``cell`` was searched in: the protocol's, with lr scaled by the cell's λ when
    the protocol's ``search.lr_scale`` says so (kfaclab.lr_scale, which the sweep also uses)."""
    table = protocol.get("search")
    scale = str(table.get("lr_scale", "none")) if isinstance(table, Mapping) else "none"
    out = []
    for r in search_ranges(protocol):
        if r.name == "lr":
            low, high = cell_lr_bounds(r.low, r.high, cell.lam, scale)
            r = Range(r.name, low, high, r.log)
        out.append(r)
    return out + strategy_ranges(protocol, cell)


def strategy_ranges(protocol: Mapping[str, Any], cell: CellSummary) -> list[Range]:
    """The searched constants of an adaptive cell's damping strategy, as the trials name them
    (``damping.<constant>``): their ranges can bind an optimum as lr's can."""
    if cell.strategy is None:
        return []
    cells = protocol.get("cells")
    strategies = cells.get("strategies") if isinstance(cells, Mapping) else None
    if not isinstance(strategies, list):
        return []
    for entry in strategies:
        if not isinstance(entry, Mapping):
            continue
        name = str(entry.get("name") or entry.get("kind", ""))
        if name.replace("_", " ") != cell.label and name != cell.label:
            continue
        table = {"search": entry.get("search", {})}
        return [
            Range(f"damping.{r.name}", r.low, r.high, r.log)
            for r in search_ranges(table)
            if not r.name.startswith("damping.")
        ]
    return []


def param_spread(cell: CellSummary, trials: Sequence[TrialLike], name: str) -> ParamSpread | None:
    if cell.best is None or not isinstance(cell.best.params.get(name), int | float):
        return None
    top = set(cell.top_numbers)
    xs = [
        float(t.params[name])
        for t in trials
        if t.number in top and isinstance(t.params.get(name), int | float)
    ]
    q25, med, q75 = (float(q) for q in np.quantile(xs, [0.25, 0.5, 0.75]))
    return ParamSpread(float(cell.best.params[name]), q25, med, q75)


def edge_warnings(
    cells: Sequence[CellSummary],
    trials_by_cell: Mapping[str, Sequence[TrialLike]],
    ranges_of: Callable[[CellSummary], Sequence[Range]],
    margin: float = EDGE_MARGIN,
) -> list[EdgeWarning]:
    """Best trials at an edge of a range, each with whether the loss is flat toward it (the
    binding rule's slope test, so a warning never contradicts a verdict's binding check)."""
    from kfaclab.analysis.statistics.binding import flat_toward  # binding imports this module

    out = []
    for cell in cells:
        if cell.best is None:
            continue
        top = set(cell.top_numbers)
        top_params = [t.params for t in trials_by_cell.get(cell.name, []) if t.number in top]
        for r in ranges_of(cell):
            x = cell.best.params.get(r.name)
            if not isinstance(x, int | float):
                continue
            edge = _edge(float(x), r, margin)
            if edge is None:
                continue
            near = [
                p
                for p in top_params
                if isinstance(p.get(r.name), int | float)
                and _edge(float(p[r.name]), r, margin) == edge
            ]
            out.append(
                EdgeWarning(
                    cell.label,
                    r.name,
                    float(x),
                    edge,
                    r.low if edge == "low" else r.high,
                    len(near) / max(len(top_params), 1),
                    flat_toward(trials_by_cell.get(cell.name, []), r, edge),
                )
            )
    return out


def _edge(x: float, r: Range, margin: float) -> str | None:
    f = (lambda v: math.log(v)) if r.log else (lambda v: v)
    if r.log and x <= 0:
        return "low"
    pos = (f(x) - f(r.low)) / (f(r.high) - f(r.low))
    return "low" if pos <= margin else "high" if pos >= 1 - margin else None


def budget_curve(cell: CellSummary) -> BudgetCurve | None:
    if not cell.values_in_order:
        return None
    return BudgetCurve(
        cell.label, running_min(cell.values_in_order), best_of_m(cell.values_in_order)
    )
