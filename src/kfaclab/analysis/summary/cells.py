"""Per-cell summaries: the top-k trials by final training loss and what they have in common.

Selection rule (the paper's aggregation): among finished trials with a finite final loss, the k
with the lowest loss. Diverged trials (loss = inf) never enter the top-k: their curves stop early
and would drag a mean curve to infinity; they are counted in the divergence rate instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.statistics.intervals import MeanCI, curve_band, mean_ci
from kfaclab.analysis.summary.types import CellLike, TrialLike


@dataclass
class Curve:
    """A mean curve over trials with its 95% t-interval band (nan band where n < 2)."""

    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    n: int


@dataclass
class BestTrial:
    number: int
    value: float
    params: dict[str, Any]
    test_accuracy: float
    seed: int | None


@dataclass
class CellSummary:
    name: str
    optimizer: str
    label: str  # what plots and tables call the cell: "SGD", "λ=1e-03", or the strategy's name
    lam: float | None  # the constant λ, if the cell has one
    strategy: str | None  # the adaptive rule's kind, if the cell has one
    n_target: int
    n_complete: int
    n_running: int  # RUNNING or WAITING
    n_failed: int
    n_ok: int
    n_diverged: int
    top_k: int  # requested
    top_numbers: list[int]  # trial numbers selected, best first
    final_loss: MeanCI  # over the top-k
    test_accuracy: MeanCI  # over the top-k (final evaluation)
    seconds: MeanCI  # wall time per finished trial (all finished trials, not only the top-k)
    seconds_total: float
    curve: Curve | None  # mean minibatch-loss curve of the top-k
    best: BestTrial | None
    values_in_order: list[float] = field(default_factory=list)  # finished trials, by number
    notes: list[str] = field(default_factory=list)

    @property
    def divergence_rate(self) -> float:
        done = self.n_ok + self.n_diverged
        return self.n_diverged / done if done else math.nan

    @property
    def finished(self) -> bool:
        return self.n_running == 0 and self.n_complete + self.n_failed >= self.n_target


def constant_lambda(damping: Any) -> float | None:
    """λ of a constant-damping spec (a number or {"kind": "constant", "value": x}), else None."""
    if isinstance(damping, bool):
        return None
    if isinstance(damping, int | float):
        return float(damping)
    if isinstance(damping, Mapping) and str(damping.get("kind", "")).lower() == "constant":
        for key in ("value", "damping", "lam", "initial"):
            if isinstance(damping.get(key), int | float):
                return float(damping[key])
    return None


def strategy_kind(damping: Any) -> str | None:
    if isinstance(damping, Mapping) and constant_lambda(damping) is None:
        return str(damping.get("kind", "adaptive"))
    return None


def cell_label(cell: CellLike) -> str:
    """ "SGD", "λ=1e-03" (the λ as the protocol wrote it, convention included) or the strategy's
    name: the study's own ``damping_label`` wins so tables match ``kfaclab status``."""
    if cell.optimizer == "sgd":
        return "SGD"
    lam = constant_lambda(cell.damping)
    if lam is not None:
        return f"λ={cell.damping_label or format(lam, '.0e')}"
    return str(cell.damping_label or strategy_kind(cell.damping)).replace("_", " ")


def trial_value(t: TrialLike) -> float:
    """The final loss of a finished trial (inf for diverged), falling back to the record."""
    if t.value is not None:
        return float(t.value)
    if t.record is not None:
        return float(t.record.value)
    return math.inf


def summarize_cell(cell: CellLike, trials: Sequence[TrialLike]) -> CellSummary:
    trials = sorted(trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state == "COMPLETE"]
    diverged = [t for t in complete if t.status == "diverged" or not math.isfinite(trial_value(t))]
    diverged_numbers = {t.number for t in diverged}
    ok = [t for t in complete if t.number not in diverged_numbers]
    ranked = sorted(ok, key=trial_value)
    top = ranked[: max(int(cell.top_k), 1)]
    seconds = [float(t.seconds) for t in complete if t.seconds is not None]
    accs = [t.record.final_test_accuracy for t in top if t.record is not None]
    summary = CellSummary(
        name=cell.name,
        optimizer=cell.optimizer,
        label=cell_label(cell),
        lam=constant_lambda(cell.damping) if cell.optimizer != "sgd" else None,
        strategy=strategy_kind(cell.damping) if cell.optimizer != "sgd" else None,
        n_target=int(cell.n_trials),
        n_complete=len(complete),
        n_running=sum(t.state in ("RUNNING", "WAITING") for t in trials),
        n_failed=sum(t.state == "FAIL" for t in trials),
        n_ok=len(ok),
        n_diverged=len(diverged),
        top_k=int(cell.top_k),
        top_numbers=[t.number for t in top],
        final_loss=mean_ci([trial_value(t) for t in top]),
        test_accuracy=mean_ci([a for a in accs if math.isfinite(a)]),
        seconds=mean_ci(seconds),
        seconds_total=float(sum(seconds)),
        curve=_mean_curve(top),
        best=_best(ranked[0]) if ranked else None,
        values_in_order=[trial_value(t) for t in complete],
    )
    summary.notes = _notes(summary)
    return summary


def _mean_curve(top: Sequence[TrialLike]) -> Curve | None:
    """Mean of the top-k minibatch-loss curves, over the steps every one of them completed."""
    losses = [t.record.step_losses for t in top if t.record is not None and t.record.step_losses]
    if not losses:
        return None
    length = min(len(x) for x in losses)
    arr = np.asarray([x[:length] for x in losses], dtype=float)
    mean, lo, hi = curve_band(arr)
    # step_losses[i] is the loss of the minibatch used by update i+1 (iterations count from 1)
    return Curve(list(range(1, length + 1)), mean.tolist(), lo.tolist(), hi.tolist(), len(losses))


def _best(t: TrialLike) -> BestTrial:
    rec = t.record
    return BestTrial(
        number=t.number,
        value=trial_value(t),
        params=dict(t.params),
        test_accuracy=rec.final_test_accuracy if rec is not None else math.nan,
        seed=rec.config.seed if rec is not None else None,
    )


def _notes(s: CellSummary) -> list[str]:
    """Plain sentences about a cell's state that the report must not hide."""
    notes = []
    if s.n_running or s.n_complete + s.n_failed < s.n_target:
        notes.append(
            f"still running: {s.n_complete} of {s.n_target} trials finished"
            + (f", {s.n_running} in progress" if s.n_running else "")
        )
    if s.n_complete and not s.n_ok:
        notes.append(f"every finished trial diverged ({s.n_diverged} of {s.n_complete})")
    elif s.n_complete == 0:
        notes.append("no finished trial yet")
    elif s.n_ok < s.top_k:
        notes.append(
            f"only {s.n_ok} non-diverged trials for a top-{s.top_k}; the mean uses {s.n_ok}"
        )
    if s.n_failed:
        notes.append(f"{s.n_failed} trials failed with an error")
    if s.best is not None and s.best.value >= CHANCE_SHARE * CHANCE_LOSS:
        notes.append(
            f"never left chance level: its best final loss {s.best.value:.3g} is within "
            f"{1 - CHANCE_SHARE:.0%} of ln 10 = {CHANCE_LOSS:.3f}, the loss of a uniform "
            "prediction over ten classes; its numbers describe a model that learned nothing"
        )
    return notes


CHANCE_LOSS = math.log(10.0)
CHANCE_SHARE = 0.95
"""A cell whose *best* trial ends above 95% of ln 10 never trained: compared as a loss it would
look merely "worse", which hides that none of its hyperparameters worked."""
