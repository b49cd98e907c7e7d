"""Sweeps: exact trial counts with several workers, resume, SIGKILL recovery, CONFIG mismatch,
read-back and export. Orchestration tests use a fast fake trial; the SIGKILL test runs the real
``kfaclab sweep configs/smoke.toml``."""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from cli_helpers import SMOKE, smoke_top1
from kfaclab.cli.main import main
from kfaclab.study import load_study_set
from kfaclab.study.cells import build_cells
from kfaclab.study.export import curves_path
from kfaclab.study.liveness import PID_ATTR
from kfaclab.study.protocol import Protocol, load_protocol, parse_protocol
from kfaclab.study.registry import ensure_studies
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import StorageSpec, open_storage
from kfaclab.study.sweep import Worker
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

REPO = Path(__file__).resolve().parents[1]
CALLS: list[TrialConfig] = []  # fake_trial's calls in this process


def fake_trial(config: TrialConfig) -> TrialResult:
    """A smooth function of the hyperparameters; lr > 0.2 "diverges" after 3 steps."""
    CALLS.append(config)
    time.sleep(0.01)
    if config.lr > 0.2:
        return TrialResult(config, "diverged", math.inf, 3, 0.01, [2.3, 9.0, math.inf], [],
                           diverged_at=3)  # fmt: skip
    value = (math.log10(config.lr) + 1.5) ** 2 + 0.1 * config.momentum + 0.01 * config.lr_decay
    losses = [2.3 - 0.1 * i for i in range(5)]
    evals = [EvalPoint(5, value, value, 0.5 + config.momentum / 10)]
    return TrialResult(config, "ok", value, 5, 0.01, losses, evals)


def slow_fake_trial(config: TrialConfig) -> TrialResult:
    """fake_trial at half a second each: longer than a worker process takes to start (torch
    import), so on a loaded machine one worker cannot finish every trial before the other
    starts."""
    time.sleep(0.5)
    return fake_trial(config)


def protocol(n_trials: int = 4, name: str = "fake", **search: Any) -> Protocol:
    return parse_protocol(smoke_top1(name, n_trials, **search), base_dir=SMOKE.parent)


