"""Atomic file writes: every file kfaclab writes appears whole, or the old one stays as it was.

A write goes to a fresh temporary name in the target's folder, opened with O_CREAT | O_EXCL |
O_NOFOLLOW (so a file or symbolic link planted under a predictable name is never written
through), is flushed and fsync'ed, and is then renamed over the target (``os.replace``, atomic
within one file system; a symbolic link at the target itself is replaced, not followed). A
SIGKILL at any moment leaves the previous file intact (at worst a ``.NAME.*.tmp`` file beside it);
a full disk or a file-size limit (``ulimit -f``) gives ``OutputError``, one line naming the file
and the reason, with the temporary file removed and the previous file intact.

New files get mode 0666 minus the umask (0644 under the usual umask 022), like ``open()``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from kfaclab.errors import UsageError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class OutputError(UsageError):
    """An output file could not be written (disk full, file too large, read-only, …); the
    previous version of the file, if any, is untouched. One line, like every UsageError."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # the operating system's words alone ("No space left on device")


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def _fail(path: Path, exc: OSError) -> OutputError:
    kept = "the previous file is kept" if os.path.lexists(path) else "nothing was written"
    return OutputError(f"cannot write {str(path)!r} ({_reason(exc)}); {kept}", _reason(exc))


def temp_name(path: Path) -> Path:
    """A fresh, unpredictable name beside ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _open_fresh(path: Path) -> tuple[int, Path]:
    for _ in range(16):  # a collision of 48 random bits is a planted file; try another name
        tmp = temp_name(path)
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no fresh temporary name", str(path))


def _sync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder is synced; not every file system
    # lets a folder be opened or synced, and the data is already safe, so failures are ignored.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _put(data: bytes, handle: IO[bytes]) -> None:
    handle.write(data)


def _stage(path: Path, fill: Callable[[IO[bytes]], None]) -> Path:
    """Write a complete temporary file beside ``path`` with ``fill``; returns its name."""
    fd, tmp = _open_fresh(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return write_many({Path(path): data})[0]


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_many(files: Mapping[Path, bytes]) -> list[Path]:
    """Write several files so that either all are replaced or none is: every temporary file is
    complete before the first rename (a report's .md and .html from one run, never mixed)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            try:
                staged.append((_stage(path, functools.partial(_put, data)), path))
            except OSError as exc:
                raise _fail(path, exc) from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _fail(path, exc) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
    for folder in {p.parent for p in files}:
        _sync_folder(folder)
    return list(files)


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with open_atomic(p, "w", newline="") as f: ...``: a file handle whose content replaces
    ``path`` only when the block ends without an exception. ``mode`` is "w" (text, UTF-8 unless
    ``encoding`` says otherwise) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    try:
        fd, tmp = _open_fresh(target)
    except OSError as exc:
        raise _fail(target, exc) from None
    try:
        try:
            if mode == "w":
                kwargs.setdefault("encoding", "utf-8")
            with os.fdopen(fd, mode, **kwargs) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise _fail(target, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # gone after a successful rename; removed after any failure
    _sync_folder(target.parent)
