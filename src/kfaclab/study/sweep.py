"""One sweep worker: picks a cell, asks its study for a trial, runs it, tells the result.

Exactly n finished trials per cell, whatever the number of workers: a worker creates a trial
only under the cell's lock (storage.cell_lock), after counting the cell's COMPLETE + RUNNING +
WAITING trials; a re-queued (WAITING) trial is always taken first. Two workers can therefore
never both create the n-th trial, and a FAILed trial (its worker died) is not counted because
its WAITING copy is. Without the lock a count-then-create would over-run by up to one trial per
concurrent worker (and on PostgreSQL, trial numbers themselves can race).

A diverged trial is told as COMPLETE with a finite penalty value and user attr status =
"diverged" (diverged.py: it ranks last, optuna-dashboard plots it, and the samplers and the report
see inf as before). While a trial runs its learning curve goes to Optuna as intermediate values
(curves.py); when it ends its full record goes to the artifact store (records.py, artifacts.py).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from kfaclab.study import records
from kfaclab.study.artifacts import open_artifact_store
from kfaclab.study.cells import (
    CellInfo,
    damping_for_trial,
    search_space,
    trial_kl_clip,
    trial_lr,
)
from kfaclab.study.curves import CurveReporter
from kfaclab.study.diverged import DivergedAsInf, diverged_value
from kfaclab.study.liveness import Heartbeat, fail_dead_trials, retry_callback, worker_attrs
from kfaclab.study.protocol import Protocol
from kfaclab.study.registry import ensure_studies, optuna_quiet, study_name
from kfaclab.study.storage import Storage
from kfaclab.trial_types import TrialConfig, TrialResult

# fn(config) or fn(config, progress=callback): run_trial's progress(steps_done, total, loss)
# lets the worker report the learning curve while the trial runs.
TrialFn = Callable[..., TrialResult]
COUNTED = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
WAIT_SECONDS = 2.0  # polling period while only other workers' trials are left


def default_trial_fn() -> TrialFn:
    from kfaclab.train import run_trial

    return run_trial


SEED_SPAN = 2**63  # seeds are integers in [0, 2**63 - 1] (train/validate.py)


def trial_seed(seed: int, offset: int) -> int:
    """The seed of a cell's trial ``offset`` under ``trial_seeds = "per_trial"``: seed + offset,
    wrapped into [0, 2**63 - 1], so every seed a protocol can produce is valid and no sweep is
    refused in its middle for a seed near the top (issue 29, F14: seed = 2**63 - 1)."""
    return (seed + offset) % SEED_SPAN


def lr_per_damping(protocol: Protocol, cell: CellInfo) -> bool:
    """Whether the cell's trials sample lr/λ and step with it times λ_t: an adaptive strategy's
    cell under ``search.strategy_lr_scale = "damping"``."""
    return isinstance(cell.damping, dict) and protocol.search.strategy_lr_scale == "damping"


def trial_config(
    protocol: Protocol, cell: CellInfo, params: dict[str, Any], seed: int
) -> TrialConfig:
    t = protocol.training
    return TrialConfig(
        optimizer=cell.optimizer,
        lr=trial_lr(protocol, cell, params),
        lr_decay=params["lr_decay"],
        momentum=params["momentum"],
        damping=damping_for_trial(cell, params),
        damping_form=t.damping_form,  # type: ignore[arg-type]
        fisher=t.fisher,  # type: ignore[arg-type]
        factor_decay=t.factor_decay,
        factor_every=t.factor_every,
        inverse_every=t.inverse_every,
        kl_clip=trial_kl_clip(protocol, params),
        lr_per_damping=lr_per_damping(protocol, cell),
        factor_init=t.factor_init,  # type: ignore[arg-type]
        eigen_floor=t.eigen_floor,
        conv_approx=t.conv_approx,  # type: ignore[arg-type]
        model=protocol.model.kind,  # type: ignore[arg-type]
        dataset=protocol.data.dataset,  # type: ignore[arg-type]
        data_dir=protocol.data.data_dir,
        depth=protocol.model.depth,
        width=protocol.model.width,
        activation=protocol.model.activation,  # type: ignore[arg-type]
        init=protocol.model.init,  # type: ignore[arg-type]
        batch_size=t.batch_size,
        epochs=t.epochs,
        steps=t.steps,
        seed=seed,
        device=protocol.device,
        eval_steps=t.eval_steps,
        histogram_steps=t.histogram_steps,
        divergence_loss=t.divergence_loss,
    )


def make_sampler(protocol: Protocol, cell: CellInfo, k: int) -> optuna.samplers.BaseSampler:
    """The cell's sampler for its k-th trial. Seeded from (protocol seed, cell, k) rather than
    once per process: two workers (or a resumed run) would otherwise replay the same random
    stream and propose the same points. TPE/GP keep no state between asks besides their RNG,
    so a fresh sampler per trial loses nothing."""
    search = protocol.search
    seed = zlib.crc32(f"{search.seed}/{cell.name}/{k}".encode())
    # Random start-up trials: Optuna's 10, but at most a third of a small budget.
    startup = min(10, max(1, search.n_trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        inner: optuna.samplers.BaseSampler
        if search.sampler == "random":
            inner = optuna.samplers.RandomSampler(seed=seed)
        elif search.sampler == "gp":
            inner = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        else:
            # multivariate: lr and momentum interact (the effective step is ~ lr / (1 - momentum)).
            inner = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True
            )
    return DivergedAsInf(inner)


def takes_progress(fn: TrialFn) -> bool:
    try:
        return "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it with the config only
        return False


def cell_counts(study: optuna.Study) -> tuple[int, int, int]:
    """(COMPLETE, RUNNING, WAITING) trials of a study."""
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return done, running, len(trials) - done - running


class Worker:
    """Runs trials of a protocol's cells until none is left to start."""

    def __init__(
        self,
        protocol: Protocol,
        spec: Storage,
        *,
        index: int = 0,
        count: int = 1,
        trial_fn: TrialFn | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.protocol = protocol
        self.spec = spec
        self.index, self.count = index, count
        self.trial_fn = trial_fn
        self.stop = stop or threading.Event()
        # The trial asked and not yet told, with its heartbeat once started: what an
        # interrupted run() must re-queue.
        self._current: tuple[optuna.Study, optuna.Trial, Heartbeat | None] | None = None
        self.storage = spec.open(create=True)
        self.journal = not spec.builtin_heartbeat  # kfaclab's own heartbeat attr
        self.cells = ensure_studies(protocol, self.storage, spec)
        self.records = open_artifact_store(spec, self.storage, create=True)
        with optuna_quiet():
            self.studies = {
                c.name: optuna.load_study(
                    study_name=study_name(protocol.name, c.name), storage=self.storage
                )
                for c in self.cells
            }

    def run(self, max_trials: int | None = None) -> int:
        """Run until every cell has its trials (or ``stop``); returns the number run here."""
        fn = self.trial_fn or default_trial_fn()
        for cell in self.cells:
            self._reap(cell)
        ran = 0
        while not self.stop.is_set() and (max_trials is None or ran < max_trials):
            choice = self._choose()
            if choice is None:
                if not self._wait_for_others():
                    break
                continue
            cell = choice
            try:
                started = self._start(cell)
                if started is None:
                    continue  # filled by another worker meanwhile; choose again
                self._finish(cell, *started, fn)
            except BaseException as exc:
                # An error, Ctrl-C or SIGTERM anywhere between ask and tell (in the trial, or
                # around it): fail the asked trial and re-queue it, never leave it RUNNING.
                self._abandon_current(exc)
                raise
            ran += 1
        return ran

    def _abandon_current(self, exc: BaseException) -> None:
        """The asked trial that ``exc`` interrupted, if any: stop its heartbeat, fail it and
        re-queue the same parameters, so a rerun redoes exactly this trial; ``exc`` propagates."""
        current, self._current = self._current, None
        if current is None:
            return
        study, trial, beat = current
        if beat is not None:
            beat.__exit__()
        try:
            # Under the lock: between the FAIL and its WAITING copy the cell looks one short.
            with self.spec.cell_lock(study.study_name):
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
                study.tell(trial, state=TrialState.FAIL)
                retry_callback()(study, self.storage.get_trial(trial._trial_id))
        except Exception:  # the storage is gone too; liveness will catch it on the next run
            pass

    def _wait_for_others(self) -> bool:
        """Nothing left to start, but other workers (here or on other machines) still run
        trials: wait for them, so that this command ends only when every cell is complete and
        a trial whose worker dies meanwhile is retried here. False when all is complete."""
        unfinished = [c for c in self.cells if cell_counts(self.studies[c.name])[0] < c.n_trials]
        if not unfinished:
            return False
        self.stop.wait(WAIT_SECONDS)
        for cell in unfinished:
            self._reap(cell)
        return True

    def _reap(self, cell: CellInfo) -> None:
        with self.spec.cell_lock(study_name(self.protocol.name, cell.name)):
            fail_dead_trials(self.studies[cell.name], self.storage, journal=self.journal)

    def _choose(self) -> CellInfo | None:
        """The open cell with the fewest trials started, so cells advance together and the
        workers spread over different cells (each cell's search stays nearly sequential);
        ties go round-robin from this worker's own offset."""
        best: tuple[int, int] | None = None
        choice = None
        n = len(self.cells)
        for i, cell in enumerate(self.cells):
            done, running, waiting = cell_counts(self.studies[cell.name])
            if waiting == 0 and done + running >= cell.n_trials:
                continue
            key = (done + running, (i - self.index * n // max(self.count, 1)) % n)
            if best is None or key < best:
                best, choice = key, cell
        return choice

    def _start(self, cell: CellInfo) -> tuple[optuna.Trial, Heartbeat] | None:
        study = self.studies[cell.name]
        space: dict[str, BaseDistribution] = {
            name: FloatDistribution(r.low, r.high, log=r.log)
            for name, r in search_space(self.protocol, cell).items()
        }
        with self.spec.cell_lock(study.study_name):
            fail_dead_trials(study, self.storage, journal=self.journal)
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            counted = sum(t.state in COUNTED for t in trials)
            if not waiting and counted >= cell.n_trials:
                return None
            study.sampler = make_sampler(self.protocol, cell, len(trials))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # "Heartbeat … supposed to be used with Study.optimize": Heartbeat does it here.
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                with _signals_deferred():
                    # A SIGTERM or Ctrl-C raised between the trial's creation and this
                    # assignment would leave it RUNNING with nothing to re-queue it (seen under
                    # load); deferred, it arrives once the trial is known and run() re-queues it.
                    trial = study.ask(space)  # a WAITING (retried) trial first, with its params
                    self._current = (study, trial, None)
            for key, value in worker_attrs().items():
                self.storage.set_trial_system_attr(trial._trial_id, key, value)
            if records.SEED not in trial.user_attrs:
                search = self.protocol.search
                offset = len(trials) if search.trial_seeds == "per_trial" else 0
                trial.set_user_attr(records.SEED, trial_seed(search.seed, offset))
            beat = Heartbeat(self.storage, trial._trial_id)
            beat.__enter__()  # the first beat lands before the lock is released
            self._current = (study, trial, beat)
        return trial, beat

    def _finish(self, cell: CellInfo, trial: optuna.Trial, beat: Heartbeat, fn: TrialFn) -> None:
        study = self.studies[cell.name]
        config = trial_config(self.protocol, cell, trial.params, int(trial.user_attrs["seed"]))
        curve = CurveReporter(trial)
        try:
            result = fn(config, progress=curve.progress) if takes_progress(fn) else fn(config)
        except BaseException:
            curve.close()  # the curve so far stays on the failed trial; run() re-queues it
            raise
        beat.__exit__()  # idempotent: run() may stop it again if a signal lands before tell
        value = result.value
        attrs = records.result_attrs(result)
        if result.status == "diverged" or not math.isfinite(value):
            # Finite so that the dashboard plots it; ranks after every ok trial (diverged.py).
            value = diverged_value(self.protocol.training.divergence_loss)
            attrs[records.STATUS] = "diverged"
        try:
            curve.finish(result.step_losses)
            records.write_record(trial, result, self.records)
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
            study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Declared dead (heartbeat lost for longer than the grace period) and re-queued;
            # its retry carries the same parameters, so this result is simply not kept.
            pass
        self._current = None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back for this thread while the block runs (delivered after)."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
