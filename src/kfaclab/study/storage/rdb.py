"""Database storages: a SQLite file, or a PostgreSQL server for many machines.

Both are Optuna's ``RDBStorage`` with heartbeats and a retry callback, so the trial of a worker
that died is failed and re-queued by whoever looks next (study/liveness.py).
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from kfaclab.errors import UsageError
from kfaclab.study.storage.base import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    Storage,
    prepare_file,
    retry_callback,
)
from kfaclab.study.storage.retry import RetryingRDBStorage, retrying
from kfaclab.study.storage.urls import check_url, driver_url, redact, sqlite_path

_SCHEMA_LOCK = "kfaclab:create-schema"
_ENGINES: dict[str, Any] = {}


@dataclass(frozen=True)
class _Database(Storage):
    """A database named by its URL (checked when the value is made). Optuna's ``RDBStorage``
    records heartbeats itself; messages show the URL without its password."""

    url: str
    builtin_heartbeat = True

    def __post_init__(self) -> None:
        check_url(self.url)

    def describe(self) -> str:
        return redact(self.url)

    def database_url(self) -> str:
        return self.url


@dataclass(frozen=True)
class SQLiteFile(_Database):
    """``sqlite:///PATH``: one file, its own writer lock (and a 60 s busy timeout)."""

    @property
    def path(self) -> Path:
        return sqlite_path(self.url)

    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    def identity(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    def exists(self) -> bool:
        return self.path.is_file()

    def own_files(self) -> list[Path]:
        path = self.path
        return [path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))]

    def open(self, *, create: bool) -> optuna.storages.BaseStorage:
        path, shown = self.path, self.describe()
        prepare_file(path, create=create, shown=shown, kind="SQLite database file", where=shown)
        if path.is_file() and path.stat().st_size and not _is_sqlite(path):
            raise UsageError(f"storage {self.describe()} is not a SQLite database: {path}")
        return _open_rdb(self.url, {"timeout": 60}, nullcontext)  # wait for the writer lock


@dataclass(frozen=True)
class PostgresServer(_Database):
    """``postgresql://…``: many machines on one database."""

    shared_by_machines = True

    @property
    def folder(self) -> None:
        return None

    def identity(self) -> str:
        return "postgresql:" + redact(self.url).split("://", 1)[1]

    def exists(self) -> bool:
        return True  # only opening it can tell; open() says so in one line

    def own_files(self) -> list[Path]:
        return []

    def open(self, *, create: bool) -> optuna.storages.BaseStorage:
        # An unreachable host must fail in seconds, not after the OS's TCP timeout. On a new
        # database Optuna creates its tables; two machines starting the same command at once
        # would race ("duplicate key value violates unique constraint
        # pg_type_typname_nsp_index"), so creation is serialised by an advisory lock.
        return _open_rdb(
            self.url, {"connect_timeout": 10}, lambda: _advisory_lock(self.url, _SCHEMA_LOCK)
        )

    def cell_lock(self, study_name: str) -> AbstractContextManager[None]:
        return _advisory_lock(self.url, study_name)

    def open_shared_queue(self, heartbeat_s: int, grace_s: int) -> optuna.storages.RDBStorage:
        return _open_rdb(
            self.url,
            {"connect_timeout": 10},
            lambda: _advisory_lock(self.url, _SCHEMA_LOCK),
            heartbeat_s=heartbeat_s,
            grace_s=grace_s,
            stale_callback=False,
        )


_SCHEMA_ATTEMPTS = 6  # 0.2 + 0.4 + … + 3.2 s: far longer than creating the tables takes


