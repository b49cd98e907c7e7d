"""Paired reruns shared by many machines through the sweep's own PostgreSQL database.

``kfaclab replicate --storage postgresql://… --out DIR`` on several machines at once: each
machine plans the same jobs (pool.plan_jobs) from the same stored study, and they share them
through one more Optuna study in that database, ``"<study identity> [kfaclab paired reruns]"``,
one trial per job (Optuna's storage API; no table of our own):

- a job is a WAITING trial whose user attrs are its identity (``kfaclab:key``, ``kfaclab:seed``)
  and the whole Job as JSON (``kfaclab:job``: for people and dashboards; each machine runs its
  *own* plan's Job, so its own ``--data-dir`` applies and it never runs a job it did not plan);
- a machine claims one with ``set_trial_state_values(RUNNING)``, which RDBStorage does under a
  row lock and which returns True to exactly one caller; ``study.ask`` is never called (on an
  empty queue it would sample a new trial);
- the outcome (``RerunOutcome.to_json``) is stored as the ``kfaclab:outcome`` user attr and the
  trial COMPLETE with the final loss as its value (inf when diverged: divergence is data). A
  training that raised is FAIL with ``kfaclab:error``, and ends the command that ran it, as
  without a queue; the job goes back in the queue for the other machines;
- every machine appends every COMPLETE outcome of its plan to its own paired-reruns.jsonl and
  returns only when it holds them all, so `verdicts` and `report` work on any of them.

One rule keeps each rerun run once: for every (key, seed), at most one trial is WAITING, RUNNING
or COMPLETE. Trials are only ever created (and dead ones failed) under a PostgreSQL advisory
lock (``Storage.cell_lock`` on the queue's name), after reading the queue afresh, and only for
a job that has no such trial; claiming moves a trial on, never creates one.

A machine that dies: while a claim runs, its machine records Optuna's heartbeat on the trial
every ``HEARTBEAT_SECONDS`` (30 s, from the parent process, which only waits). Any machine's
``replicate`` still running or started later fails a RUNNING trial whose heartbeat is older than
``GRACE_SECONDS`` (2 min), at once if its process is gone on the same host, and enqueues the job
again. A reply lost with a dropped connection can leave a claim nobody runs; it is failed the
same way. Results this machine holds only locally (an older run, ``--no-queue``) are published
to the queue rather than run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.replication.pool import Job, clock, load_cache, run_one, worker_pool
from kfaclab.errors import UsageError
from kfaclab.study.liveness import HOST_ATTR, PID_ATTR, START_ATTR, host_id, process_alive
from kfaclab.study.liveness import worker_attrs as _worker_attrs
from kfaclab.study.storage import GRACE_SECONDS, HEARTBEAT_SECONDS, Storage

KIND_ATTR = "kfaclab:kind"  # on the queue study: "paired-reruns"
KEY_ATTR = "kfaclab:key"
SEED_ATTR = "kfaclab:seed"
JOB_ATTR = "kfaclab:job"
OUTCOME_ATTR = "kfaclab:outcome"
ERROR_ATTR = "kfaclab:error"
POLL_SECONDS = 2.0  # how often a machine with nothing to run looks at the queue again

Ident = tuple[str, int]


def shares_queue(spec: Storage) -> bool:
    """Whether ``spec`` is a database server (a URL and no folder on this machine): where the
    reruns go through a queue. A journal folder or a SQLite file is one machine's: reruns
    stay local (pool.run_jobs), as before."""
    return spec.shared_by_machines


def queue_name(identity: str) -> str:
    """The queue study of the stored study ``identity`` (``StudySet.identity``). Not
    "<protocol>/…": that prefix is the cells'."""
    return f"{identity} [kfaclab paired reruns]"


def job_attrs(job: Job) -> dict[str, Any]:
    """A job's trial attrs: its identity, and the whole Job as JSON."""
    data = dataclasses.asdict(job)
    data["config"] = job.config.to_dict()
    return {KEY_ATTR: job.key, SEED_ATTR: job.config.seed, JOB_ATTR: data}


def _ident(trial: FrozenTrial) -> Ident | None:
    """A queue trial's (key, seed); None when its attrs are not ours (a shared database's other
    users can write anything)."""
    key, seed = trial.user_attrs.get(KEY_ATTR), trial.user_attrs.get(SEED_ATTR)
    if isinstance(key, str) and isinstance(seed, int) and not isinstance(seed, bool):
        return (key, seed)
    return None


