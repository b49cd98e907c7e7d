"""Noticing trials whose worker died (SIGKILL, OOM, a lost machine) and retrying them.

Every running trial carries system attrs naming its worker (host, pid, process start time) and,
for the journal storage, a heartbeat time refreshed by a thread. Before creating a trial, a worker
fails the cell's RUNNING trials that are dead and re-queues each as a WAITING trial with the same
parameters (Optuna's ``RetryFailedTrialCallback``), which the next ``ask`` picks up first:

- a worker on this host whose process is gone is dead at once (no need to wait for a timeout:
  rerunning a killed sweep resumes immediately);
- otherwise a heartbeat older than the grace period means dead. RDBStorage has this built in
  (``heartbeat_interval``, ``fail_stale_trials``); Optuna's JournalStorage has no heartbeat, so
  for it the heartbeat is a trial system attr written by ``Heartbeat``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kfaclab.study.storage.base import GRACE_SECONDS, HEARTBEAT_SECONDS, retry_callback

HOST_ATTR = "kfaclab:host"
PID_ATTR = "kfaclab:pid"
START_ATTR = "kfaclab:pid_start"
BEAT_ATTR = "kfaclab:heartbeat"


def host_id() -> str:
    """This machine: the host name plus the boot id, so a reboot or a twin name cannot confuse."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which
    tells a live process apart from a later one that reused the pid; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return None if fields[0] == "Z" else fields[19]  # a zombie is dead for our purpose


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    if Path("/proc").is_dir() and now is None:
        return False  # gone meanwhile, or a zombie
    return start is None or now is None or now == start


def worker_attrs() -> dict[str, Any]:
    pid = os.getpid()
    return {HOST_ATTR: host_id(), PID_ATTR: pid, START_ATTR: _start_time(pid)}


def _is_dead(trial: FrozenTrial, here: str, now: float, use_beat: bool) -> bool:
    attrs = trial.system_attrs
    pid = attrs.get(PID_ATTR)
    if attrs.get(HOST_ATTR) == here and isinstance(pid, int):
        return not process_alive(pid, attrs.get(START_ATTR))
    if not use_beat and pid is not None:
        return False  # RDBStorage's own heartbeat covers other hosts
    # Journal (no heartbeat in Optuna's JournalStorage), or a worker killed between creating
    # the trial and its first heartbeat (no worker attrs): judge by our own heartbeat attr,
    # else by the start time.
    beat = attrs.get(BEAT_ATTR)
    if not isinstance(beat, int | float):
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else now
    return now - float(beat) > GRACE_SECONDS


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, *, journal: bool
) -> list[int]:
    """Fail the dead RUNNING trials of ``study`` and re-queue them; returns their numbers.

    Call it under the cell lock (storage.cell_lock) so two workers never retry the same trial.
    """
    if not journal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)  # heartbeats of every host
    here, now, callback = host_id(), time.time(), retry_callback()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead(trial, here, now, use_beat=journal):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile after all
        failed.append(trial.number)
        callback(study, storage.get_trial(trial._trial_id))
    return failed


def dead_running_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, *, journal: bool
) -> set[int]:
    """Numbers of ``study``'s RUNNING trials whose worker is dead, judged as fail_dead_trials
    judges them but changing nothing (``kfaclab status`` is read-only): a dead pid on this host,
    or a heartbeat older than the grace period (the storage's own for a database)."""
    stale_ids: set[int] = set()
    if not journal:
        get_stale = getattr(storage, "_get_stale_trial_ids", None)  # RDBStorage's own check
        if get_stale is not None:
            with contextlib.suppress(Exception):
                stale_ids = set(get_stale(study._study_id))
    here, now = host_id(), time.time()
    return {
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t._trial_id in stale_ids or _is_dead(t, here, now, use_beat=journal)
    }


class Heartbeat:
    """While a trial runs: a thread refreshing its heartbeat (journal: a system attr; RDB: the
    storage's own heartbeat table)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kfaclab-heartbeat", daemon=True)

    def beat(self) -> None:
        record = getattr(self._storage, "record_heartbeat", None)
        if record is not None and _heartbeat_enabled(self._storage):
            record(self._trial_id)
        else:
            self._storage.set_trial_system_attr(self._trial_id, BEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            # A storage hiccup must not kill the trial; the next beat will try again.
            with contextlib.suppress(Exception):
                self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get is not None and get() is not None
