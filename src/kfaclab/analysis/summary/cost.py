"""What a study cost, from what is stored: ``study_cost(...) -> StudyCost`` (the report's
"Cost of this study"; issue 30), so a user can plan the next one.

- Training: every trial's Optuna start and end (``StoredTrial.started``/``completed``). The
  *trial-seconds* are the sum of each ended trial's end − start (worker-seconds: two workers
  busy for an hour are two hours). The wall time runs from the first start to the last end;
  a sweep stopped and resumed later has an idle stretch in it, so gaps longer than
  ``IDLE_GAP_SECONDS`` in which no trial ran are taken out (the *active* wall time), and said.
  Rate and parallelism use the active wall time and the same ended trials, so
  parallelism = trials per second × mean seconds per trial exactly.
- Reruns: the seconds each rerun recorded (``RerunRecord.seconds``, ``RerunOutcome.seconds``:
  building, training and evaluating in its worker, not the worker's start nor data loading).
  A rerun whose seconds are missing is counted as not recorded, never estimated.
- Analysis: the report's own phases, timed as it runs (``Laps``).

Shares are of worker-seconds: training's trial-seconds, the reruns' recorded seconds, and the
report's time less its reruns phase (whose training is already in the reruns' seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kfaclab.analysis.summary.cells import cell_label
from kfaclab.analysis.summary.types import CellLike, TrialLike

IDLE_GAP_SECONDS = 600.0  # no trial ran for 10 min: the sweep was stopped, not slow
REPORT_RERUNS_PHASE = "reruns"


@dataclass(frozen=True)
class CellCost:
    cell: str
    label: str
    planned: int  # the protocol's trials for this cell
    finished: int  # COMPLETE, diverged included
    diverged: int
    failed: int
    unfinished: int  # RUNNING or WAITING when the report was made: no end time, not counted
    timed: int  # ended trials (finished or failed) with both times
    trial_seconds: float  # Σ end − start over those

    @property
    def mean_seconds(self) -> float:
        return self.trial_seconds / self.timed if self.timed else math.nan


@dataclass(frozen=True)
class TrainingCost:
    cells: list[CellCost]
    first_start: datetime | None
    last_end: datetime | None
    idle_gaps: list[float]  # seconds of each gap longer than gap_threshold, in order
    gap_threshold: float = IDLE_GAP_SECONDS

    @property
    def timed(self) -> int:
        return sum(c.timed for c in self.cells)

    @property
    def trial_seconds(self) -> float:
        return sum(c.trial_seconds for c in self.cells)

    @property
    def span_seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return (self.last_end - self.first_start).total_seconds()

    @property
    def active_seconds(self) -> float:
        return self.span_seconds - sum(self.idle_gaps)

    @property
    def trials_per_second(self) -> float:
        return self.timed / self.active_seconds if self.active_seconds > 0 else math.nan

    @property
    def mean_seconds(self) -> float:
        return self.trial_seconds / self.timed if self.timed else math.nan

    @property
    def parallelism(self) -> float:
        """Trials in flight on average: worker-seconds per second of active wall time."""
        return self.trial_seconds / self.active_seconds if self.active_seconds > 0 else math.nan


@dataclass(frozen=True)
class RerunCost:
    what: str  # "report" (best of each cell, reruns.json) | "paired" (paired-reruns.jsonl)
    count: int
    timed: int  # reruns whose seconds are recorded
    seconds: float  # Σ of those


@dataclass
class Laps:
    """The report's phases, each the time since the previous lap; a name used twice adds up.
    ``lap`` is one line between steps, so timing the report needs no re-indented block."""

    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter, repr=False)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


@dataclass(frozen=True)
class AnalysisCost:
    phases: dict[str, float]  # the report's phases, in order
    load_seconds: float | None  # reading the study before the report began; None: not measured

    @property
    def seconds(self) -> float:
        return sum(self.phases.values()) + (self.load_seconds or 0.0)

    @property
    def own_seconds(self) -> float:
        """Less the report's own reruns, whose time the reruns' recorded seconds hold."""
        return self.seconds - self.phases.get(REPORT_RERUNS_PHASE, 0.0)


@dataclass(frozen=True)
class Plan:
    trials: int  # the protocol's trials, every cell
    cells: int
    per_cell: int | None  # when every cell plans the same number
    worker_seconds: float  # Σ over cells of planned trials × the cell's measured mean
    wall_seconds: float  # worker_seconds / the measured parallelism


@dataclass(frozen=True)
class StudyCost:
    training: TrainingCost
    reruns: list[RerunCost]
    analysis: AnalysisCost
    plan: Plan | None  # None: no timed trial to plan from

    @property
    def parts(self) -> dict[str, float]:
        """Worker-seconds by part (training, each kind of rerun, analysis)."""
        out = {"training": self.training.trial_seconds}
        out.update({f"{r.what} reruns": r.seconds for r in self.reruns})
        out["analysis"] = self.analysis.own_seconds
        return out

    @property
    def shares(self) -> dict[str, float]:
        parts = self.parts
        total = sum(parts.values())
        return {k: (v / total if total > 0 else math.nan) for k, v in parts.items()}


def training_cost(
    cells: Sequence[CellLike], trials: Iterable[TrialLike], gap: float = IDLE_GAP_SECONDS
) -> TrainingCost:
    by_cell: dict[str, list[TrialLike]] = {c.name: [] for c in cells}
    for t in trials:
        by_cell.setdefault(t.cell, []).append(t)
    rows, intervals = [], []
    for cell in cells:
        ts = by_cell[cell.name]
        spans = [s for s in map(_interval, ts) if s is not None]
        intervals += spans
        rows.append(
            CellCost(
                cell=cell.name,
                label=cell_label(cell),
                planned=int(cell.n_trials),
                finished=sum(t.state == "COMPLETE" for t in ts),
                diverged=sum(t.state == "COMPLETE" and t.status == "diverged" for t in ts),
                failed=sum(t.state == "FAIL" for t in ts),
                unfinished=sum(t.state in ("RUNNING", "WAITING") for t in ts),
                timed=len(spans),
                trial_seconds=sum((end - start).total_seconds() for start, end in spans),
            )
        )
    return TrainingCost(
        rows,
        min((s for s, _ in intervals), default=None),
        max((e for _, e in intervals), default=None),
        idle_gaps(intervals, gap),
        gap,
    )


def _interval(t: TrialLike) -> tuple[datetime, datetime] | None:
    # StoredTrial's; hand-made studies (tests' fakes) have no times and so no cost
    start, end = getattr(t, "started", None), getattr(t, "completed", None)
    if t.state not in ("COMPLETE", "FAIL") or start is None or end is None or end < start:
        return None
    return start, end


def idle_gaps(intervals: Iterable[tuple[datetime, datetime]], threshold: float) -> list[float]:
    """The stretches longer than ``threshold`` seconds in which no trial ran (no interval
    covers them), in order. Shorter ones (asking the sampler, storing a result) are work."""
    gaps: list[float] = []
    end: datetime | None = None
    for start, stop in sorted(intervals):
        if end is not None and start > end:
            gap = (start - end).total_seconds()
            if gap > threshold:
                gaps.append(gap)
        end = stop if end is None else max(end, stop)
    return gaps


def report_rerun_cost(records: Mapping[str, Any]) -> RerunCost:
    """``records``: this study's ``RerunRecord``s by cell (analysis/summary/reruns.py)."""
    seconds = [s for r in records.values() for s in _seconds(r.seconds, len(r.seeds))]
    return _rerun_cost("report", sum(len(r.seeds) for r in records.values()), seconds)


