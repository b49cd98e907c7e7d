"""``python -m kfaclab.study.storage.repair JOURNAL``: make a damaged journal readable again.

For the damage kfaclab refuses to heal by itself on open (a bad line further up than the end:
a journal torn by an older kfaclab and then appended to, or bytes written into it by something
else). Every line that is a journal record is kept in order; a torn fragment glued to a record
loses only the fragment; every other byte goes to ``JOURNAL.damaged-<time>``, and the whole
original is kept as ``JOURNAL.before-repair-<time>``. Nothing is deleted.

Optuna numbers trials by the order of their creation records, and no worker could have read past
an unreadable line, so dropping such lines leaves the records every worker actually saw.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from optuna.storages.journal._file import get_lock_file

from kfaclab.errors import UsageError
from kfaclab.study.storage.journal_check import (
    RECORD_START,
    aside_path,
    parse_record,
    salvage,
    write_all,
)
from kfaclab.study.storage.lockfile import LiveLock


def split_journal(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """(records to keep, bytes to move aside), each record with its newline."""
    keep: list[bytes] = []
    aside: list[bytes] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a torn/complete last record
    for line in lines:
        if parse_record(line) is not None:
            keep.append(line + b"\n")
            continue
        parts = salvage(line)
        if parts is not None:
            keep.append(parts[1] + b"\n")
            aside.append(parts[0] + b"\n")
        else:
            aside.append(line + b"\n")
    if tail:
        if parse_record(tail) is not None:
            keep.append(tail + b"\n")
        else:
            aside.append(tail)
    return keep, aside


def repair(journal: Path) -> str:
    """Repair ``journal`` in place (under its lock); returns the one-line summary."""
    if not journal.is_file():
        raise UsageError(f"JOURNAL must be a journal file, got {journal}")
    with get_lock_file(LiveLock(str(journal))):
        data = journal.read_bytes()
        keep, aside = split_journal(data)
        if not aside:
            return f"{journal}: nothing to repair ({len(keep)} records)"
        if not keep and not data.startswith(RECORD_START):
            raise UsageError(f"{journal} is not an Optuna journal (no record in it); left as is")
        backup = aside_path(journal, "before-repair")
        shutil.copy2(journal, backup)
        moved = aside_path(journal, "damaged")
        write_all(moved, b"".join(aside), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fresh = journal.with_name(journal.name + ".repairing")
        fresh.unlink(missing_ok=True)
        write_all(fresh, b"".join(keep), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fresh.replace(journal)  # atomic: readers see the old or the new journal, never half
    return (
        f"{journal}: kept {len(keep)} records, moved {sum(map(len, aside))} damaged bytes to "
        f"{moved}; the original is {backup}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m kfaclab.study.storage.repair JOURNAL\n")
        return 2
    try:
        sys.stdout.write(repair(Path(args[0])) + "\n")
    except UsageError as exc:
        sys.stderr.write(f"kfaclab: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
