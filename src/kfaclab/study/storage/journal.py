"""The embedded default: Optuna's ``JournalStorage`` on ``OUT/studies.journal``.

Appends are serialised by a file lock and every process replays the same log, so several local
worker processes share it safely (SQLite with many writers is the classic way to get "database is
locked"). A torn write is healed or refused before reading and before every append
(journal_check.py), and a write that fails (a full disk, a file size limit) takes its partial
bytes back before it reports the error, so the journal always ends in a whole record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.storages.journal._file import get_lock_file

from kfaclab.errors import UsageError
from kfaclab.study.storage.base import Storage, prepare_file
from kfaclab.study.storage.journal_check import (
    REPAIR,
    check_journal,
    heal_locked,
    parse_record,
    refuse_damaged,
    write_all,
)
from kfaclab.study.storage.lockfile import LiveLock

JOURNAL_NAME = "studies.journal"
LOCK_SUFFIX = ".lock"  # JournalFileOpenLock's lock file: the journal's name plus this


@dataclass(frozen=True)
class JournalFolder(Storage):
    """An output folder holding ``studies.journal``."""

    directory: Path

    @property
    def folder(self) -> Path:
        return self.directory

    @property
    def out_folder(self) -> Path:
        return self.directory

    @property
    def journal(self) -> Path:
        return self.directory / JOURNAL_NAME

    def describe(self) -> str:
        return str(self.journal)

    def identity(self) -> str:
        return f"journal:{self.journal.resolve()}"

    def exists(self) -> bool:
        return self.journal.is_file()

    def own_files(self) -> list[Path]:
        return [self.journal, Path(f"{self.journal}{LOCK_SUFFIX}")]

    def open(self, *, create: bool) -> optuna.storages.BaseStorage:
        journal = self.journal
        if create and journal.is_symlink():
            # A link planted in a shared output folder would make the sweep write (and create)
            # its journal wherever the link points, outside the folder (issue 29, F22).
            raise UsageError(
                f"storage {journal} must be a regular file in its folder, got a symbolic link "
                f"to {str(os.readlink(journal))!r}; remove the link or use another --out"
            )
        prepare_file(
            journal, create=create, shown=str(journal), kind="journal file", where=self.directory
        )
        if journal.exists() and not journal.is_file():
            raise UsageError(f"storage {journal} is not a regular file")
        # The open() lock (O_EXCL lock file) is the one Optuna documents for local file systems;
        # LiveLock also sees at once when its holder died (lockfile.py).
        lock = LiveLock(str(journal))
        if journal.exists():
            check_journal(journal, lock)
        backend = _Backend(str(journal), lock_obj=lock)
        try:
            return optuna.storages.JournalStorage(backend)
        except (ValueError, KeyError, TypeError):
            # A damaged line further up than check_journal looks (it reads only the end).
            refuse_damaged(journal, first_bad_line(journal), replay=True)
            raise  # unreachable: refuse_damaged raises


def first_bad_line(journal: Path) -> int | None:
    with open(journal, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if parse_record(line) is None:
                return number
    return None


class _Backend(JournalFileBackend):
    """Optuna's file backend, with appends that never leave a partial record behind."""

    def __init__(self, file_path: str, lock_obj: JournalFileOpenLock) -> None:
        super().__init__(file_path, lock_obj=lock_obj)
        self._kfaclab_lock = lock_obj

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        path = Path(self._file_path)
        with get_lock_file(self._kfaclab_lock):
            size = path.stat().st_size
            if size and _last_byte(path, size) != b"\n":
                # Torn by a process that died after this one opened the journal.
                heal_locked(path)
            write_all(path, data.encode("utf-8"), os.O_WRONLY | os.O_APPEND, undo=True)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1)


__all__ = ["JOURNAL_NAME", "REPAIR", "JournalFolder"]