def trials_by_cell(folder: Path, name: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = open_storage(StorageSpec(folder=folder), create=False)
    return {
        s.study_name.split("/", 1)[1]: optuna.load_study(
            study_name=s.study_name, storage=storage
        ).get_trials(deepcopy=False)
        for s in storage.get_all_studies()
        if s.study_name.startswith(f"{name}/")
    }


def assert_exact(folder: Path, p: Protocol) -> None:
    """Every cell has exactly n COMPLETE trials, nothing unfinished, no parameters twice."""
    by_cell = trials_by_cell(folder, p.name)
    assert sorted(by_cell) == sorted(c.name for c in build_cells(p))
    for cell, trials in by_cell.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == p.search.n_trials, (cell, [t.state for t in trials])
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        params = [tuple(sorted(t.params.items())) for t in complete]
        assert len(set(params)) == len(params), cell


def test_two_worker_processes_give_exact_counts(tmp_path: Path) -> None:
    p = protocol(n_trials=6)
    code = run_sweep(p, StorageSpec(folder=tmp_path), workers=2, trial_fn=slow_fake_trial)
    assert code == 0
    assert_exact(tmp_path, p)
    by_cell = trials_by_cell(tmp_path, p.name)
    assert not [t for ts in by_cell.values() for t in ts if t.state == TrialState.FAIL]
    # Both processes did work (cells interleaved, nobody idle).
    pids = {t.system_attrs[PID_ATTR] for ts in by_cell.values() for t in ts}
    assert len(pids) == 2


def test_concurrent_workers_never_overrun(tmp_path: Path) -> None:
    """Three workers race for the last slots of one small cell set, in threads of one process
    (the lock is a file lock, so threads contend exactly as processes do)."""
    import threading

    p = protocol(n_trials=5)
    spec = StorageSpec(folder=tmp_path)
    workers = [Worker(p, spec, index=i, count=3, trial_fn=fake_trial) for i in range(3)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_exact(tmp_path, p)


def test_resume_keeps_finished_trials_and_never_redoes_them(tmp_path: Path) -> None:
    p = protocol(n_trials=4)
    spec = StorageSpec(folder=tmp_path)
    CALLS.clear()
    assert Worker(p, spec, trial_fn=fake_trial).run(max_trials=5) == 5
    first = {
        (cell, t.number): (t.params, t.value, t.datetime_complete)
        for cell, ts in trials_by_cell(tmp_path, p.name).items()
        for t in ts
    }
    assert len(first) == 5
    assert run_sweep(p, spec, trial_fn=fake_trial) == 0
    assert len(CALLS) == 3 * 4  # 5 before + 7 now: nothing ran twice
    after = {
        (cell, t.number): (t.params, t.value, t.datetime_complete)
        for cell, ts in trials_by_cell(tmp_path, p.name).items()
        for t in ts
    }
    assert {k: after[k] for k in first} == first
    assert_exact(tmp_path, p)
    CALLS.clear()
    assert run_sweep(p, spec, trial_fn=fake_trial) == 0
    assert CALLS == []


def test_diverged_trials_count_and_rank_last(tmp_path: Path) -> None:
    # lr log-uniform in [0.05, 1]: most trials "diverge" (lr > 0.2) in the fake.
    p = protocol(n_trials=6, lr={"low": 0.05, "high": 1.0, "log": True})
    assert run_sweep(p, StorageSpec(folder=tmp_path), trial_fn=fake_trial) == 0
    assert_exact(tmp_path, p)
    s = load_study_set(str(tmp_path))
    diverged = [t for t in s.trials if t.status == "diverged"]
    assert diverged and all(t.value == math.inf for t in diverged)
    for cell in s.cells:
        ranked = sorted(s.cell_trials(cell.name), key=lambda t: t.value)
        assert ranked[0].status == "ok"
        statuses = [t.status for t in ranked]
        assert statuses == sorted(statuses, key=lambda x: x == "diverged")


def test_config_mismatch_is_refused_naming_the_key(tmp_path: Path) -> None:
    p = load_protocol(SMOKE)
    out = tmp_path / "out"
    ensure_studies(p, open_storage(StorageSpec(folder=out), create=True), StorageSpec(folder=out))
    journal = (out / "studies.journal").read_bytes()
    # Same text but one number; the relative data_dir is compared as written, so the file's
    # location does not matter.
    changed = tmp_path / "smoke.toml"
    changed.write_text(SMOKE.read_text().replace("n_trials = 3", "n_trials = 4"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(changed), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "differs from CONFIG at search.n_trials: stored 3, CONFIG 4" in lines[0]
    assert (out / "studies.journal").read_bytes() == journal  # nothing touched


def test_export_matches_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = protocol(n_trials=3, lr={"low": 0.05, "high": 1.0, "log": True})
    out = tmp_path / "out"
    assert run_sweep(p, StorageSpec(folder=out), trial_fn=fake_trial) == 0
    csv_path = tmp_path / "export" / "trials.csv"
    assert main(["export", str(out), str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    by_cell = trials_by_cell(out, p.name)
    stored = {(c, t.number): t for c, ts in by_cell.items() for t in ts}
    assert len(rows) == len(stored) == 9
    for row in rows:
        t = stored[(row["cell"], int(row["trial"]))]
        assert row["state"] == t.state.name == "COMPLETE"
        assert row["status"] == t.user_attrs["status"]
        # A diverged trial is stored with a finite penalty (study/diverged.py), exported as inf.
        assert float(row["value"]) == (math.inf if row["status"] == "diverged" else t.value)
        for key in ("lr", "lr_decay", "momentum"):
            assert float(row[key]) == t.params[key]
        assert float(row["seconds"]) == t.user_attrs["seconds"]
    assert list(rows[0])[:11] == [
        "cell", "optimizer", "damping", "trial", "state", "status", "value", "lr", "lr_decay",
        "momentum", "seconds",
    ]  # fmt: skip
    curves = list(csv.DictReader(curves_path(csv_path).open()))
    expected = sum(len(load_study_set(str(out)).trials[i].record.step_losses) for i in range(9))  # type: ignore[union-attr]
    assert len(curves) == expected
    assert main(["status", str(out)]) == 0
    assert "3/3" in capsys.readouterr().out


def _wait_for_running_trial(
    folder: Path, deadline: float, proc: subprocess.Popen[str]
) -> optuna.trial.FrozenTrial:
    """A trial of λ = 1 that has been running for a moment (mid-trial), with its worker's pid."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the sweep ended before a trial was caught: {stderr}")
        if (folder / "studies.journal").exists():
            storage = open_storage(StorageSpec(folder=folder), create=False)
            for s in storage.get_all_studies():
                if not s.study_name.endswith("kfac-lam=1e+00"):
                    continue
                study = optuna.load_study(study_name=s.study_name, storage=storage)
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    started = t.datetime_start.timestamp() if t.datetime_start else math.inf
                    if PID_ATTR in t.system_attrs and time.time() - started > 0.3:
                        return t
        time.sleep(0.05)
    raise AssertionError("no trial of kfac-lam=1e+00 was seen running in time")


def _slow_smoke(folder: Path) -> Path:
    """configs/smoke.toml with 400 steps a trial instead of 20: a smoke trial lasts well under a
    second on a fast machine, too short a window to catch it running between two polls of the
    journal (this test once failed on CI that way). Everything else is smoke's."""
    text = SMOKE.read_text()
    data_dir = tomllib.loads(text)["data"]["data_dir"]
    absolute = (SMOKE.parent / data_dir).resolve()
    for old, new in (("steps = 20", "steps = 400"), ("eval_steps = [20]", "eval_steps = [400]"),
                     ('name = "smoke"', 'name = "smoke-slow"'),
                     (f'data_dir = "{data_dir}"', f'data_dir = "{absolute}"')):  # fmt: skip
        assert old in text, old
        text = text.replace(old, new, 1)
    path = folder / "smoke-slow.toml"
    path.write_text(text)
    return path


def test_sigkill_mid_trial_then_rerun_completes(tmp_path: Path) -> None:
    """The real `kfaclab sweep` on smoke's protocol, its worker SIGKILLed inside a trial: the
    rerun retries that trial (same parameters) and every cell ends with exactly 3 trials."""
    config = _slow_smoke(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_for_running_trial(out, time.monotonic() + 240, proc)
        assert victim.system_attrs[PID_ATTR] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stuck = trials_by_cell(out, "smoke-slow")["kfac-lam=1e+00"]
    assert [t.state for t in stuck if t.number == victim.number] == [TrialState.RUNNING]
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    p = load_protocol(config)
    assert_exact(out, p)
    trials = trials_by_cell(out, "smoke-slow")["kfac-lam=1e+00"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == victim.params
    assert retried[0].user_attrs["seed"] == victim.user_attrs["seed"]
    s = load_study_set(str(out))
    assert all(t.record is not None for t in s.trials if t.state == "COMPLETE")


def test_trial_of_a_silent_worker_elsewhere_is_retried(tmp_path: Path) -> None:
    """A RUNNING trial of another host whose heartbeat is older than the grace period (its
    machine died) is failed and re-run with the same parameters."""
    p = protocol(n_trials=2)
    spec = StorageSpec(folder=tmp_path)
    worker = Worker(p, spec, trial_fn=fake_trial)
    study = worker.studies["sgd"]
    lost = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                      "lr_decay": optuna.distributions.FloatDistribution(0.0, 1.0),
                      "momentum": optuna.distributions.FloatDistribution(0.0, 0.9)})  # fmt: skip
    for key, value in {PID_ATTR: 1, "kfaclab:host": "elsewhere:0",
                       "kfaclab:heartbeat": time.time() - 10_000}.items():  # fmt: skip
        worker.storage.set_trial_system_attr(lost._trial_id, key, value)
    worker.run()
    assert_exact(tmp_path, p)
    trials = trials_by_cell(tmp_path, p.name)["sgd"]
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [lost.number]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retry) == 1 and retry[0].params == lost.params


def test_sqlite_url_storage(tmp_path: Path) -> None:
    """The RDBStorage path (heartbeats in the database) with a file URL."""
    p = protocol(n_trials=3)
    spec = StorageSpec(url=f"sqlite:///{tmp_path / 'studies.db'}")
    assert run_sweep(p, spec, trial_fn=fake_trial, stream=io.StringIO()) == 0
    s = load_study_set(spec.url or "")
    assert len(s.trials) == 9 and {t.state for t in s.trials} == {"COMPLETE"}


def test_lr_scaled_by_lambda_samples_each_cell_in_its_own_range(tmp_path: Path) -> None:
    """search.lr_scale = "lambda": a λ cell's trials (and the distribution Optuna stores, which
    the dashboard shows) lie in λ·[low, high]; SGD's in [low, high] itself."""
    p = protocol(n_trials=6, name="scaled", lr_scale="lambda",
                 lr={"low": 1e-2, "high": 1e1, "log": True})  # fmt: skip
    assert run_sweep(p, StorageSpec(folder=tmp_path), trial_fn=fake_trial) == 0
    scale = {"sgd": 1.0, "kfac-lam=1e-03": 1e-3, "kfac-lam=1e+00": 1.0}
    by_cell = trials_by_cell(tmp_path, p.name)
    assert sorted(by_cell) == sorted(scale)
    for cell, trials in by_cell.items():
        low, high = 1e-2 * scale[cell], 1e1 * scale[cell]
        for t in trials:
            dist = t.distributions["lr"]
            assert isinstance(dist, optuna.distributions.FloatDistribution)
            assert (dist.low, dist.high, dist.log) == (
                pytest.approx(low),
                pytest.approx(high),
                True,
            )
            assert low <= t.params["lr"] <= high
    # λ = 1e-3's lr lies below every lr the unscaled range allows: the scaling really applied.
    assert max(t.params["lr"] for t in by_cell["kfac-lam=1e-03"]) < 1e-2


@pytest.mark.parametrize("where", ["heartbeat", "records"])
def test_interrupt_outside_the_trial_requeues_the_asked_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A Ctrl-C/SIGTERM landing after ask but before the trial's own guard (starting its
    heartbeat) or after it but before tell (writing its record) re-queues the trial: nothing
    stays RUNNING (a SIGTERM race seen in the real CLI test on a loaded machine)."""
    import kfaclab.study.sweep as sweep_module

    p = protocol(n_trials=2, name="race")
    spec = StorageSpec(folder=tmp_path)
    ensure_studies(p, open_storage(spec, create=True), spec)

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    if where == "heartbeat":
        monkeypatch.setattr(sweep_module.Heartbeat, "__enter__", interrupt)
    else:
        monkeypatch.setattr(sweep_module.records, "write_record", interrupt)
    with pytest.raises(KeyboardInterrupt):
        Worker(p, spec, trial_fn=fake_trial).run()
    states = [t.state for ts in trials_by_cell(tmp_path, p.name).values() for t in ts]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.WAITING) == 1
    monkeypatch.undo()
    assert run_sweep(p, spec, trial_fn=fake_trial) == 0  # the rerun completes the cells
    assert_exact(tmp_path, p)
