"""Paired reruns shared through a PostgreSQL database by several `kfaclab replicate` commands.

Against the real server of scripts/start-postgres.sh (KFACLAB_TEST_POSTGRES), never a mock:
the queue's guarantees are the database's row locks and advisory locks. A tiny sweep (three
cells, one five-step trial each) is stored in a fresh schema, then rerun on new seeds by two
commands started at once, as two machines would, each into its own folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from cli_helpers import MNIST, REPO
from kfaclab.analysis.replication import rerun_queue as rq
from kfaclab.cli.main import main
from kfaclab.cli.replicate_cmd import plan_replication
from kfaclab.study.liveness import PID_ATTR, START_ATTR
from kfaclab.study.reader import read_study_set
from kfaclab.study.storage import driver_url, resolve

pytestmark = pytest.mark.postgres

PROTOCOL = """
[protocol]
name = "{name}"
[data]
dataset = "mnist"
data_dir = "{data}"
[model]
depth = 2
width = 8
[training]
batch_size = 64
steps = 5
eval_steps = [5]
histogram_steps = [3]
[cells]
sgd = true
lambdas = [1e-2, 1.0]
[search]
n_trials = 1
top_k = 1
seed = 2
lr = {{ low = 1e-3, high = 0.1, log = true }}
lr_decay = {{ low = 0.0, high = 1.0 }}
momentum = {{ low = 0.0, high = 0.9 }}
"""
N_CELLS = 3


@contextlib.contextmanager
def _schema(base: str) -> Iterator[str]:
    """conftest.postgres_url's fresh schema, for a module-scoped fixture (that one is per test)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(driver_url(base))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def _sweep(url: str, folder: Path) -> str:
    """The tiny sweep stored at ``url``; returns its protocol's name."""
    name = f"rq-{uuid.uuid4().hex[:8]}"
    config = folder / f"{name}.toml"
    config.write_text(PROTOCOL.format(name=name, data=MNIST))
    assert main(["sweep", str(config), "--storage", url]) == 0
    return name


def _args(url: str, out: Path, seeds: int) -> list[str]:
    return ["replicate", "--storage", url, "--out", str(out), "--top", "1", "--seeds", str(seeds)]


def _queue_trials(url: str) -> list[FrozenTrial]:
    spec = resolve(None, url)
    name = rq.queue_name(read_study_set(spec, with_records=False).identity)
    return optuna.load_study(study_name=name, storage=spec.open(create=False)).get_trials()


def _ident(t: FrozenTrial) -> tuple[str, int]:
    return (t.user_attrs[rq.KEY_ATTR], t.user_attrs[rq.SEED_ATTR])


def _lines(folder: Path, *, timing: bool = True) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (folder / "paired-reruns.jsonl").read_text().splitlines()]
    for r in rows if not timing else []:
        r.pop("seconds")
    return sorted(rows, key=lambda r: (r["key"], r["seed"]))


def _ran_here(log: str) -> int:
    """How many reruns a command ran itself, from its last progress line."""
    found = re.findall(r"done: (\d+) run here", log)
    assert found, log
    return int(found[-1])


@dataclass
class TwoMachines:
    url: str
    folders: list[Path]
    logs: list[str]
    pids: list[int]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMachines]:
    """Two `replicate` commands (real processes) started together on one sweep, 3 seeds."""
    base = os.environ.get("KFACLAB_TEST_POSTGRES")
    if not base:
        if os.environ.get("CI") == "true":
            pytest.fail("KFACLAB_TEST_POSTGRES is not set in CI (start scripts/start-postgres.sh)")
        pytest.skip("KFACLAB_TEST_POSTGRES not set (scripts/start-postgres.sh starts a server)")
    root = tmp_path_factory.mktemp("rq")
    with _schema(base) as url:
        _sweep(url, root)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        folders = [root / "a", root / "b"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "kfaclab.cli.main", *_args(url, out, 3)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for out in folders
        ]
        logs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], logs
        yield TwoMachines(url, folders, logs, [p.pid for p in procs])


def test_two_machines_run_each_rerun_once_and_both_end_with_all(two: TwoMachines) -> None:
    trials = _queue_trials(two.url)
    n = N_CELLS * 3
    # one trial per (key, seed), every one COMPLETE: nothing ran twice, nothing failed
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    assert len({_ident(t) for t in trials}) == n
    # run by these two commands, n in all (the claimant is recorded on its trial)
    assert {t.system_attrs[PID_ATTR] for t in trials} <= set(two.pids)
    assert sum(_ran_here(log) for log in two.logs) == n
    # each folder holds every outcome, identical to the queue's, each once
    a, b = (_lines(f) for f in two.folders)
    assert len(a) == n and a == b
    queued = sorted(
        (t.user_attrs[rq.OUTCOME_ATTR] for t in trials), key=lambda r: (r["key"], r["seed"])
    )
    assert a == queued
    assert all(
        float(row["value"]) == t.value  # "inf" when diverged
        for row in a
        for t in trials
        if _ident(t) == (row["key"], row["seed"])
    )


def test_queued_outcomes_equal_the_local_path_bitwise(two: TwoMachines, tmp_path: Path) -> None:
    """--no-queue (today's local path: no database writes) on the same jobs: the same outcomes,
    final losses bit for bit."""
    before = len(_queue_trials(two.url))
    assert main([*_args(two.url, tmp_path, 3), "--no-queue"]) == 0
    assert len(_queue_trials(two.url)) == before
    local, queued = _lines(tmp_path, timing=False), _lines(two.folders[0], timing=False)
    assert [r["value"] for r in local] == [r["value"] for r in queued]
    assert local == queued


