"""Where the studies live, behind one interface (``Storage``, base.py):

- ``JournalFolder`` (journal.py), the default: Optuna's JournalStorage on ``OUT/studies.journal``,
  safe for several local worker processes, healed after a torn write (journal_check.py);
- ``SQLiteFile`` and ``PostgresServer`` (rdb.py): Optuna's RDBStorage with heartbeats and
  ``RetryFailedTrialCallback``, so the trial of a worker that died is failed and re-queued.

Creating a trial is done under a per-cell lock (``Storage.cell_lock``): a file lock for local
storages, a PostgreSQL advisory lock for a server. Within it a worker counts the cell's trials
and creates one only if the cell is not full; that is what makes "exactly n trials per cell"
hold whatever the number of workers (see sweep.py).

Callers get a ``Storage`` from ``resolve`` (a folder or a URL) and never branch on its kind.
Every URL shown anywhere goes through ``redact`` (urls.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import overload

import optuna

from kfaclab.errors import UsageError
from kfaclab.study.storage.base import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    MAX_RETRIES,
    Storage,
    retry_callback,
)
from kfaclab.study.storage.journal import JOURNAL_NAME, JournalFolder
from kfaclab.study.storage.rdb import PostgresServer, SQLiteFile
from kfaclab.study.storage.urls import check_url, driver_url, redact, scheme_of

__all__ = [
    "GRACE_SECONDS",
    "HEARTBEAT_SECONDS",
    "JOURNAL_NAME",
    "MAX_RETRIES",
    "JournalFolder",
    "PostgresServer",
    "SQLiteFile",
    "Storage",
    "StorageSpec",
    "cell_lock",
    "driver_url",
    "from_url",
    "open_storage",
    "redact",
    "resolve",
    "retry_callback",
    "safe_url",
]


def resolve(target: str | None, url: str | None = None) -> Storage:
    """``--storage URL`` wins; otherwise ``target`` is a URL or an output folder."""
    if url:
        return from_url(url)
    if target is None:
        raise UsageError("give an output folder or --storage URL")
    if "://" in target:
        return from_url(target)
    return JournalFolder(Path(target))


def from_url(url: str) -> SQLiteFile | PostgresServer:
    """The storage of a database URL; a bad URL is a one-line UsageError, password redacted."""
    check_url(url)
    return SQLiteFile(url) if scheme_of(url) == "sqlite" else PostgresServer(url)


@overload
def StorageSpec(url: str, folder: None = None) -> SQLiteFile | PostgresServer: ...
@overload
def StorageSpec(url: None = None, *, folder: Path | str) -> JournalFolder: ...
def StorageSpec(url: str | None = None, folder: Path | str | None = None) -> Storage:  # noqa: N802
    """The storage of a URL or of a journal folder (the constructor's old name and keywords,
    kept so callers and tests written against them still work)."""
    if url is not None and folder is None:
        return from_url(url)
    if url is None and folder is not None:
        return JournalFolder(Path(folder))
    raise TypeError("StorageSpec takes exactly one of url= and folder=")


def open_storage(spec: Storage, *, create: bool) -> optuna.storages.BaseStorage:
    """``spec.open(create=…)``, as a function."""
    return spec.open(create=create)


def cell_lock(spec: Storage, study_name: str) -> AbstractContextManager[None]:
    """``spec.cell_lock(study_name)``, as a function."""
    return spec.cell_lock(study_name)


safe_url = redact  # the former name of the redaction function
