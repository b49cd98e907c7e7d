"""Two `kfaclab sweep` commands at once against a real PostgreSQL server, as two machines would.

The server comes from scripts/start-postgres.sh (CI: .ci/run) via KFACLAB_TEST_POSTGRES, e.g.
postgresql://kfaclab:kfaclab@127.0.0.1:5432/kfaclab_test. Without it the test skips, except in
CI (CI=true), where a missing server must fail loudly rather than pass by skipping.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kfaclab.cli.main import main
from kfaclab.study.reader import load_study_set
from kfaclab.study.storage import redact, resolve

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.toml"


@pytest.fixture
def protocol_file(tmp_path: Path) -> tuple[Path, str]:
    """smoke.toml under a unique name, reading MNIST from the project's shared copy."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    text = SMOKE.read_text().replace('name = "smoke"', f'name = "{name}"', 1)
    # the preset's relative data_dir, made absolute (the copy lives elsewhere)
    relative = tomllib.loads(text)["data"]["data_dir"]
    shared = (SMOKE.resolve().parent / relative).resolve()
    text = text.replace(f'"{relative}"', f'"{shared}"')
    path = tmp_path / "smoke.toml"
    path.write_text(text)
    return path, name


def test_two_machines_share_one_database(
    postgres_url: str, protocol_file: tuple[Path, str], tmp_path: Path
) -> None:
    """Two commands started together on a new database: both create its tables at once (a
    race Optuna does not guard), then share every cell."""
    config, name = protocol_file
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cli = [sys.executable, "-m", "kfaclab.cli.main"]
    cmd = [*cli, "sweep", str(config), "--storage", postgres_url]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    storage = resolve(None, postgres_url).open(create=False)
    pids = set()
    for summary in storage.get_all_studies():
        if not summary.study_name.startswith(f"{name}/"):
            continue
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, summary.study_name
        assert len({t.number for t in trials}) == 3  # no duplicated trial numbers
        # (Failed once in ~10 runs on 2026-11-28, not reproduced since: the message says how.)
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 3, [
            (t.number, t.params, t.system_attrs, t.datetime_start) for t in trials
        ]
        pids |= {t.system_attrs["kfaclab:pid"] for t in trials}
    assert len(pids) == 2  # both commands ran trials

    out = tmp_path / "trials.csv"
    export = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "export", "--storage", postgres_url,
         str(out), "--protocol", name],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(out.open()))
    study_set = load_study_set(postgres_url, protocol=name)
    assert len(rows) == len(study_set.trials) == 9
    for row, t in zip(rows, study_set.trials, strict=True):
        assert (row["cell"], int(row["trial"]), row["state"]) == (t.cell, t.number, t.state)
        assert row["status"] == t.status
        assert t.value is not None
        assert float(row["value"]) == t.value or (math.isinf(t.value) and row["value"] == "inf")
        assert float(row["lr"]) == t.params["lr"]
        assert t.record is not None and t.record.status == t.status


def _password(url: str) -> str:
    userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
    assert ":" in userinfo, "the test server's URL carries a password"
    return userinfo.split(":", 1)[1]


def test_messages_never_show_the_password(
    postgres_url: str, protocol_file: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """status on an empty database, and an unknown role with a password (the test server
    trusts local connections, so a role it lacks is what refuses a login): one line each,
    redacted."""
    secret = _password(postgres_url)
    assert main(["status", "--storage", postgres_url]) == 2
    err = capsys.readouterr().err
    assert err == f"kfaclab: error: no kfaclab studies in {redact(postgres_url)}\n"
    assert f":{secret}@" not in err  # (the test server's password may equal its user name)
    user = postgres_url.split("://", 1)[1].split(":", 1)[0]
    wrong = postgres_url.replace(f"{user}:{secret}@", "nobody_kfaclab:Wr0ng-pw@", 1)
    assert main(["status", "--storage", wrong]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kfaclab: error: cannot reach storage")
    assert "nobody_kfaclab" in err
    assert "Wr0ng-pw" not in err and f":{secret}@" not in err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_status_shows_a_dead_local_workers_trial_as_stale(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kfaclab.study.liveness import HOST_ATTR, PID_ATTR, START_ATTR, host_id
    from kfaclab.study.sweep import Worker
    from test_sweep import fake_trial, protocol

    name = f"dead-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        protocol(n_trials=2, name=name), resolve(None, postgres_url), trial_fn=fake_trial
    )
    dist = optuna.distributions.FloatDistribution
    trial = worker.studies["sgd"].ask({"lr": dist(1e-3, 0.3, log=True), "lr_decay": dist(0.0, 1.0),
                                       "momentum": dist(0.0, 0.9)})  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for key, value in {HOST_ATTR: host_id(), PID_ATTR: dead.pid, START_ATTR: None}.items():
        worker.storage.set_trial_system_attr(trial._trial_id, key, value)  # type: ignore[arg-type]
    assert main(["status", "--storage", postgres_url, "--protocol", name]) == 0
    out = capsys.readouterr().out
    assert f":{_password(postgres_url)}@" not in out
    sgd = next(line.split() for line in out.splitlines() if line.startswith("sgd "))
    assert sgd[1:5] == ["0/2", "0", "0", "1"], out  # done, diverged, running, stale
    worker.run()  # the next sweep retries it
    assert main(["status", "--storage", postgres_url, "--protocol", name]) == 0
    assert "stale" not in capsys.readouterr().out
