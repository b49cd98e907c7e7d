"""The journal's lock file left by a killed holder is removed at once, by its holder's liveness
(an flock the kernel drops when the holder dies), never while its holder lives (issue 29, F7:
every write after a SIGKILL stalled 30 s on Optuna's grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import REPO, tiny_protocol
from kfaclab.cli.main import main
from kfaclab.study.storage.lockfile import FOREIGN_GRACE, LiveLock

_HOLDER = """
import sys, time
from kfaclab.study.storage.lockfile import LiveLock
lock = LiveLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def hold(journal: Path, seconds: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(journal), str(seconds)], env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_a_sigkilled_holders_lock_is_removed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "studies.journal"
    proc = hold(journal, 600)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert Path(f"{journal}.lock").exists()  # what a kill in the window leaves
    started = time.monotonic()
    lock = LiveLock(str(journal))
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    assert waited < 1.0, waited  # was 30 s; the holder's flock died with it
    err = capsys.readouterr().err
    assert f"removed the stale lock {journal}.lock" in err and f"process {proc.pid}" in err


def test_a_live_holder_is_never_broken_however_old_its_lock(tmp_path: Path) -> None:
    journal = tmp_path / "studies.journal"
    proc = hold(journal, 3 + FOREIGN_GRACE)
    old = time.time() - 3600
    os.utime(f"{journal}.lock", (old, old))  # older than any grace period
    started = time.monotonic()
    lock = LiveLock(str(journal))
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    assert proc.wait(timeout=30) == 0
    # The holder slept 3 s + FOREIGN_GRACE after taking it: we got it only once it let go.
    assert waited > 2.5 + FOREIGN_GRACE, waited


def test_a_plain_stale_lock_file_costs_seconds_not_thirty(tmp_path: Path) -> None:
    """An Optuna-style lock file (no flock, as any process killed before this fix left it)."""
    config = tiny_protocol(tmp_path)
    out = tmp_path / "s"
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    lock = out / "studies.journal.lock"
    lock.touch()
    old = time.time() - 60
    os.utime(lock, (old, old))
    more = config.read_text().replace("n_trials = 1", "n_trials = 2")
    config.write_text(more.replace('name = "tiny"', 'name = "tiny2"'))
    started = time.monotonic()
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    assert time.monotonic() - started < 25  # the trials take seconds; the wait was 30 s
    assert not lock.exists()
