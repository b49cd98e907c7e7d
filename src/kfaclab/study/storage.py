"""Where the studies live: a journal file in the output folder, or a database URL.

- Default: Optuna's ``JournalStorage`` on ``OUT/studies.journal``. Appends are serialised by a
  file lock and every process replays the same log, so several local worker processes share it
  safely (SQLite with many writers is the classic way to get "database is locked").
- ``postgresql://…`` (many machines) or ``sqlite:///…``: Optuna's ``RDBStorage`` with heartbeats
  and ``RetryFailedTrialCallback``, so the trial of a worker that died is failed and re-queued.

Creating a trial is done under a per-cell lock (``cell_lock``): a file lock for local storages,
a PostgreSQL advisory lock for a server. Within it a worker counts the cell's trials and creates
one only if the cell is not full; that is what makes "exactly n trials per cell" hold whatever the
number of workers (see sweep.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import warnings
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from kfaclab.errors import UsageError

JOURNAL_NAME = "studies.journal"
HEARTBEAT_SECONDS = 30  # how often a running trial says it is alive
GRACE_SECONDS = 120  # a running trial silent for this long is declared dead and retried
MAX_RETRIES = 3  # a trial that keeps killing its worker is retried this often, then replaced

_SCHEMES = ("postgresql", "sqlite")


@dataclass(frozen=True)
class StorageSpec:
    """``url`` for a database, else ``folder`` holding the journal file."""

    url: str | None = None
    folder: Path | None = None

    @property
    def journal(self) -> Path:
        assert self.folder is not None
        return self.folder / JOURNAL_NAME

    def describe(self) -> str:
        """For messages: the URL without its password, or the journal path."""
        return safe_url(self.url) if self.url is not None else str(self.journal)


def resolve(target: str | None, url: str | None = None) -> StorageSpec:
    """``--storage URL`` wins; otherwise ``target`` is a URL or an output folder."""
    if url:
        return StorageSpec(url=_check_url(url))
    if target is None:
        raise UsageError("give an output folder or --storage URL")
    if "://" in target:
        return StorageSpec(url=_check_url(target))
    return StorageSpec(folder=Path(target))


def _check_url(url: str) -> str:
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _SCHEMES:
        raise UsageError(f"storage URL must start with postgresql:// or sqlite:///, got {url!r}")
    return url


def safe_url(url: str) -> str:
    """The URL with its password removed: postgresql://user@host:port/db."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        # URL.set(password=None) means "unchanged"; the NamedTuple _replace really drops it.
        return parsed._replace(password=None).render_as_string(hide_password=False)
    except Exception:  # a malformed URL: never echo what might be a password
        return url.split("://", 1)[0] + "://…"


def open_storage(spec: StorageSpec, *, create: bool) -> optuna.storages.BaseStorage:
    """Open the storage. ``create=False`` (status, export, report) refuses a folder with no
    journal rather than creating an empty one; any unreachable database is a one-line error."""
    if spec.url is None:
        journal = spec.journal
        if not journal.exists():
            if not create:
                raise UsageError(f"no studies in {spec.folder}: {journal} does not exist")
            journal.parent.mkdir(parents=True, exist_ok=True)
        # The open() lock (O_EXCL lock file) is the one Optuna documents for local file systems.
        lock = JournalFileOpenLock(str(journal))
        backend = JournalFileBackend(str(journal), lock_obj=lock)
        return optuna.storages.JournalStorage(backend)
    return _open_rdb(spec.url)


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; use psycopg2 when that is the
    driver installed (it is kfaclab's `postgres` extra)."""
    if not url.startswith("postgresql://"):
        return url
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _open_rdb(url: str) -> optuna.storages.BaseStorage:
    import inspect

    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # An unreachable host must fail in seconds, not after the OS's TCP timeout.
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    elif url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for the writer lock, don't fail
    with warnings.catch_warnings():
        # RetryFailedTrialCallback and heartbeats are marked experimental/deprecated-alias.
        warnings.simplefilter("ignore")
        from kfaclab.study.liveness import retry_callback

        # Optuna 4.9 renamed failed_trial_callback (now a deprecated alias).
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback"
        if name not in params:
            name = "failed_trial_callback"
        callback: dict[str, Any] = {name: retry_callback()}
        try:
            # On a new database Optuna creates its tables; two machines starting the same
            # command at once would race (PostgreSQL: "duplicate key value violates unique
            # constraint pg_type_typname_nsp_index"), so creation is serialised.
            with _schema_lock(url):
                return optuna.storages.RDBStorage(
                    driver_url(url),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    **callback,
                )
        except sqlalchemy.exc.OperationalError as exc:
            raise UsageError(f"cannot reach storage {safe_url(url)}: {_reason(exc)}") from None
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise UsageError(f"storage URL {safe_url(url)} is not usable: {exc}") from None
        except ImportError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
            raise UsageError(f"storage {safe_url(url)} needs a database driver: {cause}") from None


def _reason(exc: Exception) -> str:
    """'connection refused', 'password authentication failed …': the driver's first line."""
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    lowered = text.lower()
    for known in ("connection refused", "timeout expired", "could not translate host name"):
        if known in lowered:
            return known
    if "failed: " in text:
        text = text.split("failed: ", 1)[1]
    return text.strip().rstrip(".").lower() if text else type(exc).__name__


@contextmanager
def cell_lock(spec: StorageSpec, study_name: str) -> Iterator[None]:
    """Serialise "count the cell's trials, then create one" across all workers of a cell."""
    if spec.url is not None and spec.url.startswith("postgresql"):
        with _advisory_lock(spec.url, study_name):
            yield
        return
    folder = _sqlite_folder(spec.url) if spec.url is not None else spec.journal.parent
    locks = folder / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(study_name.encode()).hexdigest()[:16]
    with open(locks / f"{digest}.lock", "a+b") as handle:
        # flock is released by the kernel if the process dies: a killed worker never wedges it.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_folder(url: str) -> Path:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path).resolve().parent if path and path != ":memory:" else Path.cwd()


_ENGINES: dict[str, Any] = {}
_SCHEMA_LOCK = "kfaclab:create-schema"


def _schema_lock(url: str) -> AbstractContextManager[None]:
    if url.startswith("postgresql"):
        return _advisory_lock(url, _SCHEMA_LOCK)
    return nullcontext()  # SQLite: one file, its own writer lock (and a 60 s busy timeout)


@contextmanager
def _advisory_lock(url: str, study_name: str) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock keyed by the study name. The server frees it when
    the connection drops, so a worker killed while holding it blocks nobody."""
    import sqlalchemy

    engine = _ENGINES.get(url)
    if engine is None:
        engine = sqlalchemy.create_engine(
            driver_url(url),
            pool_size=1,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 10},  # an unreachable host fails in seconds
        )
        _ENGINES[url] = engine
    # Advisory lock keys are signed 64-bit integers.
    key = zlib.crc32(study_name.encode()) - 2**31
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
