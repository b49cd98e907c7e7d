"""Reading replications: a run folder's stored study (top-k summaries) and its paired reruns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.replication.pool import CACHE_NAME, load_cache, trial_key
from kfaclab.analysis.replication.units import Replication, replication_of
from kfaclab.analysis.statistics.binding import bindings
from kfaclab.analysis.statistics.search import cell_ranges
from kfaclab.analysis.summary.cells import summarize_cell
from kfaclab.analysis.summary.summaries import trials_by_cell
from kfaclab.errors import UsageError

if TYPE_CHECKING:
    from kfaclab.study.reader import StudySet


def load_replication(
    folder: Path, *, name: str | None = None, log: Callable[[str], None] = lambda s: None
) -> Replication:
    """The replication stored in ``folder`` (its journal and ``paired-reruns.jsonl``). Reruns of
    another study (another identity) in the same file are ignored; damaged lines are counted."""
    from kfaclab.study.reader import load_study_set

    if not folder.is_dir():
        raise UsageError(f"RUN must be a run folder, got {str(folder)!r}")
    study = load_study_set(str(folder), with_records=False)
    by_cell = trials_by_cell(study)
    cells = [summarize_cell(c, by_cell.get(c.name, [])) for c in study.cells]
    found = bindings(cells, by_cell, lambda c: cell_ranges(study.protocol, c))
    outcomes = study_reruns(folder, study, log)
    proto = study.protocol.get("protocol", {})
    label = name or (str(proto.get("name")) if isinstance(proto, dict) else folder.name)
    return replication_of(
        label,
        cells,
        outcomes,
        {k: [b.sentence() for b in v] for k, v in found.items()},
        study.protocol,
    )


def study_reruns(
    folder: Path, study: StudySet, log: Callable[[str], None] = lambda s: None
) -> list[RerunOutcome]:
    """The paired reruns in ``folder``'s ``paired-reruns.jsonl`` of ``study``'s completed trials
    (reruns of another study sharing the file are left out; damaged lines counted in ``log``);
    [] when the folder has no such file."""
    stored, damaged = load_cache(folder / CACHE_NAME)
    if damaged:
        log(f"{folder / CACHE_NAME}: {damaged} damaged line(s) skipped")
    keys = {
        trial_key(study.identity, t.cell, t.number) for t in study.trials if t.state == "COMPLETE"
    }
    return [o for (k, _), o in sorted(stored.items()) if k in keys]