def paired_rerun_cost(outcomes: Sequence[Any]) -> RerunCost:
    """``outcomes``: this study's ``RerunOutcome``s (analysis/replication/pool.py)."""
    seconds = [s for o in outcomes for s in _seconds([getattr(o, "seconds", None)], 1)]
    return _rerun_cost("paired", len(outcomes), seconds)


def _seconds(values: Any, n: int) -> list[float]:
    # Checked, not trusted: a cache line is a file anyone may have edited.
    if not isinstance(values, list | tuple):
        return []
    ok = [float(v) for v in values[:n] if isinstance(v, int | float) and not isinstance(v, bool)]
    return [v for v in ok if math.isfinite(v) and v >= 0]


def _rerun_cost(what: str, count: int, seconds: list[float]) -> RerunCost:
    return RerunCost(what, count, len(seconds), sum(seconds))


def plan(training: TrainingCost) -> Plan | None:
    """The protocol run again on this machine: each cell's planned trials at the cell's measured
    mean (the overall mean for a cell with none timed yet), at the measured parallelism."""
    if not training.timed or not math.isfinite(training.parallelism):
        return None
    mean = training.mean_seconds
    work = sum(c.planned * (c.mean_seconds if c.timed else mean) for c in training.cells)
    planned = {c.planned for c in training.cells}
    return Plan(
        trials=sum(c.planned for c in training.cells),
        cells=len(training.cells),
        per_cell=planned.pop() if len(planned) == 1 else None,
        worker_seconds=work,
        wall_seconds=work / training.parallelism,
    )


def study_cost(
    study: Any,
    report_reruns: Mapping[str, Any],
    paired: Sequence[Any],
    laps: Laps,
    load_seconds: float | None = None,
) -> StudyCost:
    training = training_cost(study.cells, study.trials)
    reruns = [report_rerun_cost(report_reruns), paired_rerun_cost(paired)]
    analysis = AnalysisCost(dict(laps.seconds), load_seconds)
    return StudyCost(training, [r for r in reruns if r.count], analysis, plan(training))
