"""Continuous responses of one design run, computed from its stored studies.

``RESPONSES`` maps a response's name to a function ``RunData -> float`` (nan: undefined for this
run, with the reason in ``run.notes``). Add a response by adding an entry; ``kfaclab effects``
estimates factor effects on every registered one. "crossing" and "escape_slope" (responses_grad)
read the trials' records.

The per-cell statistic is the report's (kfaclab.analysis.summary.cells.summarize_cell): the mean
final training loss of the top-k non-diverged trials. λ is kfaclab's (the λ the optimizer adds to
G⊗A, after any convention conversion), on a log10 scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from kfaclab.analysis.effects import responses_grad
from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.summary.cells import CellSummary, summarize_cell
from kfaclab.study.reader import StudySet


@dataclass
class RunData:
    """One run × seed of a design, as the responses see it."""

    name: str  # "run03-seed1"
    seed: int
    levels: tuple[int, ...]  # level index per factor
    study: StudySet  # the run's stored studies (records loaded only if the reader asked)
    notes: list[str] = field(default_factory=list)  # why a response is nan, clamped, …
    # The run's paired reruns (``kfaclab replicate RUN_FOLDER``), this study's only; empty: none.
    reruns: list[RerunOutcome] = field(default_factory=list)

    @cached_property
    def cells(self) -> list[CellSummary]:
        return [summarize_cell(c, self.study.cell_trials(c.name, None)) for c in self.study.cells]

    @cached_property
    def fixed(self) -> list[CellSummary]:
        """The constant-λ K-FAC cells, λ ascending."""
        cells = [c for c in self.cells if c.optimizer == "kfac" and c.lam is not None]
        return sorted(cells, key=lambda c: float(c.lam or 0.0))

    def loss_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(log10 λ, top-k mean final loss) of the fixed-λ cells with a non-diverged trial."""
        pts = [(math.log10(float(c.lam or 0.0)), c.final_loss.mean) for c in self.fixed]
        pts = [(x, y) for x, y in pts if math.isfinite(y)]
        return np.array([x for x, _ in pts]), np.array([y for _, y in pts])


Response = Callable[[RunData], float]


def log10_best_lambda(run: RunData) -> float:
    """log10 of the loss-minimising λ: the vertex of the parabola through the grid's minimum
    and its two neighbours (log10 λ, top-k mean loss). A minimum at either end of the grid is
    clamped to that end and noted, since the curve's minimum may lie beyond it."""
    x, y = run.loss_curve()
    if x.size == 0:
        run.notes.append("log10_best_lambda: no fixed-λ cell has a non-diverged trial")
        return math.nan
    i = int(np.argmin(y))
    if i == 0 or i == x.size - 1:
        end = "smallest" if i == 0 else "largest"
        run.notes.append(f"log10_best_lambda: clamped to the grid's {end} λ (10^{x[i]:g})")
        return float(x[i])
    return parabola_vertex(x[i - 1 : i + 2], y[i - 1 : i + 2])


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> float:
    """The vertex of the parabola through three points whose middle one is lowest, clamped to
    [x[0], x[2]] (it lies there already whenever the middle point is strictly lowest)."""
    a, b, _ = np.polyfit(x, y, 2)
    if not a > 0:  # flat: the middle point ties an end point
        return float(x[1])
    return float(np.clip(-b / (2 * a), x[0], x[2]))


def loss_gap_at_one(run: RunData) -> float:
    """Top-k mean loss at λ = 1 minus the lowest over the grid (0: λ = 1 is the best cell)."""
    x, y = run.loss_curve()
    at_one = [v for u, v in zip(x, y, strict=True) if u == 0.0]
    if not at_one:
        run.notes.append("loss_gap_at_one: no λ = 1 cell with a non-diverged trial")
        return math.nan
    return float(at_one[0] - y.min())


def smallest_lambda_divergence(run: RunData) -> float:
    """The fraction of the smallest λ's finished search trials that diverged: TPE's proposals,
    so it measures where the sampler went as much as instability (see the rerun response)."""
    if not run.fixed:
        run.notes.append("smallest_lambda_divergence: no fixed-λ cell")
        return math.nan
    rate = run.fixed[0].divergence_rate
    if not math.isfinite(rate):
        run.notes.append("smallest_lambda_divergence: the smallest λ has no finished trial")
    return float(rate)


def smallest_lambda_rerun_divergence(run: RunData) -> float:
    """P(diverge) of the smallest λ's top configurations on new seeds (the run's paired reruns):
    instability of what the search found, not of what it tried. Every rerun of that cell counts,
    a diverged one as an outcome; 1 when every trial of the cell diverged (the search found
    nothing to rerun); nan (and a note naming the command) without reruns."""
    if not run.fixed:
        run.notes.append("smallest_lambda_rerun_divergence: no fixed-λ cell")
        return math.nan
    cell = run.fixed[0].name
    outcomes = [o for o in run.reruns if o.cell == cell]
    if not outcomes and run.fixed[0].divergence_rate == 1.0:
        # Every trial the search ran there diverged: it found no configuration to rerun, and
        # divergence is an outcome, not missing data.
        run.notes.append(
            f"smallest_lambda_rerun_divergence: every trial of {cell} diverged (nothing to "
            "rerun): counted as 1"
        )
        return 1.0
    if not outcomes:
        run.notes.append(
            f"smallest_lambda_rerun_divergence: no paired reruns of {cell} "
            f"(kfaclab replicate RUN_FOLDER --cells {cell})"
        )
        return math.nan
    return sum(o.diverged for o in outcomes) / len(outcomes)


def kfac_trial_seconds(run: RunData) -> float:
    """Mean wall seconds of a finished fixed-λ K-FAC trial (Optuna's start and end times): what
    the run's choices cost per trial, as measured where it ran (under that machine's load)."""
    from kfaclab.analysis.summary.cost import training_cost

    names = {c.name for c in run.fixed}
    cells = [c for c in run.study.cells if c.name in names]
    cost = training_cost(cells, [t for t in run.study.trials if t.cell in names])
    if not cost.timed:
        run.notes.append("kfac_trial_seconds: no timed K-FAC trial")
    return float(cost.mean_seconds)


def wall_minutes(run: RunData) -> float:
    """The run's active wall time in minutes: first trial start to last end, idle gaps over
    ``IDLE_GAP_SECONDS`` removed (a sweep stopped between sessions does not count its pause)."""
    from kfaclab.analysis.summary.cost import training_cost

    cost = training_cost(run.study.cells, run.study.trials)
    return cost.active_seconds / 60.0 if cost.timed else math.nan


RESPONSES: dict[str, Response] = {
    "log10_best_lambda": log10_best_lambda,
    "loss_gap_at_one": loss_gap_at_one,
    "smallest_lambda_divergence": smallest_lambda_divergence,
    "smallest_lambda_rerun_divergence": smallest_lambda_rerun_divergence,
    "crossing": responses_grad.crossing,
    "escape_slope": responses_grad.escape_slope,
    "kfac_trial_seconds": kfac_trial_seconds,
    "wall_minutes": wall_minutes,
}
# Whether a response needs the trial records (curves, histograms): only then are they read.
NEEDS_RECORDS: set[str] = {"crossing", "escape_slope"}
