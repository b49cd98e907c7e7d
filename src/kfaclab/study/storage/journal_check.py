"""Keeping the journal file readable after a torn write (a crash or a full disk mid-append).

Optuna appends one JSON record per line. A write cut short leaves an incomplete last line;
Optuna skips it when reading, but the next append lands right after it, making one unreadable
line in the middle, and from then on every reader fails. So before kfaclab reads or appends:

- a torn tail (bytes after the last newline that begin a record) is moved aside to a named file
  next to the journal, announced in one line; a tail that is a whole record missing only its
  newline gets the newline (the write had finished but for that byte);
- a last line that is a torn fragment followed by a whole record (the state an unrepaired torn
  write leaves after one more append) keeps the record and moves the fragment aside;
- anything else that is not a journal record (binary junk, a damaged line further up) is refused
  in one line naming the file and the repair command (``python -m kfaclab.study.storage.repair``).

Every change is made under the journal's own lock, after checking again, so a record that another
worker is writing at this moment is never mistaken for a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file

from kfaclab.errors import UsageError

RECORD_START = b'{"op_code":'  # how Optuna writes every record (json.dumps, compact separators)
REPAIR = "python -m kfaclab.study.storage.repair"
_BLOCK = 1 << 16


def parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for binary junk
        return None
    return obj if isinstance(obj, dict) and "op_code" in obj else None


def _begins_a_record(tail: bytes) -> bool:
    """Whether ``tail`` is what a cut-short record looks like: its first bytes, however few."""
    return tail.startswith(RECORD_START) or RECORD_START.startswith(tail)


def salvage(line: bytes) -> tuple[bytes, bytes] | None:
    """``fragment + record`` → (fragment, record), for a line where a torn record was followed
    by a whole one; None if no whole record ends the line."""
    start = line.rfind(RECORD_START)
    while start > 0:
        if parse_record(line[start:]) is not None:
            return line[:start], line[start:]
        start = line.rfind(RECORD_START, 0, start)
    return None


def aside_path(journal: Path, kind: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = journal.with_name(f"{journal.name}.{kind}-{stamp}")
    n = 1
    while path.exists():
        n += 1
        path = journal.with_name(f"{journal.name}.{kind}-{stamp}-{n}")
    return path


def announce(message: str) -> None:
    sys.stderr.write(f"kfaclab: {message}\n")
    sys.stderr.flush()


def _last_lines(journal: Path) -> tuple[int, bytes, int, bytes]:
    """(start of the last complete line, that line with its newline, start of the tail, tail):
    read backwards block by block, so a long journal costs two lines of reading."""
    size = journal.stat().st_size
    with open(journal, "rb") as handle:
        data, pos = b"", size
        while pos > 0 and data.count(b"\n") < 2:
            step = min(_BLOCK, pos)
            pos -= step
            handle.seek(pos)
            data = handle.read(step) + data
    end = data.rfind(b"\n")
    if end < 0:
        return 0, b"", pos, data
    before = data.rfind(b"\n", 0, end)
    return pos + before + 1, data[before + 1 : end + 1], pos + end + 1, data[end + 1 :]


def _problem(journal: Path) -> str | None:
    """What needs healing: "tail", "line", "junk" (not a journal at all), "damaged", or None
    when the end is sound."""
    if journal.stat().st_size == 0:
        return None
    first = _first_line(journal)
    if first.endswith(b"\n"):
        if parse_record(first) is None and salvage(first.rstrip(b"\n")) is None:
            return "junk"
    elif not (parse_record(first) is not None or _begins_a_record(first)):
        return "junk"
    _, line, _, tail = _last_lines(journal)
    if tail:
        return "tail" if parse_record(tail) is not None or _begins_a_record(tail) else "damaged"
    if line and parse_record(line) is None:
        return "line" if salvage(line.rstrip(b"\n")) is not None else "damaged"
    return None


def _first_line(journal: Path) -> bytes:
    """The first line with its newline (without one: the whole file, a torn first record)."""
    with open(journal, "rb") as handle:
        return handle.readline()


def check_journal(journal: Path, lock: BaseJournalFileLock) -> None:
    """Heal a torn end of ``journal`` or refuse it in one line (see the module docstring)."""
    if _problem(journal) is None:
        return  # the common case: no lock taken, nothing written
    try:
        with get_lock_file(lock):
            heal_locked(journal)
    except OSError as exc:
        # A read-only journal or folder (an archive, a colleague's folder): nothing can be
        # healed, but a torn last record is skipped by Optuna's own reader, so the journal can
        # still be read (issue 29, F13). Other damage needs a writable copy.
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        reason = exc.strerror or str(exc)
        if _problem(journal) == "tail":
            announce(
                f"{journal} ends in a torn write and cannot be healed ({reason}); read without it"
            )
            return
        raise UsageError(
            f"{journal} needs healing but cannot be written ({reason}); copy the folder "
            "somewhere writable and run the command there"
        ) from None


def heal_locked(journal: Path) -> None:
    """The healing itself, for a caller holding the journal's lock (checks again: a writer may
    just have finished)."""
    problem = _problem(journal)
    if problem == "tail":
        _heal_tail(journal)
    elif problem == "line":
        _heal_line(journal)
    elif problem == "junk":
        raise UsageError(
            f"{journal} is not an Optuna journal (its first line is not a journal record); "
            "move it away or use another --out"
        )
    elif problem == "damaged":
        refuse_damaged(journal)


def refuse_damaged(journal: Path, line_number: int | None = None, *, replay: bool = False) -> None:
    where = f"at line {line_number}" if line_number else "near its end"
    if replay and not line_number:
        where = "(every line is JSON, but Optuna cannot replay them)"
    raise UsageError(
        f"{journal} is damaged {where} (not a journal record); run `{REPAIR} {journal}` to keep "
        "every readable record and move the rest aside"
    )


def _heal_tail(journal: Path) -> None:
    _, _, tail_start, tail = _last_lines(journal)
    if parse_record(tail) is not None:
        write_all(journal, b"\n", os.O_WRONLY | os.O_APPEND)
        announce(f"{journal} ended in a record without its newline; completed it")
        return
    aside = _save_aside(journal, "torn", tail)
    os.truncate(journal, tail_start)
    announce(
        f"{journal} ended in a torn write ({len(tail)} bytes of an unfinished record, from a "
        f"crash or a full disk); every complete record is kept, the torn bytes are in {aside}"
    )


def _heal_line(journal: Path) -> None:
    line_start, line, _, _ = _last_lines(journal)
    parts = salvage(line.rstrip(b"\n"))
    assert parts is not None
    fragment, record = parts
    aside = _save_aside(journal, "torn", fragment)
    os.truncate(journal, line_start)
    write_all(journal, record + b"\n", os.O_WRONLY | os.O_APPEND)
    announce(
        f"{journal} held a torn write ({len(fragment)} bytes) glued to the next record; the "
        f"record is kept, the torn bytes are in {aside}"
    )


def _save_aside(journal: Path, kind: str, data: bytes) -> Path:
    aside = aside_path(journal, kind)
    try:
        write_all(aside, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except UsageError:
        aside.unlink(missing_ok=True)
        raise
    return aside


def write_all(path: Path, data: bytes, flags: int, *, undo: bool = False) -> None:
    """Write ``data`` unbuffered (a failed write leaves nothing queued to be flushed later at
    close); with ``undo``, a failure cuts the file back to its size before the write."""
    fd = os.open(path, flags, 0o644)
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        kept = ""
        if undo:
            with contextlib.suppress(OSError):  # else the next open moves the torn tail aside
                os.ftruncate(fd, size)
            kept = "; the unfinished record was taken back, every finished trial is kept"
        raise UsageError(
            f"cannot write to {path}: {exc.strerror or exc}{kept} "
            "(free some space, then rerun the same command)"
        ) from None
    finally:
        os.close(fd)
