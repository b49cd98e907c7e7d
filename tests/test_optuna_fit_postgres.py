"""On PostgreSQL (many machines, one database) the records live in the database itself: another
process with no access to the sweep's files reads them (`kfaclab export --storage URL`), and
`kfaclab dashboard --storage URL` serves them. The server: KFACLAB_TEST_POSTGRES (test_postgres.py).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import TrialState

from kfaclab.study import load_study_set, records
from kfaclab.study.cells import build_cells
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import StorageSpec, driver_url
from test_optuna_fit import DIVERGING, all_trials, curve_trial, expected_curve, protocol

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]


def test_records_are_in_the_database_for_every_machine(postgres_url: str, tmp_path: Path) -> None:
    p = protocol(2, name=f"pg-{uuid.uuid4().hex[:6]}", **DIVERGING)
    spec = StorageSpec(url=postgres_url)
    assert run_sweep(p, spec, trial_fn=curve_trial) == 0
    engine = sqlalchemy.create_engine(driver_url(postgres_url))
    with engine.connect() as conn:
        rows = dict(
            conn.execute(sqlalchemy.text("SELECT artifact_id, data FROM kfaclab_artifacts")).all()
        )
        longest = conn.execute(
            sqlalchemy.text("SELECT max(length(value_json)) FROM trial_user_attributes")
        ).scalar_one()
    engine.dispose()
    complete = [t for t in all_trials(spec) if t.state == TrialState.COMPLETE]
    assert len(rows) == len(complete) == 2 * len(build_cells(p))
    assert longest < 100  # no record blob among the user attrs
    for t in load_study_set(postgres_url).trials:
        frozen = next(f for f in complete if f.number == t.number and f.params == t.params)
        artifact_id = records.record_artifact_id(frozen)
        assert artifact_id is not None and t.record is not None
        assert records.decode_record(bytes(rows[artifact_id])) == t.record
        assert frozen.intermediate_values == expected_curve(t.record.step_losses)
    # Another process, run from an empty folder, reads the curves from the records.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "t.csv"
    result = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "export", "--storage", postgres_url, str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    curves = list(csv.DictReader((tmp_path / "t-curves.csv").open()))
    study_set = load_study_set(postgres_url)
    assert len(curves) == sum(len(t.record.step_losses) for t in study_set.trials if t.record)


def test_dashboard_serves_records_from_the_database(postgres_url: str) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in requirements-dev.txt")
    from test_optuna_fit_dashboard import get, get_json, start_dashboard

    p = protocol(1, name=f"pg-{uuid.uuid4().hex[:6]}")
    assert run_sweep(p, StorageSpec(url=postgres_url), trial_fn=curve_trial) == 0
    ours = {(f"{p.name}/{t.cell}", t.number): t for t in load_study_set(postgres_url).trials}
    proc, url = start_dashboard("--storage", postgres_url)
    try:
        served = 0
        for summary in get_json(url + "api/studies")["study_summaries"]:
            for trial in get_json(f"{url}api/studies/{summary['study_id']}")["trials"]:
                (artifact,) = trial["artifacts"]
                path = (
                    f"artifacts/{summary['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
                )
                record = records.decode_record(get(url + path))
                assert record == ours[(summary["study_name"], trial["number"])].record
                served += 1
        assert served == len(ours) == len(build_cells(p))
    finally:
        proc.terminate()
        proc.wait(10)
