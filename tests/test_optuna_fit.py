"""Nothing hidden from Optuna's tools: learning curves as intermediate values (sampled, live, never
twice), records as artifacts outside the user-attribute table (a folder, a database table), a
clearly named index study, diverged trials with a finite value that the samplers still see as
inf, and studies written the old way still read and resume. The oracles are the storage itself:
the journal's lines, the artifact files, SQLite's table, Optuna's samplers run on inf."""

from __future__ import annotations

import gzip
import io
import json
import math
import shutil
import sqlite3
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cli_helpers import SMOKE, smoke_top1
from kfaclab.study import load_study_set, records
from kfaclab.study.artifacts import open_artifact_store
from kfaclab.study.cells import build_cells
from kfaclab.study.curves import CurveReporter, sampled_steps
from kfaclab.study.diverged import DivergedAsInf, diverged_value
from kfaclab.study.progress import cell_trials, summarize
from kfaclab.study.protocol import Protocol, parse_protocol
from kfaclab.study.registry import index_study_name, stored_protocols
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import StorageSpec, open_storage
from kfaclab.study.sweep import Worker, make_sampler
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

STEPS = 120  # reported every 2nd step (curves.POINTS = 50)
LIVE: dict[str, Any] = {}  # what curve_trial saw of its own running trial, when asked to look
FAIL_ONCE: list[bool] = []  # curve_trial raises once at step 50 while this holds True


def curve_trial(config: TrialConfig, progress: Any = None) -> TrialResult:
    """A fake trial that calls progress as run_trial does: after each step, with its loss. An lr
    above 0.2 diverges at step 7 (loss inf, which, as in run_trial, never reaches progress)."""
    losses: list[float] = []
    for t in range(STEPS):
        if config.lr > 0.2 and t == 7:
            losses.append(math.inf)
            return TrialResult(config, "diverged", math.inf, 7, 0.01, losses, [], diverged_at=7)
        loss = 2.3 * math.exp(-config.lr * t) + 0.01 * config.momentum + 1e-4 * t % 3
        losses.append(loss)
        if progress is not None:
            progress(t + 1, STEPS, loss)
        if t == 100 and "folder" in LIVE:
            LIVE["seen"] = wait_for_curves(LIVE["folder"], 51)
        if t == 50 and FAIL_ONCE and FAIL_ONCE.pop():
            raise RuntimeError("worker lost mid-trial")
    value = losses[-1]
    evals = [EvalPoint(STEPS, value, value, 0.9)]
    return TrialResult(config, "ok", value, STEPS, 0.01, losses, evals, {"60": {"fc1": [1, 2]}})


