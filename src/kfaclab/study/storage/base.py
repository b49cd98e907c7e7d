"""The one interface every caller uses to reach the studies: ``Storage``.

Three implementations (journal.py, rdb.py): a folder holding Optuna's journal file (the embedded
default), a SQLite file, a PostgreSQL server. Callers never ask which one they hold; what differs
between them (the lock that serialises a cell's trial creation, whether the storage has its own
heartbeat, which files are the study's own) is a method or an attribute here.

Nothing in this package imports study/liveness.py: liveness builds on these settings, never the
other way round.
"""

from __future__ import annotations

import fcntl
import hashlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from kfaclab.errors import UsageError

HEARTBEAT_SECONDS = 30  # how often a running trial says it is alive
GRACE_SECONDS = 120  # a running trial silent for this long is declared dead and retried
MAX_RETRIES = 3  # a trial that keeps killing its worker is retried this often, then replaced


class Storage(ABC):
    """Where one sweep's studies live. Instances are small frozen values: they travel to
    spawned worker processes by pickling, and each process opens its own connection."""

    #: True when the optuna storage records heartbeats itself (RDBStorage); otherwise kfaclab
    #: writes its own heartbeat attr on each running trial (see liveness.py).
    builtin_heartbeat: bool = False

    @property
    @abstractmethod
    def folder(self) -> Path | None:
        """The local folder of the study's files (journal folder, SQLite file's folder), where
        a report goes by default and per-cell lock files live; None for a server."""

    @property
    def out_folder(self) -> Path | None:
        """The sweep's own output folder (``--out``) when its studies live in it, where its
        report goes by default; None for a database URL (its report goes to ./report)."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """For messages and reports: the journal path, or the URL without any password."""

    @abstractmethod
    def identity(self) -> str:
        """A stable, password-free name of this storage (absolute paths, host/port/database),
        the same from any working folder. Not what the rerun cache keys on: that is the study
        (``study.reader.study_identity``), so a moved study folder keeps its cache."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the storage holds anything yet (a server is assumed to)."""

    @abstractmethod
    def open(self, *, create: bool) -> optuna.storages.BaseStorage:
        """The optuna storage. ``create=False`` (status, export, report) refuses a storage that
        does not exist rather than creating an empty one. Any failure is a one-line UsageError."""

    def database_url(self) -> str | None:
        """The SQLAlchemy URL of a database storage (its records live in a table there); None
        for a storage of files (its records live in files beside it)."""
        return None

    # Whether machines other than this one reach the storage (a database server): work such as
    # the paired reruns is then shared through it (open_shared_queue).
    shared_by_machines = False

    def open_shared_queue(
        self, heartbeat_s: int, grace_s: int
    ) -> optuna.storages.RDBStorage | None:
        """A storage for work that several machines share through this one (the paired-rerun
        queue, analysis/replication/rerun_queue.py): its own heartbeat settings and no
        stale-trial callback (the queue re-enqueues under its own lock). None where the storage
        is one machine's (a journal folder, a SQLite file): the work then stays local."""
        return None

    @abstractmethod
    def own_files(self) -> list[Path]:
        """Files that belong to the study (and must never be overwritten by an export)."""

    def cell_lock(self, study_name: str) -> AbstractContextManager[None]:
        """Serialise "count the cell's trials, then create one" across all workers of a cell.
        Local storages: a flock on a file in ``folder``/.locks."""
        folder = self.folder
        assert folder is not None, "a storage without a folder must override cell_lock"
        return _flock(folder / ".locks", study_name)

    def refuse_own_file(self, path: Path | str, what: str = "OUT") -> None:
        """Refuse to write ``path`` when it is one of this storage's own files."""
        target = Path(path).resolve()
        # Its folders too: a record in artifacts/ or a lock in .locks/ is as much the study's.
        folders = [] if self.folder is None else [self.folder / "artifacts", self.folder / ".locks"]
        for own in self.own_files():
            if target == own.resolve():
                raise UsageError(
                    f"{what} must not be a file of the study itself, got {path} "
                    f"(it is part of {self.describe()}); choose another file name"
                )
        for folder in folders:
            if target.is_relative_to(folder.resolve()):
                raise UsageError(
                    f"{what} must not be inside the study's {folder.name}/ folder, got {path} "
                    f"(part of {self.describe()}); choose another file name"
                )


def prepare_file(path: Path, *, create: bool, shown: str, kind: str, where: object) -> None:
    """The checks every file storage makes before opening its file: a folder in its place is
    refused; a missing file is refused unless ``create``, when its folder is made (the file
    itself is the storage library's to create). ``shown`` names the storage in messages,
    ``kind`` is what the file should be, ``where`` is where the studies were looked for."""
    if path.is_dir():
        raise UsageError(f"storage {shown} is a folder, not a {kind}")
    if not path.exists():
        if not create:
            raise UsageError(f"no studies in {where}: {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def _flock(locks: Path, study_name: str) -> Iterator[None]:
    locks.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(study_name.encode()).hexdigest()[:16]
    with open(locks / f"{digest}.lock", "a+b") as handle:
        # flock is released by the kernel if the process dies: a killed worker never wedges it.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def retry_callback() -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that re-queues a failed trial with its parameters, at most MAX_RETRIES
    times. Optuna 4.9 renamed the class; the old name is a deprecated alias."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is None:
        cls = optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback: Callable[[optuna.Study, FrozenTrial], None] = cls(max_retry=MAX_RETRIES)
    return callback