@dataclass
class Board:
    """What the queue holds for one plan, read at one moment."""

    done: dict[Ident, RerunOutcome] = field(default_factory=dict)  # COMPLETE, outcome readable
    waiting: list[tuple[Ident, int]] = field(default_factory=list)  # (job, trial id)
    running: dict[Ident, int] = field(default_factory=dict)

    def missing(self, plan: Sequence[Ident]) -> list[Ident]:
        """Jobs with no trial that is WAITING, RUNNING or COMPLETE (new, or failed)."""
        active = self.done.keys() | self.running.keys() | {i for i, _ in self.waiting}
        return [i for i in plan if i not in active]


class RerunQueue:
    """The queue study of one stored study in one database server."""

    def __init__(self, spec: Storage, identity: str, *, heartbeat_s: int, grace_s: int) -> None:
        storage = spec.open_shared_queue(heartbeat_s, grace_s)
        if storage is None:
            raise ValueError(f"{spec.describe()} shares no queue between machines")
        self.spec, self.name = spec, queue_name(identity)
        self.storage = storage
        with self.lock(), _quiet():
            self.study = optuna.create_study(
                storage=self.storage, study_name=self.name, load_if_exists=True
            )
            if KIND_ATTR not in self.study.user_attrs:
                self.study.set_user_attr(KIND_ATTR, "paired-reruns")
        self._read: dict[int, RerunOutcome | None] = {}  # a COMPLETE trial's parsed outcome
        self.published = 0  # outcomes of this machine's file added to the queue by maintain

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return self.spec.cell_lock(self.name)

    def board(self, plan: dict[Ident, Job]) -> Board:
        """The plan's trials now. Optuna's trial cache reads only unfinished and new trials."""
        board = Board()
        for t in self.study.get_trials(deepcopy=False):
            ident = _ident(t)
            if ident is None or ident not in plan:
                continue
            if t.state == TrialState.WAITING:
                board.waiting.append((ident, t._trial_id))
            elif t.state == TrialState.RUNNING:
                board.running[ident] = t._trial_id
            elif t.state == TrialState.COMPLETE:
                outcome = self._outcome(t, ident)
                if outcome is not None:
                    board.done.setdefault(ident, outcome)
        return board

    def _outcome(self, trial: FrozenTrial, ident: Ident) -> RerunOutcome | None:
        """A COMPLETE trial's outcome, or None when it is missing or damaged (the job is then
        enqueued again, as if it had failed)."""
        if trial._trial_id not in self._read:
            try:
                o: RerunOutcome | None = RerunOutcome.from_json(trial.user_attrs[OUTCOME_ATTR])
            except (ValueError, TypeError, KeyError, AttributeError):
                o = None
            self._read[trial._trial_id] = o if o is not None and (o.key, o.seed) == ident else None
        return self._read[trial._trial_id]

    def maintain(self, plan: dict[Ident, Job], stored: dict[Ident, RerunOutcome]) -> Board:
        """Under the queue's lock: fail dead claims, then enqueue each job that has no live
        trial, or publish it COMPLETE at once when ``stored`` (this machine's file) has it."""
        with self.lock():
            self._fail_dead()
            board = self.board(plan)
            for ident in board.missing(list(plan)):
                attrs = job_attrs(plan[ident])
                if ident in stored:
                    outcome = stored[ident].to_json()
                    trial = create_trial(
                        state=TrialState.COMPLETE,
                        value=_objective(stored[ident].value),
                        user_attrs={**attrs, OUTCOME_ATTR: outcome},
                    )
                    self.published += 1
                else:
                    trial = create_trial(state=TrialState.WAITING, user_attrs=attrs)
                self.study.add_trial(trial)
            return self.board(plan)

    def _fail_dead(self) -> None:
        """RUNNING trials whose heartbeat is older than the grace period (any host), or whose
        process on this host is gone, become FAIL (their jobs are then missing)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna
            optuna.storages.fail_stale_trials(self.study)  # no callback: maintain re-enqueues
        here = host_id()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs, pid = t.system_attrs, t.system_attrs.get(PID_ATTR)
            if attrs.get(HOST_ATTR) != here or not isinstance(pid, int):
                continue
            if not process_alive(pid, attrs.get(START_ATTR)):
                self._finish(t._trial_id, TrialState.FAIL)

    def claim(self, trial_id: int) -> bool:
        """Take a WAITING trial; True for exactly one caller. The heartbeat is recorded before
        (a claim is never RUNNING without one, or no one could tell it dead) and after."""
        self.storage.record_heartbeat(trial_id)
        try:
            if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        self.storage.record_heartbeat(trial_id)
        for key, value in _worker_attrs().items():
            self.storage.set_trial_system_attr(trial_id, key, value)
        return True

    def beat(self, trial_ids: Sequence[int]) -> None:
        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)

    def complete(self, trial_id: int, data: dict[str, Any]) -> bool:
        """Store a claim's outcome; False if the trial was declared dead meanwhile (the outcome
        is still good: the caller keeps it, and the job may run once more elsewhere)."""
        try:
            self.storage.set_trial_user_attr(trial_id, OUTCOME_ATTR, data)
            return self._finish(trial_id, TrialState.COMPLETE, [_objective(data["value"])])
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def fail(self, trial_id: int, error: str | None = None) -> None:
        """Give a claim back (FAIL): ``error`` when its training raised, None when this command
        stops before finishing it. Either way it is enqueued again by the next maintenance."""
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if error is not None:
                self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, error[:2000])
            self._finish(trial_id, TrialState.FAIL)

    def _finish(self, trial_id: int, state: TrialState, values: list[float] | None = None) -> bool:
        try:
            return bool(self.storage.set_trial_state_values(trial_id, state, values))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False


def run_queued(
    jobs: Sequence[Job],
    cache: Path,
    spec: Storage,
    identity: str,
    *,
    workers: int = 1,
    log: Callable[[str], None] = lambda s: None,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    poll_s: float | None = None,
) -> list[RerunOutcome]:
    """pool.run_jobs through the queue of ``spec``'s database: run the jobs no machine has run
    (in ``workers`` processes), append every outcome of ``jobs`` to ``cache`` as it appears in
    the queue, and return them in the order of ``jobs`` once all are there."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    stored, damaged = load_cache(cache)
    if damaged:
        log(f"reruns: {damaged} damaged line(s) in {cache} skipped (they will be rerun)")
    plan = {j.ident: j for j in jobs}
    if plan:
        queue = RerunQueue(
            spec,
            identity,
            heartbeat_s=heartbeat_s or HEARTBEAT_SECONDS,
            grace_s=grace_s or GRACE_SECONDS,
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        with _append(cache) as out:
            _Loop(queue, plan, stored, out, workers, log, poll_s or POLL_SECONDS).run(cache)
    return [stored[j.ident] for j in jobs if j.ident in stored]


@contextlib.contextmanager
def _append(cache: Path) -> Iterator[IO[str]]:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    with os.fdopen(os.open(cache, flags, 0o644), "a", encoding="utf-8") as out:
        yield out


class _Loop:
    """One machine's part: claim what is waiting while a worker is free, keep the claims'
    heartbeats, merge what any machine finished, and look after the queue every heartbeat."""

    def __init__(
        self,
        queue: RerunQueue,
        plan: dict[Ident, Job],
        stored: dict[Ident, RerunOutcome],
        out: IO[str],
        workers: int,
        log: Callable[[str], None],
        poll_s: float,
    ) -> None:
        self.queue, self.plan, self.stored, self.out = queue, plan, stored, out
        self.workers, self.log, self.poll_s = workers, log, poll_s
        self.order = {ident: i for i, ident in enumerate(plan)}
        self.heartbeat_s = float(queue.storage.heartbeat_interval or HEARTBEAT_SECONDS)
        self.mine: dict[Future[dict[str, Any]], tuple[int, Job]] = {}
        self.ran = self.merged = self.published = 0

    def run(self, cache: Path) -> None:
        q, plan = self.queue, self.plan
        start = time.monotonic()
        board = q.maintain(plan, self.stored)
        first = len(board.done)
        self.log(
            f"reruns: queue {q.name!r} in {q.spec.describe()}: {first} of {len(plan)} "
            f"done, {len(plan) - first} to run by the machines sharing it"
        )
        last_maintain = last_beat = last_log = time.monotonic()
        with worker_pool(self.workers) as pool:
            try:
                while True:
                    self._merge(board)
                    if len(self.stored.keys() & plan.keys()) == len(plan) and not self.mine:
                        break
                    self._claim(board, pool)
                    self._wait()
                    now = time.monotonic()
                    if self.mine and now - last_beat >= self.heartbeat_s:
                        q.beat([tid for tid, _ in self.mine.values()])
                        last_beat = now
                    if now - last_maintain >= self.heartbeat_s or board.missing(list(plan)):
                        board, last_maintain = q.maintain(plan, self.stored), now
                    else:
                        board = q.board(plan)
                    if now - last_log > 10:
                        last_log = now
                        self._progress(board, first, now - start)
            finally:
                for fut, (trial_id, _) in self.mine.items():
                    fut.cancel()
                    # Given back: whoever maintains next enqueues it again. If the database is
                    # what failed, the claim's heartbeat stops and it is failed after the grace.
                    with contextlib.suppress(Exception):
                        q.fail(trial_id)
        self.log(
            f"reruns: {len(plan)}/{len(plan)} done: {self.ran} run here, {self.merged} from "
            f"other machines, {self.published + q.published} published from {cache}, in "
            f"{clock(time.monotonic() - start)}"
        )

    def _merge(self, board: Board) -> None:
        """Append what the queue has and this machine's file lacks."""
        for ident, outcome in board.done.items():
            if ident not in self.stored:
                self._keep(outcome.to_json())
                self.merged += 1

    def _keep(self, data: dict[str, Any]) -> None:
        self.out.write(json.dumps(data, allow_nan=False) + "\n")
        self.out.flush()
        o = RerunOutcome.from_json(data)
        self.stored[(o.key, o.seed)] = o

    def _claim(self, board: Board, pool: Any) -> None:
        """Claim waiting jobs while a worker is free, in plan order (seed-major, as without a
        queue), those with a stored outcome first: publishing one costs nothing."""
        busy = {job.ident for _, job in self.mine.values()}
        waiting = sorted(board.waiting, key=lambda w: (w[0] not in self.stored, self.order[w[0]]))
        for ident, trial_id in waiting:
            if ident in busy or ident in board.done:
                continue
            local = ident in self.stored
            if not local and len(self.mine) >= self.workers:
                break
            if not self.queue.claim(trial_id):
                continue  # another machine was first
            if local:
                self.queue.complete(trial_id, self.stored[ident].to_json())
                self.published += 1
                continue
            job = self.plan[ident]
            self.mine[pool.submit(run_one, job)] = (trial_id, job)
            busy.add(ident)

    def _wait(self) -> None:
        """Until a claim finishes or it is time to look at the queue again."""
        if not self.mine:
            time.sleep(self.poll_s)
            return
        finished, _ = wait(
            self.mine, timeout=min(self.poll_s, self.heartbeat_s / 2), return_when=FIRST_COMPLETED
        )
        for fut in finished:
            trial_id, job = self.mine.pop(fut)
            try:
                data = fut.result()
            except Exception as exc:
                self.queue.fail(trial_id, f"{type(exc).__name__}: {exc}")
                raise  # as without a queue; the job is enqueued again for the others
            if not self.queue.complete(trial_id, data):
                self.log(
                    f"reruns: {job.cell} trial {job.trial_number} seed {job.config.seed} was "
                    "declared dead while it ran (no heartbeat for the grace period); its "
                    "outcome is kept here, and the job may also run elsewhere"
                )
            self._keep(data)
            self.ran += 1

    def _progress(self, board: Board, first: int, elapsed: float) -> None:
        done = len(board.done)
        others = len(board.running) - len(self.mine)
        line = f"reruns: {done}/{len(self.plan)} done ({self.ran} here), {others} running elsewhere"
        if done > first:
            rate = elapsed / (done - first)
            line += f", ETA {clock(rate * (len(self.plan) - done))}"
        self.log(line)


def _objective(value: Any) -> float:
    """A trial's value: the final loss, inf when diverged (a NaN loss is a divergence too)."""
    v = float(value)
    return math.inf if math.isnan(v) else v


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
