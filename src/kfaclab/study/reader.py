"""Reading a study back: ``load_study_set(target) -> StudySet`` (the report's entry point).

Everything comes from the storage itself (docs/interfaces.md, kfaclab.study): the protocol dict,
the cells, every trial with its parameters and its full ``TrialResult`` record.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from kfaclab.study import records
from kfaclab.study.artifacts import RecordStore, open_artifact_store
from kfaclab.study.cells import CellInfo
from kfaclab.study.progress import cell_trials
from kfaclab.study.registry import pick_protocol
from kfaclab.study.storage import Storage, resolve
from kfaclab.text import clean
from kfaclab.trial_types import TrialResult

__all__ = ["CellInfo", "StoredTrial", "StudySet", "load_study_set"]


@dataclass
class StoredTrial:
    cell: str
    number: int
    state: str  # "COMPLETE" | "RUNNING" | "FAIL" | "WAITING"
    status: str | None  # "ok" | "diverged" | None (not finished)
    value: float | None  # final full-training-set loss; inf for diverged
    params: dict[str, Any]  # lr, lr_decay, momentum, damping.<constant> ...
    seconds: float | None
    record: TrialResult | None = field(default=None, repr=False)
    damaged: str | None = None  # why its record could not be read (records.DamagedRecordError)
    # Optuna's own start/end (naive local times): the report's cost section
    # (analysis/summary/cost.py)
    started: datetime | None = None
    completed: datetime | None = None


@dataclass
class StudySet:
    protocol: dict[str, Any]  # exactly as loaded from the TOML
    cells: list[CellInfo]
    trials: list[StoredTrial]
    # Which study this is (study_identity: the protocol's name and its first trial's start, not
    # the storage's path). Caches beside a report (reruns.json) key on it, so two studies
    # reported into one folder never mix, and a moved or cloned study folder keeps its cache.
    identity: str = ""
    # One line per finished trial whose record is damaged ("cell: trial 3's record … is
    # damaged: …"); those trials are kept without a record, as if their artifact were missing.
    damaged: list[str] = field(default_factory=list)

    def cell_trials(self, cell: str, state: str | None = "COMPLETE") -> list[StoredTrial]:
        return [t for t in self.trials if t.cell == cell and (state is None or t.state == state)]


def load_study_set(
    target: str, *, protocol: str | None = None, with_records: bool = True
) -> StudySet:
    """``target``: an output folder (its journal) or a storage URL. ``protocol`` picks one when
    the storage holds several. ``with_records=False`` skips decoding the trial records."""
    return read_study_set(resolve(target), protocol=protocol, with_records=with_records)


def read_study_set(
    spec: Storage, *, protocol: str | None = None, with_records: bool = True
) -> StudySet:
    storage = spec.open(create=False)
    stored = pick_protocol(storage, spec.describe(), protocol)
    by_cell = cell_trials(storage, stored.name, stored.cells)
    store = open_artifact_store(spec, storage, create=False) if with_records else None
    trials = [
        stored_trial(cell.name, t, store)
        for cell in stored.cells
        for t in sorted(by_cell[cell.name], key=lambda t: t.number)
    ]
    started = [t.datetime_start for ts in by_cell.values() for t in ts if t.datetime_start]
    damaged = [f"{t.cell}: {t.damaged}" for t in trials if t.damaged]
    for line in damaged:  # named where every command's user sees it, and skipped
        sys.stderr.write(f"kfaclab: skipped a damaged record: {clean(line)}\n")
    return StudySet(
        protocol=stored.raw,
        cells=stored.cells,
        trials=trials,
        identity=study_identity(stored.name, min(started) if started else None),
        damaged=damaged,
    )


def study_identity(protocol: str, first_start: datetime | None) -> str:
    """Which study this is, wherever its storage lies: the protocol's name and the moment its
    first trial started. A study folder that is moved or cloned (docs/results in another checkout)
    keeps its identity, so the rerun cache beside its report stays valid; two runs of one protocol
    (two storages) started at different moments, so they stay apart."""
    return f"{protocol}@{first_start.isoformat() if first_start else 'no trials'}"


def stored_trial(cell: str, trial: FrozenTrial, store: RecordStore | None = None) -> StoredTrial:
    """``store``: where the records are (None: don't read them; a study written before
    artifacts still has its records in a user attr, which records.read_record reads too)."""
    attrs = trial.user_attrs
    finished = trial.state == TrialState.COMPLETE
    value = trial.value if finished else None
    # Attributes are checked, not trusted: a shared database's other users can write them.
    status = attrs.get(records.STATUS) if finished else None
    status = status if status in ("ok", "diverged") else None
    if finished and status == "diverged":
        value = math.inf  # stored as a finite penalty (diverged.py), or as inf by older studies
    seconds = attrs.get(records.SECONDS)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        seconds = None
    if seconds is None and trial.datetime_start is not None and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    record, damaged = None, None
    if finished and store is not None:
        try:
            record = records.read_record(trial, store)
        except records.DamagedRecordError as exc:
            damaged = str(exc)
    return StoredTrial(
        cell=cell,
        number=trial.number,
        state=trial.state.name,
        status=status,
        value=value,
        params=dict(trial.params),
        seconds=seconds,
        record=record,
        damaged=damaged,
        started=trial.datetime_start,
        completed=trial.datetime_complete,
    )
