"""A sweep started in the background (`kfaclab sweep … --workers 2 &`) re-queues its running
trials on SIGTERM (issue 29, F8): the shell starts background jobs with SIGINT ignored, the
workers inherited that, and the parent's forwarded SIGINT was lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from cli_helpers import REPO, tiny_protocol
from test_cli_signals import MESSAGE, complete_trials, last_line, wait_for


def start_in_background(*argv: str) -> subprocess.Popen[str]:
    """As bash starts `cmd &` in a script (no job control): SIGINT and SIGQUIT ignored."""

    def like_a_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=like_a_background_job,
    )  # fmt: skip


@pytest.mark.slow  # ~30 s: two spawned workers each import torch
def test_sigterm_to_a_background_two_worker_sweep_requeues_its_trials(tmp_path: Path) -> None:
    config = tiny_protocol(tmp_path)
    text = config.read_text().replace("n_trials = 1", "n_trials = 500")
    config.write_text(text.replace("steps = 2", "steps = 300"))  # trials of a second or more
    out = tmp_path / "out"
    proc = start_in_background("sweep", str(config), "--out", str(out), "--workers", "2")

    def two_running() -> bool:
        if not (out / "studies.journal").is_file():
            return False
        states = list(complete_trials(out).values())
        return states.count(TrialState.RUNNING) >= 2 and TrialState.COMPLETE in states

    wait_for(two_running, proc, 180)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert last_line(err) == MESSAGE and "Traceback" not in err
    after = list(complete_trials(out).values())
    assert TrialState.RUNNING not in after, after  # re-queued, not left to a heartbeat
    assert after.count(TrialState.WAITING) >= 1
    # The workers unwound on the forwarded signal, not on terminate() after the 10 s grace.
    assert waited < 10, waited
