"""The journal's lock file, with a holder whose death is seen at once.

Optuna's ``JournalFileOpenLock`` is a file created with O_EXCL and deleted on release. A process
killed while it holds the lock (turn 3's probe: 16% of a sweep's wall time) leaves the file, and
every later writer waits for Optuna's 30 s grace period before breaking it: a sweep restarted
every few seconds by a preemptible scheduler never advanced. Breaking it by age alone is also
unsafe for a live holder that takes longer than the grace.

``LiveLock`` keeps Optuna's protocol (the same file name, O_EXCL semantics, deleted on release,
so Optuna's own processes and kfaclab's still exclude each other), and adds liveness: the holder
keeps an ``flock`` on the lock file for as long as it holds it, and the kernel drops that flock
the moment the holder dies, however it dies. The file is made under a fresh name, locked, and
only then linked to the lock's name, so no waiter ever sees an unlocked lock file of a live
kfaclab holder. A waiter that can take the flock of the existing file knows its holder is gone
and removes it (holding that flock, so two waiters never both break it; and only if the name
still refers to the same file). A lock file without a flock that is younger than
``FOREIGN_GRACE`` seconds may be held by a plain Optuna process (which does not flock); Optuna
holds it for milliseconds, so after that grace it is stale too. A LiveLock's own file says so in
its first word, and is stale as soon as its flock is free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import sys
import time

from optuna.storages.journal import JournalFileOpenLock

from kfaclab.text import clean

FOREIGN_GRACE = 2.0  # seconds; see the module docstring
_MARK = "kfaclab-live-lock"  # first word of a LiveLock's file: flocked from before it was visible
_NEW = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class LiveLock(JournalFileOpenLock):
    """Optuna's open() lock whose stale lock files are detected by their holder's liveness."""

    def __init__(self, filepath: str, grace_period: int | None = 30) -> None:
        super().__init__(filepath, grace_period)
        self._held: int | None = None  # the file descriptor whose flock marks us as the holder

    def acquire(self) -> bool:
        sleep = 0.001
        warned = time.monotonic()
        while True:
            if self._create():
                return True
            if self._break_if_dead():
                continue
            if time.monotonic() - warned > 10.0:
                sys.stderr.write(f"kfaclab: waiting for the lock {self._lock_file} (held)\n")
                warned = time.monotonic()
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.05)

    def release(self) -> None:
        held, self._held = self._held, None
        try:
            os.unlink(self._lock_file)  # first: a waiter must never see our file unlocked
        except OSError as exc:
            raise RuntimeError(f"cannot release the lock {self._lock_file}: {exc}") from exc
        finally:
            if held is not None:
                os.close(held)

    def _create(self) -> bool:
        """Make the lock file, already flocked, under the lock's name; False if it exists."""
        fresh = f"{self._lock_file}.{secrets.token_hex(6)}.new"
        fd = os.open(fresh, _NEW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows this name: never blocks
            os.write(fd, f"{_MARK} {os.getpid()} {socket.gethostname()}\n".encode())
            try:
                os.link(fresh, self._lock_file)
            except FileExistsError:
                os.close(fd)
                return False
            except OSError as exc:  # a file system without hard links: O_EXCL on the name
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                os.close(fd)
                return self._create_in_place()
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(fresh)
        self._held = fd
        return True

    def _create_in_place(self) -> bool:
        try:
            fd = os.open(self._lock_file, _NEW, 0o644)
        except FileExistsError:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX)  # unlocked for an instant: FOREIGN_GRACE covers it
        self._held = fd
        return True

    def _break_if_dead(self) -> bool:
        """Remove the lock file if its holder is gone; True when the caller should try again
        at once (removed, or it vanished meanwhile)."""
        try:
            fd = os.open(self._lock_file, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its holder is alive
            seen = os.fstat(fd)
            ours = os.pread(fd, len(_MARK), 0) == _MARK.encode()  # flocked before it was visible
            if not ours and time.time() - seen.st_mtime < FOREIGN_GRACE:
                return False  # perhaps a plain Optuna holder, which does not flock
            try:
                now = os.stat(self._lock_file, follow_symlinks=False)
            except FileNotFoundError:
                return True
            if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
                return True  # replaced meanwhile by a new holder's file: look again
            os.unlink(self._lock_file)
            holder = _holder(fd)
            sys.stderr.write(
                f"kfaclab: removed the stale lock {self._lock_file} (its holder{holder} is gone)\n"
            )
            return True
        finally:
            os.close(fd)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 200, 0).decode("utf-8").split()
        if len(text) == 3 and text[0] == _MARK and text[1].isdigit():
            return f", process {text[1]} on {clean(text[2][:64])},"
    return ""
