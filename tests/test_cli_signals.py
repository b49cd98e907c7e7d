"""SIGTERM (a scheduler, `kill`, a container stopping) during train and sweep: one line on
stderr, exit code 143, every finished trial kept and no trial left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cli_helpers import MNIST, REPO, tiny_protocol
from kfaclab.study.storage import StorageSpec, open_storage

MESSAGE = "kfaclab: terminated (SIGTERM); finished results are kept"


def start(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler installed (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def last_line(stderr: str) -> str:
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


def test_sigterm_during_train(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = start("train", "--steps", "100000", "--data-dir", str(MNIST), "--out", str(out))
    # Not a fixed sleep: on a loaded machine the interpreter may still be importing torch after
    # 5 s, before any handler can exist (the signal then kills it outright, -15).
    wait_for(lambda: catches_sigterm(proc.pid), proc, 120)
    time.sleep(2)  # into the data loading or the training itself; either must end cleanly
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert last_line(err) == MESSAGE and "Traceback" not in err
    assert not out.exists()  # an unfinished run writes no result


def complete_trials(folder: Path) -> dict[str, TrialState]:
    """(cell/number) → state of every trial in the sweep's journal."""
    storage = open_storage(StorageSpec(folder=folder), create=False)
    states = {}
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            states[f"{summary.study_name}/{t.number}"] = t.state
    return states


def run_and_terminate(tmp_path: Path, workers: int) -> None:
    config = tiny_protocol(tmp_path)
    text = config.read_text().replace("n_trials = 1", "n_trials = 500")
    config.write_text(text.replace("steps = 2", "steps = 40"))
    out = tmp_path / "out"
    proc = start("sweep", str(config), "--out", str(out), "--workers", str(workers))

    def some_complete() -> bool:
        if not (out / "studies.journal").is_file():
            return False
        states = complete_trials(out).values()
        return sum(s == TrialState.COMPLETE for s in states) >= 2

    wait_for(some_complete, proc, 120)
    before = {k for k, s in complete_trials(out).items() if s == TrialState.COMPLETE}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert last_line(err) == MESSAGE and "Traceback" not in err
    after = complete_trials(out)
    assert before <= {k for k, s in after.items() if s == TrialState.COMPLETE}
    assert TrialState.RUNNING not in after.values()  # the interrupted trials were re-queued


def test_sigterm_during_a_sweep_keeps_finished_trials(tmp_path: Path) -> None:
    run_and_terminate(tmp_path, workers=1)


@pytest.mark.slow  # ~30 s: two spawned workers each import torch
def test_sigterm_during_a_two_worker_sweep(tmp_path: Path) -> None:
    """The workers are told too (as Ctrl-C), so their running trials are re-queued now rather
    than left RUNNING until their heartbeats expire."""
    run_and_terminate(tmp_path, workers=2)
