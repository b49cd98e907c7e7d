"""`kfaclab status DESIGN_DIR`: one line per run of a factorial design, then the whole design.

A run's line sums its cells' progress (study/progress.py, the per-cell table of one sweep):
trials done of planned, diverged, running, and its state: done, sweeping (some trials stored), or
not started (no storage yet, or its studies hold no trial). The design's ETA is its remaining
trials at the rate of the trials finished in the last ``WINDOW_SECONDS`` over all runs: runs go
one after another, so the recent rate of whichever run is sweeping is the design's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from optuna.trial import FrozenTrial

from kfaclab.errors import UsageError
from kfaclab.study.design_schema import Design, DesignRun
from kfaclab.study.progress import cell_trials, format_duration, recent_rate, summarize
from kfaclab.study.registry import pick_protocol
from kfaclab.text import clean


@dataclass(frozen=True)
class RunProgress:
    name: str
    levels: str  # "tanh, he, …": the run's level label of each factor
    done: int
    total: int  # planned trials (0: not started, its cells unknown)
    diverged: int
    running: int

    @property
    def state(self) -> str:
        if self.total == 0 or self.done + self.running == 0:  # its studies may exist, empty
            return "not started"
        return "done" if self.done >= self.total else "sweeping"


def run_progress(
    folder: Path, design: Design, run: DesignRun, url: str | None
) -> tuple[RunProgress, list[FrozenTrial]]:
    """One run's line and its trials (for the design's rate); a run with no storage yet, or
    none of its protocol in a shared database, is "not started"."""
    from kfaclab.study.design_sweep import run_spec

    levels = ", ".join(f.labels[i] for f, i in zip(design.factors, run.levels, strict=True))
    spec = run_spec(folder, run, url)
    try:
        storage = spec.open(create=False)
        stored = pick_protocol(storage, spec.describe(), run.protocol_name)
    except UsageError:
        return RunProgress(run.name, levels, 0, 0, 0, 0), []
    trials = cell_trials(storage, stored.name, stored.cells)
    rows = summarize(stored.cells, trials)
    every = [t for ts in trials.values() for t in ts]
    return (
        RunProgress(
            run.name,
            levels,
            sum(r.done for r in rows),
            sum(r.total for r in rows),
            sum(r.diverged for r in rows),
            sum(r.running for r in rows),
        ),
        every,
    )


def design_status(folder: Path, url: str | None = None, now: datetime | None = None) -> str:
    """The table `kfaclab status` prints for a design's folder."""
    from kfaclab.study.design_sweep import load_manifest_design

    design = load_manifest_design(folder)
    lines, trials, planned = [], [], None
    progress = []
    for run in design.runs:
        row, ts = run_progress(folder, design, run, url)
        progress.append(row)
        trials += ts
        if row.total and planned is None:
            planned = row.total  # every run plans the same cells and trials
    width = max(len("run"), *(len(r.name) for r in progress))
    header = ", ".join(f.name for f in design.factors)
    lines.append(
        f"{'run':<{width}}  {'done/total':>10}  {'diverged':>8}  {'running':>7}  "
        f"{'state':<11}  {header}"
    )
    for r in progress:
        total = r.total or planned or 0
        lines.append(
            f"{r.name:<{width}}  {f'{r.done}/{total}':>10}  {r.diverged:>8}  {r.running:>7}  "
            f"{r.state:<11}  {clean(r.levels)}"
        )
    done = sum(r.done for r in progress)
    total = sum(r.total or planned or 0 for r in progress)
    rate = recent_rate(trials, now or datetime.now())
    remaining = max(total - done, 0)
    eta = 0.0 if remaining == 0 else (remaining / rate if rate else None)
    runs_done = sum(r.state == "done" for r in progress)
    lines.append(
        f"{'all':<{width}}  {f'{done}/{total}':>10}  {'':>8}  "
        f"{sum(r.running for r in progress):>7}  {runs_done} of {len(progress)} runs done, "
        f"ETA {format_duration(eta)}"
    )
    return "\n".join(lines)