def wait_for_curves(folder: Path, n: int, timeout: float = 20.0) -> list[int]:
    """The running trials' curve lengths once they reach ``n`` values (reports are written by
    a thread, so they may trail the training by a step or two), or as they are at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        lengths = running_curve_lengths(folder)
        if (lengths and min(lengths) >= n) or time.monotonic() > deadline:
            return lengths
        time.sleep(0.05)


def running_curve_lengths(folder: Path) -> list[int]:
    """Intermediate values of the running trials, as another process opening the folder sees."""
    storage = open_storage(StorageSpec(folder=folder), create=False)
    return [
        len(t.intermediate_values)
        for s in storage.get_all_studies()
        for t in storage.get_all_trials(s._study_id, states=(TrialState.RUNNING,))
    ]


def protocol(n_trials: int = 3, name: str = "fit", **search: Any) -> Protocol:
    return parse_protocol(smoke_top1(name, n_trials, **search), base_dir=SMOKE.parent)


def journal_reports(folder: Path) -> Counter[tuple[int, int]]:
    """(trial_id, step) → how many journal lines report an intermediate value for it."""
    found: Counter[tuple[int, int]] = Counter()
    for line in (folder / "studies.journal").read_text().splitlines():
        entry = json.loads(line)
        if "intermediate_value" in entry:
            found[(entry["trial_id"], entry["step"])] += 1
    return found


def all_trials(spec: StorageSpec) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(spec, create=False)
    return [t for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id)]


def expected_curve(losses: list[float], total: int = STEPS) -> dict[int, float]:
    return {t: losses[t] for t in sampled_steps(len(losses), total)}


SPACE = {"lr": FloatDistribution(1e-3, 1, log=True), "m": FloatDistribution(0, 0.9)}
DIVERGING = {"lr": {"low": 0.05, "high": 1.0, "log": True}}


def test_curves_are_sampled_intermediate_values_reported_live_and_once(tmp_path: Path) -> None:
    LIVE.clear()
    LIVE["folder"] = tmp_path
    try:
        assert (
            run_sweep(protocol(4, **DIVERGING), StorageSpec(folder=tmp_path), trial_fn=curve_trial)
            == 0
        )
    finally:
        LIVE.pop("folder")
    # During step 100 of a running trial another reader sees steps 0, 2, …, 100 (51 values).
    assert LIVE["seen"] and all(n == 51 for n in LIVE["seen"])
    study_set = load_study_set(str(tmp_path))
    stored = {
        (t.number, tuple(t.params.values())): t for t in all_trials(StorageSpec(folder=tmp_path))
    }
    diverged = 0
    for t in study_set.trials:
        assert t.record is not None
        frozen = stored[(t.number, tuple(t.params.values()))]
        assert frozen.intermediate_values == expected_curve(t.record.step_losses)
        if t.status == "diverged":  # its last value is the loss that stopped it
            diverged += 1
            assert (
                frozen.intermediate_values[7] == math.inf and max(frozen.intermediate_values) == 7
            )
        else:
            assert len(frozen.intermediate_values) == 61  # 0, 2, …, 118, and the last step 119
    assert diverged > 0
    lines = journal_reports(tmp_path)
    assert set(lines.values()) == {1}  # no step of any trial is written twice
    assert sum(lines.values()) == sum(len(t.intermediate_values) for t in stored.values())


def test_a_retried_trial_reports_its_own_curve_once(tmp_path: Path) -> None:
    p = protocol(1)
    spec = StorageSpec(folder=tmp_path)
    FAIL_ONCE[:] = [True]
    with pytest.raises(RuntimeError, match="worker lost"):
        Worker(p, spec, trial_fn=curve_trial).run()
    assert Worker(p, spec, trial_fn=curve_trial).run() == len(build_cells(p))
    trials = all_trials(spec)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 1 and len(complete) == len(build_cells(p))
    assert sorted(failed[0].intermediate_values) == list(range(0, 51, 2))  # up to the crash
    retry = next(t for t in complete if t.params == failed[0].params)
    assert sorted(retry.intermediate_values) == sampled_steps(STEPS, STEPS)
    assert set(journal_reports(tmp_path).values()) == {1}


def test_inherited_values_are_not_reported_again(tmp_path: Path) -> None:
    spec = StorageSpec(folder=tmp_path)
    study = optuna.create_study(storage=open_storage(spec, create=True), study_name="s")
    first = study.ask({"x": FloatDistribution(0, 1)})
    for step in (0, 2, 4):
        first.report(1.0 + step, step)
    study.tell(first, state=TrialState.FAIL)
    with warnings.catch_warnings():  # experimental
        warnings.simplefilter("ignore")
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            inherit_intermediate_values=True
        )
    callback(study, study.trials[0])
    second = study.ask()  # the WAITING copy, holding 0, 2, 4
    assert second._trial_id != first._trial_id and second.params == first.params
    CurveReporter(second).finish([float(s) for s in range(6)])
    lines = journal_reports(tmp_path)
    assert sorted(step for (tid, step) in lines if tid == second._trial_id) == [1, 3, 5]
    assert study.trials[1].intermediate_values == {0: 1.0, 1: 1.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 5.0}


def test_records_are_artifacts_in_the_folder_not_user_attrs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_sweep(protocol(2, **DIVERGING), StorageSpec(folder=out), trial_fn=curve_trial) == 0
    complete = [t for t in all_trials(StorageSpec(folder=out)) if t.state == TrialState.COMPLETE]
    by_id: dict[str, optuna.trial.FrozenTrial] = {}
    for t in complete:
        assert set(t.user_attrs) == {"seed", "status", "seconds", "test_accuracy"}
        metas = [json.loads(v) for k, v in t.system_attrs.items() if k.startswith("artifacts:")]
        assert [m["filename"] for m in metas] == ["record.json.gz"]
        by_id[metas[0]["artifact_id"]] = t
    files = {f.name: f for f in (out / "artifacts").iterdir()}
    assert set(files) == set(by_id)
    # A report on another machine: the folder copied elsewhere reads the same records.
    moved = shutil.copytree(out, tmp_path / "elsewhere")
    records_here = {(t.cell, t.number): t.record for t in load_study_set(str(out)).trials}
    records_there = {(t.cell, t.number): t.record for t in load_study_set(str(moved)).trials}
    assert records_there == records_here and all(r is not None for r in records_here.values())
    for artifact_id, t in by_id.items():
        data = json.loads(gzip.decompress(files[artifact_id].read_bytes()))
        assert data["config"]["lr"] == t.params["lr"]
        assert data["status"] == t.user_attrs["status"]


def test_records_of_a_database_storage_live_in_its_own_table(tmp_path: Path) -> None:
    db = tmp_path / "studies.db"
    spec = StorageSpec(url=f"sqlite:///{db}")
    assert run_sweep(protocol(2, **DIVERGING), spec, trial_fn=curve_trial) == 0
    assert not (tmp_path / "artifacts").exists()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT artifact_id, data FROM kfaclab_artifacts").fetchall())
        attr_values = [v for (v,) in conn.execute("SELECT value_json FROM trial_user_attributes")]
    complete = [t for t in all_trials(spec) if t.state == TrialState.COMPLETE]
    assert len(rows) == len(complete) == 2 * len(build_cells(protocol(2)))
    assert max(len(v) for v in attr_values) < 100  # no record blob among the user attrs
    study_set = load_study_set(spec.url or "")
    for t in study_set.trials:
        frozen = next(f for f in complete if f.number == t.number and f.params == t.params)
        artifact_id = records.record_artifact_id(frozen)
        assert artifact_id is not None and t.record is not None
        assert records.decode_record(rows[artifact_id]) == t.record
        assert frozen.intermediate_values == expected_curve(t.record.step_losses)


def test_index_study_is_named_for_what_it_is(tmp_path: Path) -> None:
    p = protocol(1, name="named")
    assert run_sweep(p, StorageSpec(folder=tmp_path), trial_fn=curve_trial) == 0
    storage = open_storage(StorageSpec(folder=tmp_path), create=False)
    studies = {s.study_name: s for s in storage.get_all_studies()}
    index = index_study_name("named")
    assert index == "named [kfaclab index: protocol + cells, no trials]"
    assert set(studies) == {index} | {f"named/{c.name}" for c in build_cells(p)}
    assert storage.get_all_trials(studies[index]._study_id) == []
    assert [s.name for s in stored_protocols(storage)] == ["named"]


def test_diverged_trials_are_finite_in_storage_and_inf_to_kfaclab(tmp_path: Path) -> None:
    p = protocol(4, **DIVERGING)
    assert run_sweep(p, StorageSpec(folder=tmp_path), trial_fn=curve_trial) == 0
    penalty = diverged_value(p.training.divergence_loss)
    assert penalty == 10 * p.training.divergence_loss == 1e4
    raw = [t for t in all_trials(StorageSpec(folder=tmp_path)) if t.state == TrialState.COMPLETE]
    diverged = [t for t in raw if t.user_attrs["status"] == "diverged"]
    assert diverged and all(t.value == penalty for t in diverged)
    assert all(t.value < penalty for t in raw if t.user_attrs["status"] == "ok")
    study_set = load_study_set(str(tmp_path))
    assert sorted(t.value for t in study_set.trials if t.status == "diverged") == [math.inf] * len(
        diverged
    )
    storage = open_storage(StorageSpec(folder=tmp_path), create=False)
    cells = build_cells(p)
    for row in summarize(cells, cell_trials(storage, p.name, cells)):
        assert row.best is None or row.best < 3  # the penalty is never a cell's best loss


def _twin_studies(n: int) -> tuple[optuna.Study, optuna.Study]:
    """The same random trials stored the old way (inf) and the new way (penalty + status)."""
    old = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    new = optuna.create_study()
    for _ in range(n):
        trial = old.ask(SPACE)
        lr, m = trial.params["lr"], trial.params["m"]
        is_diverged = lr > 0.1
        value = (math.log10(lr) + 2) ** 2 + m
        old.tell(trial, math.inf if is_diverged else value)
        new.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=SPACE,
                value=diverged_value(1e3) if is_diverged else value,
                user_attrs={"status": "diverged" if is_diverged else "ok"},
            )
        )
    return old, new


@pytest.mark.filterwarnings("ignore:Clip non-finite values")
@pytest.mark.parametrize("kind", ["tpe", "gp"])
def test_samplers_propose_what_they_did_with_inf(kind: str) -> None:
    p = protocol(sampler=kind)
    assert all(isinstance(make_sampler(p, c, 0), DivergedAsInf) for c in build_cells(p))
    old, new = _twin_studies(16)
    assert sum(t.value == math.inf for t in old.trials) >= 3  # some trials diverged

    def sampler() -> optuna.samplers.BaseSampler:
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=7, n_startup_trials=5)
        return optuna.samplers.TPESampler(seed=7, n_startup_trials=5, multivariate=True)

    old.sampler, new.sampler = sampler(), DivergedAsInf(sampler())
    for _ in range(3):
        a, b = old.ask(SPACE), new.ask(SPACE)
        assert a.params == b.params
        old.tell(a, 1.0)
        new.tell(b, 1.0)
    if kind == "gp":  # without the wrapper, GP fits the penalty as an outlier and goes elsewhere
        _, bare = _twin_studies(16)
        bare.sampler = sampler()
        assert bare.ask(SPACE).params != old.trials[16].params


def _old_result(config: TrialConfig, diverged: bool) -> TrialResult:
    if diverged:
        return TrialResult(config, "diverged", math.inf, 2, 0.5, [2.3, math.inf], [], diverged_at=2)
    evals = [EvalPoint(3, 0.5, 0.6, 0.8)]
    return TrialResult(config, "ok", 0.5, 3, 0.5, [2.3, 1.0, 0.7], evals, {"1": {"fc1": [3]}})


def write_old_layout(folder: Path, p: Protocol) -> dict[tuple[str, int], TrialResult]:
    """A journal as kfaclab wrote it before artifacts: the index study named after the protocol,
    records in the user attr "record" (base64 zlib JSON), diverged trials valued inf."""
    storage = open_storage(StorageSpec(folder=folder), create=True)
    index = optuna.create_study(storage=storage, study_name=p.name)
    index.set_user_attr("kfaclab:kind", "protocol")
    index.set_user_attr("kfaclab:protocol", p.raw)
    cells = build_cells(p)
    index.set_user_attr("kfaclab:cells", [c.to_dict() for c in cells])
    space = {k: FloatDistribution(0.001, 1.0, log=True) for k in ("lr",)}
    space |= {k: FloatDistribution(0.0, 1.0) for k in ("lr_decay", "momentum")}
    written = {}
    for cell in cells:
        study = optuna.create_study(storage=storage, study_name=f"{p.name}/{cell.name}")
        study.set_user_attr("kfaclab:cell", cell.to_dict())
        for number, lr in enumerate((0.01, 0.5)):
            params = {"lr": lr, "lr_decay": 0.5, "momentum": 0.1}
            result = _old_result(TrialConfig(lr=lr, lr_decay=0.5, momentum=0.1), lr > 0.2)
            attrs = {"seed": 0, "status": result.status, "seconds": 0.5, "test_accuracy": None}
            attrs["record"] = records.encode_result(result)
            study.add_trial(
                optuna.trial.create_trial(
                    params=params, distributions=space, value=result.value, user_attrs=attrs
                )
            )
            written[(cell.name, number)] = result
    return written


def test_a_journal_written_the_old_way_reads_and_resumes(tmp_path: Path) -> None:
    p = protocol(3, name="old")
    written = write_old_layout(tmp_path, p)
    study_set = load_study_set(str(tmp_path))
    assert {(t.cell, t.number): t.record for t in study_set.trials} == written
    assert [t.value for t in study_set.trials if t.status == "diverged"] == [math.inf] * 3
    # Resuming adds the third trial of each cell the new way, in the old index study.
    assert run_sweep(p, StorageSpec(folder=tmp_path), trial_fn=curve_trial) == 0
    storage = open_storage(StorageSpec(folder=tmp_path), create=False)
    assert sorted(s.study_name for s in storage.get_all_studies()) == sorted(
        ["old"] + [f"old/{c.name}" for c in build_cells(p)]
    )
    study_set = load_study_set(str(tmp_path))
    assert len(study_set.trials) == 9 and all(t.record is not None for t in study_set.trials)
    for t in study_set.trials:
        if t.number < 2:
            assert t.record == written[(t.cell, t.number)]
        else:
            assert t.record is not None and len(t.record.step_losses) == STEPS


def test_database_store_without_the_storages_engine(tmp_path: Path) -> None:
    """A storage that does not expose Optuna's engine (a wrapper) still gets the table, via its
    URL; the store behaves as Optuna's ArtifactStore protocol says."""
    spec = StorageSpec(url=f"sqlite:///{tmp_path / 'a.db'}")
    store = open_artifact_store(spec, optuna.storages.InMemoryStorage(), create=True)
    store.write("abc-1", io.BytesIO(b"\x00record\xff"))
    with store.open_reader("abc-1") as handle:
        assert handle.read() == b"\x00record\xff"
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT artifact_id FROM kfaclab_artifacts").fetchall() == [("abc-1",)]
    store.remove("abc-1")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("abc-1")
    with pytest.raises(ArtifactNotFound):
        store.remove("abc-1")
