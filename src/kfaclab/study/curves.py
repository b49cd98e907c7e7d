"""A trial's learning curve as Optuna intermediate values, so optuna-dashboard plots it.

Intermediate value at step t = the minibatch loss of step t (0-based, the row ``step`` of
``kfaclab export``'s curves CSV and ``TrialResult.step_losses[t]``), reported for every
``stride(T)``-th step of a T-step trial and for the last step it recorded (for a diverged trial,
the loss that stopped it, possibly inf). ``stride`` aims at about ``POINTS`` points a curve:
T = 469 (the paper's epoch) reports every 9th step, 53 points; T < 2 × POINTS reports every
step. Why not every step: each report is one storage write (a journal line of 144 bytes, fsync'd
under the file lock; a PostgreSQL row) and every later ask of the cell loads all of them: 469 ×
2,700 trials would be ~180 MB of journal replayed by every worker process and 140k rows per TPE
ask on a 300-trial cell, for curves a dashboard draws no better (README, "Optuna's tools", has
the measurements). The full per-step curve stays in the record.

Reports are made where the trial runs, by a thread of its worker: live from the runner's
progress callback (so the dashboard shows running trials' curves), then completed from the
result (the step that stopped a diverged trial never reaches progress; a trial function without
a progress argument reports everything at the end). A step already present is never reported
again, so a trial whose values Optuna copied (a retry with inherited values) writes no duplicate
log entries.
"""

from __future__ import annotations

import queue
import threading

import optuna

POINTS = 50


def stride(total_steps: int) -> int:
    return max(1, total_steps // POINTS)


def sampled_steps(n_recorded: int, total_steps: int) -> list[int]:
    """The steps reported for a trial that recorded ``n_recorded`` losses out of ``total_steps``."""
    if n_recorded <= 0:
        return []
    k = stride(total_steps)
    steps = list(range(0, n_recorded, k))
    if steps[-1] != n_recorded - 1:
        steps.append(n_recorded - 1)
    return steps


class CurveReporter:
    """Reports a running trial's minibatch losses to its Optuna trial (see the module doc).

    The writes happen on a thread of their own: a journal append is an fsync'd write under the
    file lock (~3-5 ms here, about one training step of the paper's model), which the thread
    overlaps with training instead of adding to it. ``finish`` (or ``close``) waits for them.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        frozen = trial.storage.get_trial(trial._trial_id)
        self.reported = set(frozen.intermediate_values)
        self.total: int | None = None
        self.alive = True
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="kfaclab-curve", daemon=True)
        self._thread.start()

    def progress(self, steps_done: int, total: int, loss: float) -> None:
        """The runner's progress callback: called after step ``steps_done - 1`` with its loss."""
        self.total = total
        t = steps_done - 1
        if t % stride(total) == 0:
            self._queue.put((t, float(loss)))

    def finish(self, step_losses: list[float]) -> None:
        """Report what the live calls could not (the last step; all of them without progress),
        wait until every report is written, and raise what writing them raised."""
        total = self.total if self.total is not None else len(step_losses)
        for t in sampled_steps(len(step_losses), total):
            self._queue.put((t, float(step_losses[t])))
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Write what is queued and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            step, loss = item
            if not self.alive or step in self.reported:
                continue
            try:
                self.trial.report(loss, step)  # inf/nan included: storages keep them
            except optuna.exceptions.UpdateFinishedTrialError:
                # Declared dead meanwhile and re-queued: its retry reports its own curve.
                self.alive = False
            except Exception as exc:  # the storage failed: stop, and say so in finish()
                self.alive, self.error = False, exc
            else:
                self.reported.add(step)
