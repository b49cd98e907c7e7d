"""Riding out short database outages: every storage call retried with backoff.

A PostgreSQL restart (a minor upgrade, a failover, a container moved) takes about a second; a
sweep of hours should not die of it, nor print eight tracebacks and Optuna's guess that the data
was too long ("exceeding max length", which it says for every failed commit). So each call of an
``RDBStorage`` whose failure is a lost or refused connection is retried after 0.5, 1, 2, 4, 8, 8,
… seconds, for up to ``OUTAGE_SECONDS`` in all; the pool's pre-ping then opens fresh connections.
An outage that lasts longer ends the command with one line (``StorageUnavailableError``, a
UsageError): finished trials are in the database, and rerunning the command resumes.

Errors that are not about the connection (a constraint, a missing study: KeyError) are raised at
once, as before. A write whose commit reached the server just before the connection dropped is
sent again; Optuna's writes are keyed by trial id, so a repeated attribute or value write is
harmless, and a repeated ``create_new_trial`` leaves one RUNNING trial no worker owns, failed
and re-queued by the heartbeat check like any dead worker's trial (study/liveness.py).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from kfaclab.errors import UsageError
from kfaclab.study.storage.urls import redact


# KFACLAB_OUTAGE_SECONDS changes it (a scheduler that restarts the database slowly; tests).
def _outage_seconds() -> float:
    try:
        value = float(os.environ.get("KFACLAB_OUTAGE_SECONDS", "60"))
    except ValueError:
        return 60.0  # a malformed value must not stop every command at import
    return value if 0 <= value < 1e6 else 60.0


OUTAGE_SECONDS = _outage_seconds()
_LASTING = ("no such table", "no such column", "unable to open", "readonly", "disk i/o", "full")
_FIRST_WAIT, _LONGEST_WAIT = 0.5, 8.0
_F = TypeVar("_F", bound=Callable[..., Any])


class StorageUnavailableError(UsageError):
    """The database stayed unreachable for OUTAGE_SECONDS; one line, like every UsageError."""


def is_transient(exc: BaseException) -> bool:
    """A lost, refused or invalidated connection anywhere in ``exc``'s chain of causes (Optuna
    wraps SQLAlchemy's errors in StorageInternalError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            # Also OperationalError: SQLite's errors that waiting cannot mend are not outages.
            text = str(seen.orig).lower()
            return not any(word in text for word in _LASTING)
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, sqlalchemy.exc.InvalidatePoolError | sqlalchemy.exc.DisconnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(getattr(cause, "orig", cause)).strip().splitlines()
    return text[0] if text else type(cause).__name__


def _shown(owner: Any) -> str:
    """The storage as users wrote it: no password, no SQLAlchemy driver ("+psycopg2")."""
    return re.sub(r"^(\w+)\+\w+://", r"\1://", redact(str(owner.url)))


def retrying(method: _F) -> _F:
    """``method`` of an RDBStorage, retried through connection failures (module docstring)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        budget = OUTAGE_SECONDS
        deadline = time.monotonic() + budget
        wait = _FIRST_WAIT
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() + wait > deadline:
                    raise StorageUnavailableError(
                        f"storage {_shown(self)} unreachable for {budget:.0f} s "
                        f"({redact(_first_line(exc))}); finished trials are kept, rerun the "
                        "same command to resume"
                    ) from None
                time.sleep(wait)
                wait = min(2 * wait, _LONGEST_WAIT)

    return call  # type: ignore[return-value]


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose every storage and heartbeat method retries (module docstring).
    A subclass, not a wrapper: Optuna puts its trial cache in front of RDBStorage instances
    only, and runs heartbeats for storages that have RDBStorage's heartbeat methods."""


_NOT_RETRIED = {
    "remove_session", "upgrade", "get_current_version", "get_head_version", "get_all_versions",
    "get_heartbeat_interval", "get_failed_trial_callback", "is_heartbeat_enabled",
    "get_heartbeat_stale_trial_callback",
}  # fmt: skip
for _name in dir(optuna.storages.RDBStorage):
    _method = getattr(optuna.storages.RDBStorage, _name)
    if not _name.startswith("_") and callable(_method) and _name not in _NOT_RETRIED:
        setattr(RetryingRDBStorage, _name, retrying(_method))
# The private methods Optuna's trial cache (_CachedStorage) and fail_stale_trials call instead
# of the public ones.
for _name in (
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
    "_get_stale_trial_ids",
):  # fmt: skip
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))