def _schema_race(exc: Exception) -> bool:
    """Whether ``exc`` is what losing the race to create Optuna's tables raises."""
    text = str(getattr(exc, "orig", exc)).lower()
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return "already exists" in text or "database is locked" in text or "alembic" in text


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _open_rdb(
    url: str,
    connect_args: dict[str, Any],
    schema_lock: Callable[[], AbstractContextManager[None]],
    *,
    heartbeat_s: int = HEARTBEAT_SECONDS,
    grace_s: int = GRACE_SECONDS,
    stale_callback: bool = True,
) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on ``url``, retried while another command creates the schema, every
    failure a one-line UsageError. ``stale_callback``: re-queue the trials of dead workers (the
    sweep's storage); off for a shared queue, which re-enqueues under its own lock."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True, "connect_args": connect_args}
    shown = redact(url)
    with warnings.catch_warnings():
        # RetryFailedTrialCallback and heartbeats are marked experimental/deprecated-alias.
        warnings.simplefilter("ignore")
        # Optuna 4.9 renamed failed_trial_callback (now a deprecated alias).
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback"
        if name not in params:
            name = "failed_trial_callback"
        callback: dict[str, Any] = {name: retry_callback()} if stale_callback else {}
        try:
            for attempt in range(_SCHEMA_ATTEMPTS):
                try:
                    with schema_lock():
                        return RetryingRDBStorage(
                            driver_url(url),
                            engine_kwargs=engine_kwargs,
                            heartbeat_interval=heartbeat_s,
                            grace_period=grace_s,
                            **callback,
                        )
                except sqlalchemy.exc.DatabaseError as exc:
                    # Two commands creating the tables of a new SQLite file at once: the loser
                    # fails on a table or row the winner just made ("alembic_version.
                    # version_num"). The schema is complete a moment later; open it again.
                    if attempt + 1 == _SCHEMA_ATTEMPTS or not _schema_race(exc):
                        raise
                    time.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")  # the loop returns or raises
        except UsageError:
            raise
        except sqlalchemy.exc.OperationalError as exc:
            raise UsageError(f"cannot reach storage {shown}: {_reason(exc)}") from None
        except sqlalchemy.exc.DatabaseError as exc:
            raise UsageError(f"storage {shown} is not usable: {_reason(exc)}") from None
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
            raise UsageError(f"storage URL {shown} is not usable: {_reason(exc)}") from None
        except ImportError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
            raise UsageError(f"storage {shown} needs a database driver: {cause}") from None


def _reason(exc: Exception) -> str:
    """'connection refused', 'password authentication failed …': the driver's first line,
    with anything that looks like the URL's password removed."""
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    first = text[0] if text else ""
    lowered = first.lower()
    for known in ("connection refused", "timeout expired", "could not translate host name"):
        if known in lowered:
            return known
    if "failed: " in first:
        first = first.split("failed: ", 1)[1]
    return redact(first.strip().rstrip(".").lower()) if first else type(exc).__name__


@contextmanager
def _advisory_lock(url: str, key_name: str) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock keyed by a name. The server frees it when the
    connection drops, so a worker killed while holding it blocks nobody."""
    import sqlalchemy
    import sqlalchemy.exc

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
    key = zlib.crc32(key_name.encode()) - 2**31
    try:
        # Retried through an outage only once this process has reached the server: an
        # unreachable or mistyped host at the start is reported in seconds, not after a minute.
        conn = _locked(engine, key, retry=url in _REACHED)
    except sqlalchemy.exc.OperationalError as exc:
        raise UsageError(f"cannot reach storage {redact(url)}: {_reason(exc)}") from None
    _REACHED.add(url)
    with conn:
        try:
            yield
        finally:
            # A server restart meanwhile ended the session, and the lock with it: nothing to
            # release then, and the error says nothing about the work done under the lock.
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


_REACHED: set[str] = set()  # URLs this process has held an advisory lock on


def _locked(engine: Any, key: int, *, retry: bool) -> Any:
    """A connection holding the advisory lock ``key``; connection failures (a server restart)
    are retried with backoff by retry.retrying, like every storage call."""

    class _Holder:
        url = engine.url

        def take(self) -> Any:
            import sqlalchemy

            conn = engine.connect()
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
            except BaseException:
                conn.close()
                raise
            return conn

    return (retrying(_Holder.take) if retry else _Holder.take)(_Holder())