def test_a_second_run_with_everything_done_runs_nothing(
    two: TwoMachines, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = [(t.number, t.state) for t in _queue_trials(two.url)]
    first = (two.folders[0] / "paired-reruns.jsonl").read_text()
    assert main(_args(two.url, two.folders[0], 3)) == 0
    assert _ran_here(capsys.readouterr().err) == 0
    assert (two.folders[0] / "paired-reruns.jsonl").read_text() == first  # nothing appended
    # a machine that joins late: every outcome comes from the queue, nothing runs
    assert main(_args(two.url, tmp_path, 3)) == 0
    err = capsys.readouterr().err
    assert _ran_here(err) == 0 and f"{len(before)} from other machines" in err
    assert _lines(tmp_path) == _lines(two.folders[0])
    assert [(t.number, t.state) for t in _queue_trials(two.url)] == before


def test_dead_claims_are_retried_and_local_outcomes_published(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Seed 1 runs locally (--no-queue); then a queue holds seed 2's jobs and one of seed 1's,
    and two of seed 2's are claimed by machines that die: one elsewhere (its heartbeat stops),
    one on this host (its process is gone). `replicate --seeds 2` publishes the three local
    outcomes without running them, and runs the three others, the dead claims included."""
    _sweep(postgres_url, tmp_path)
    out = tmp_path / "out"
    assert main([*_args(postgres_url, out, 1), "--no-queue"]) == 0
    local = _lines(out)
    spec = resolve(None, postgres_url)
    study = read_study_set(spec)
    jobs = plan_replication(study, top=1, n_seeds=2)
    plan = {j.ident: j for j in jobs}
    assert len(plan) == 2 * N_CELLS and {(r["key"], r["seed"]) for r in local} == set(
        list(plan)[:N_CELLS]
    )
    queue = rq.RerunQueue(spec, study.identity, heartbeat_s=1, grace_s=2)
    queue.maintain({i: j for i, j in plan.items() if i in list(plan)[N_CELLS - 1 :]}, {})
    waiting = {_ident(t): t._trial_id for t in queue.study.get_trials(states=(TrialState.WAITING,))}
    assert len(waiting) == N_CELLS + 1
    elsewhere, here = (waiting[i] for i in list(plan)[N_CELLS : N_CELLS + 2])
    # a machine elsewhere: a heartbeat, then nothing (it never finishes)
    queue.storage.record_heartbeat(elsewhere)
    assert queue.storage.set_trial_state_values(elsewhere, TrialState.RUNNING)
    # a `replicate` on this host that was killed: its process is gone
    assert queue.claim(here)
    queue.storage.set_trial_system_attr(here, PID_ATTR, _gone_pid())
    queue.storage.set_trial_system_attr(here, START_ATTR, "1")

    monkeypatch.setattr(rq, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(rq, "GRACE_SECONDS", 2)
    monkeypatch.setattr(rq, "POLL_SECONDS", 0.2)
    capsys.readouterr()
    assert main(_args(postgres_url, out, 2)) == 0
    err = capsys.readouterr().err
    assert _ran_here(err) == N_CELLS and f"{N_CELLS} published" in err, err

    trials = _queue_trials(postgres_url)
    by_state: dict[TrialState, list[FrozenTrial]] = {}
    for t in trials:
        by_state.setdefault(t.state, []).append(t)
    assert {t._trial_id for t in by_state[TrialState.FAIL]} == {elsewhere, here}
    assert not any(rq.ERROR_ATTR in t.user_attrs for t in by_state[TrialState.FAIL])
    complete = by_state[TrialState.COMPLETE]
    assert len(complete) == len({_ident(t) for t in complete}) == len(plan)
    assert set(by_state) == {TrialState.COMPLETE, TrialState.FAIL}
    rows = _lines(out)
    assert len(rows) == len(plan)
    # the published outcomes are the local ones, unchanged
    published = {_ident(t): t.user_attrs[rq.OUTCOME_ATTR] for t in complete}
    assert all(published[(r["key"], r["seed"])] == r for r in local)


def _gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_training_that_raises_is_failed_with_its_error_and_enqueued_again(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A machine whose training raises (here: its --data-dir does not exist) stops with the
    error, as without a queue; its claim is FAIL with the error, and the job waits for the next
    machine (maintain enqueues it again)."""
    _sweep(postgres_url, tmp_path)
    bad = [*_args(postgres_url, tmp_path / "out", 1), "--data-dir", str(tmp_path / "nowhere")]
    assert main(bad) == 2
    assert "data_dir must be an existing folder" in capsys.readouterr().err
    [failed] = [t for t in _queue_trials(postgres_url) if t.state == TrialState.FAIL]
    assert "data_dir must be an existing folder" in failed.user_attrs[rq.ERROR_ATTR]
    spec = resolve(None, postgres_url)
    study = read_study_set(spec)
    plan = {j.ident: j for j in plan_replication(study, top=1, n_seeds=1)}
    queue = rq.RerunQueue(spec, study.identity, heartbeat_s=1, grace_s=2)
    board = queue.maintain(plan, {})
    assert {i for i, _ in board.waiting} == set(plan) and not board.running
