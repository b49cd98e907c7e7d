"""The per-cell progress table (done/total, diverged, running, best loss, ETA), computed from the
storage alone, so the sweep's live display and ``kfaclab status`` on any machine agree.

ETA comes from the observed completion rate over the last ten minutes (all workers, on all
machines, whatever their number; measured up to the last completion, so a stall does not count as
slow trials): total ETA = remaining trials / rate; a cell's ETA assumes the
open cells share the throughput evenly, which is how workers pick cells (sweep.Worker._choose).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from kfaclab.study import records
from kfaclab.study.cells import CellInfo
from kfaclab.study.registry import optuna_quiet, study_name
from kfaclab.text import clean

WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class CellProgress:
    cell: str
    done: int
    total: int
    diverged: int
    running: int
    best: float | None  # lowest final training loss of a non-diverged trial
    eta_seconds: float | None
    stale: int = 0  # RUNNING in the storage, but its worker is dead (not counted in running)


def load_cell_study(
    storage: optuna.storages.BaseStorage, protocol: str, cell: CellInfo
) -> optuna.Study | None:
    """The cell's study, or None when it is missing: a sweep killed while it created its
    studies (the index, with every cell, is written first), or a study deleted in the dashboard.
    A missing cell is named once on stderr; the next ``kfaclab sweep`` creates it again
    (registry.ensure_studies), and until then it simply has no trials."""
    name = study_name(protocol, cell.name)
    with optuna_quiet():
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            if (id(storage), name) not in _NAMED_MISSING:
                _NAMED_MISSING.add((id(storage), name))
                sys.stderr.write(
                    f"kfaclab: the study of cell {clean(name)!r} is missing (a sweep stopped "
                    "while creating it, or it was deleted); shown without trials, and the next "
                    "`kfaclab sweep` creates it again\n"
                )
            return None


_NAMED_MISSING: set[tuple[int, str]] = set()  # each missing cell named once per storage opened


def cell_trials(
    storage: optuna.storages.BaseStorage, protocol: str, cells: list[CellInfo]
) -> dict[str, list[FrozenTrial]]:
    found = {c.name: load_cell_study(storage, protocol, c) for c in cells}
    return {
        name: [] if study is None else study.get_trials(deepcopy=False)
        for name, study in found.items()
    }


def dead_trials(
    storage: optuna.storages.BaseStorage, protocol: str, cells: list[CellInfo], *, journal: bool
) -> dict[str, set[int]]:
    """Per cell, the RUNNING trials whose worker is dead (liveness.dead_running_trials)."""
    from kfaclab.study.liveness import dead_running_trials

    dead: dict[str, set[int]] = {}
    for c in cells:
        study = load_cell_study(storage, protocol, c)
        dead[c.name] = (
            set() if study is None else dead_running_trials(study, storage, journal=journal)
        )
    return dead


def summarize(
    cells: list[CellInfo],
    trials: dict[str, list[FrozenTrial]],
    now: datetime | None = None,
    dead: dict[str, set[int]] | None = None,
) -> list[CellProgress]:
    now = now or datetime.now()  # Optuna's trial times are naive local times
    rate = recent_rate([t for ts in trials.values() for t in ts], now)
    rows = []
    open_cells = sum(
        1 for c in cells if _done(trials[c.name]) < c.n_trials
    )  # cells still taking trials
    for cell in cells:
        ts = trials[cell.name]
        complete = [t for t in ts if t.state == TrialState.COMPLETE]
        # A diverged trial's value is a finite penalty (diverged.py): its status, not its value,
        # keeps it out of the best loss.
        div = [t.user_attrs.get(records.STATUS) == "diverged" for t in complete]
        ok = [
            t.value
            for t, d in zip(complete, div, strict=True)
            if not d and t.value is not None and math.isfinite(t.value)
        ]
        diverged = sum(div)
        remaining = max(cell.n_trials - len(complete), 0)
        stale = (dead or {}).get(cell.name, set())
        eta = None
        if remaining == 0:
            eta = 0.0
        elif rate:
            eta = remaining * max(open_cells, 1) / rate
        rows.append(
            CellProgress(
                cell=cell.name,
                done=len(complete),
                total=cell.n_trials,
                diverged=diverged,
                running=sum(t.state == TrialState.RUNNING and t.number not in stale for t in ts),
                best=min(ok) if ok else None,
                eta_seconds=eta,
                stale=len(stale),
            )
        )
    return rows


def _done(ts: list[FrozenTrial]) -> int:
    return sum(t.state == TrialState.COMPLETE for t in ts)


def recent_rate(trials: list[FrozenTrial], now: datetime) -> float | None:
    """Completed trials per second over the recent window; None with too little to go on."""
    recent = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.datetime_complete is not None
        and t.datetime_start is not None
        and (now - t.datetime_complete).total_seconds() <= WINDOW_SECONDS
    ]
    if len(recent) < 2:
        return None
    start = min(t.datetime_start for t in recent if t.datetime_start is not None)
    # up to the last completion, not to now: a stall since then (a restart, a lock wait) is not
    # throughput, and counting it made 1-second trials read "ETA 20m" right after a restart
    end = max(t.datetime_complete for t in recent if t.datetime_complete is not None)
    span = (end - start).total_seconds()
    return len(recent) / span if span > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def total_eta(rows: list[CellProgress]) -> float | None:
    """The whole sweep's ETA: the last cell's (None while any cell's is unknown)."""
    etas = [r.eta_seconds for r in rows]
    return None if any(e is None for e in etas) else max((e or 0.0 for e in etas), default=0.0)


def format_table(rows: list[CellProgress]) -> str:
    rows = [dataclasses.replace(r, cell=clean(r.cell)) for r in rows]  # names from files: shown
    width = max([len("cell"), *(len(r.cell) for r in rows)])
    # The "stale" column appears only when there is something in it: trials whose worker died
    # (status shows them; the next sweep fails and retries them).
    stale = any(r.stale for r in rows)
    extra = f"  {'stale':>5}" if stale else ""
    lines = [f"{'cell':<{width}}  {'done/total':>10}  {'diverged':>8}  {'running':>7}{extra}  "
             f"{'best loss':>10}  {'ETA':>7}"]  # fmt: skip
    for r in rows:
        best = "-" if r.best is None else f"{r.best:.4g}"
        extra = f"  {r.stale:>5}" if stale else ""
        lines.append(
            f"{r.cell:<{width}}  {f'{r.done}/{r.total}':>10}  {r.diverged:>8}  {r.running:>7}"
            f"{extra}  {best:>10}  {format_duration(r.eta_seconds):>7}"
        )
    done = sum(r.done for r in rows)
    total = sum(r.total for r in rows)
    eta = total_eta(rows)
    running = sum(r.running for r in rows)
    extra = f"  {sum(r.stale for r in rows):>5}" if stale else ""
    lines.append(f"{'all':<{width}}  {f'{done}/{total}':>10}  {'':>8}  {running:>7}{extra}  "
                 f"{'':>10}  {format_duration(eta):>7}")  # fmt: skip
    if stale:
        lines.append(
            "stale: trials whose worker is dead (killed, or silent past the heartbeat grace "
            "period); the next `kfaclab sweep` retries them"
        )
    return "\n".join(lines)


class LiveTable:
    """Redraws the table in place on a terminal; elsewhere (CI logs, pipes) prints a one-line
    summary at most every ``log_every`` seconds so logs stay readable."""

    def __init__(self, stream: TextIO | None, log_every: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = log_every
        self._lines = 0
        self._last_log = 0.0

    def show(self, rows: list[CellProgress], final: bool = False) -> None:
        write = self.stream.write
        if self.tty or final:
            text = format_table(rows)
            if self.tty and self._lines:
                write(f"\x1b[{self._lines}F\x1b[J")  # back to the table's first line, clear
            write(text + "\n")
            self._lines = text.count("\n") + 1 if self.tty else 0
        elif time.monotonic() - self._last_log >= self.log_every:
            self._last_log = time.monotonic()
            done = sum(r.done for r in rows)
            total = sum(r.total for r in rows)
            div = sum(r.diverged for r in rows)
            eta = format_duration(total_eta(rows))
            write(f"kfaclab sweep: {done}/{total} trials done, {div} diverged, ETA {eta}\n")
        self.stream.flush()
