"""The one storage interface: every caller goes through it (no kind branches, no import cycle),
it knows the study's own files (export/report refuse to overwrite them), refuses surprising
SQLite storages, and ``status`` shows the trials of dead workers as stale."""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from kfaclab.cli.main import main
from kfaclab.study.liveness import BEAT_ATTR, HOST_ATTR, PID_ATTR, START_ATTR, host_id
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import JournalFolder, PostgresServer, SQLiteFile, Storage, resolve
from kfaclab.study.sweep import Worker
from test_sweep import fake_trial, protocol

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "kfaclab"
STORAGE_PKG = SRC / "study" / "storage"


def test_no_caller_branches_on_the_kind_of_storage() -> None:
    """Outside the storage package nobody asks whether there is a URL or which scheme it has,
    nor which implementation it holds."""
    pattern = re.compile(
        r"url is None|url is not None|startswith\(\"(postgres|sqlite)|\"postgresql\" in|"
        r"isinstance\([^)]*(JournalFolder|SQLiteFile|PostgresServer)"
    )
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in SRC.rglob("*.py")
        if STORAGE_PKG not in path.parents
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def _kfaclab_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("kfaclab.")}


def test_the_storage_package_imports_nothing_of_the_study_above_it() -> None:
    """liveness (and registry, sweep…) build on storage; storage never imports them back, not
    even inside a function, so there is no cycle."""
    for path in STORAGE_PKG.glob("*.py"):
        above = {
            m for m in _kfaclab_imports(path)
            if m.startswith("kfaclab.study.") and not m.startswith("kfaclab.study.storage")
        }  # fmt: skip
        assert above == set(), path.name
    # And each imports cleanly first, in a fresh interpreter.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for module in ("kfaclab.study.liveness", "kfaclab.study.storage", "kfaclab.study.reader"):
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)


def test_each_storage_describes_itself_and_pickles(tmp_path: Path) -> None:
    journal = resolve(str(tmp_path / "out"))
    sqlite = resolve(None, f"sqlite:///{tmp_path / 'db' / 's.db'}")
    server = resolve(None, "postgresql://u:pw@db:5432/s")
    assert isinstance(journal, JournalFolder) and isinstance(sqlite, SQLiteFile)
    assert isinstance(server, PostgresServer)
    assert journal.describe() == str(tmp_path / "out" / "studies.journal")
    assert sqlite.describe() == f"sqlite:///{tmp_path / 'db' / 's.db'}"
    assert server.describe() == "postgresql://u@db:5432/s"
    assert (journal.folder, sqlite.folder, server.folder) == (
        tmp_path / "out",
        tmp_path / "db",
        None,
    )
    # The report's default folder: the sweep's --out, or ./report for a database URL.
    assert (journal.out_folder, sqlite.out_folder, server.out_folder) == (
        tmp_path / "out",
        None,
        None,
    )
    assert [journal.builtin_heartbeat, sqlite.builtin_heartbeat, server.builtin_heartbeat] == [
        False, True, True,
    ]  # fmt: skip
    assert not journal.exists() and not sqlite.exists()
    for storage in (journal, sqlite, server):
        assert pickle.loads(pickle.dumps(storage)) == storage  # travels to spawned workers


def test_identity_is_the_same_from_any_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a" / "out").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    here = resolve("a/out").identity()
    monkeypatch.chdir(tmp_path / "a")
    assert resolve("out").identity() == here == resolve(str(tmp_path / "a" / "out")).identity()
    assert resolve(None, "sqlite:///out/x.db").identity() == f"sqlite:{tmp_path / 'a/out/x.db'}"


def _swept(storage: Storage) -> Storage:
    assert run_sweep(protocol(n_trials=1), storage, trial_fn=fake_trial, stream=io.StringIO()) == 0
    return storage


def test_export_refuses_to_overwrite_the_studys_own_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _swept(JournalFolder(out))
    journal = out / "studies.journal"
    before = journal.read_bytes()
    for target in (journal, out / "sub" / ".." / "studies.journal", Path(f"{journal}.lock")):
        assert main(["export", str(out), str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"OUT.csv must not be a file of the study itself, got {target}" in err
    assert journal.read_bytes() == before
    db = tmp_path / "db" / "s.db"
    url = f"sqlite:///{db}"
    _swept(resolve(None, url))
    db_bytes = db.read_bytes()
    for target in (db, Path(f"{db}-wal")):
        assert main(["export", "--storage", url, str(target)]) == 2
        assert "must not be a file of the study itself" in capsys.readouterr().err
    assert db.read_bytes() == db_bytes
    assert main(["export", str(out), str(out / "trials.csv")]) == 0  # beside them is fine


def test_report_refuses_an_out_folder_whose_files_are_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "report.md"  # an odd name, but a database all the same
    _swept(resolve(None, f"sqlite:///{db}"))
    before = db.read_bytes()
    assert main(["report", "--storage", f"sqlite:///{db}", "--out", str(tmp_path)]) == 2
    assert "--out must not be a file of the study itself" in capsys.readouterr().err
    assert db.read_bytes() == before


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_reading_a_missing_sqlite_file_refuses_and_creates_nothing(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "none.db"
    args = [command, "--storage", f"sqlite:///{db}"]
    args += [str(tmp_path / "t.csv")] if command == "export" else []
    args += ["--out", str(tmp_path / "r")] if command == "report" else []
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"kfaclab: error: no studies in sqlite:///{db}: {db} does not exist\n"
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running_trial(worker: Worker, attrs: dict[str, object]) -> int:
    study = worker.studies["sgd"]
    dist = optuna.distributions.FloatDistribution
    trial = study.ask({"lr": dist(1e-3, 0.3, log=True), "lr_decay": dist(0.0, 1.0),
                       "momentum": dist(0.0, 0.9)})  # fmt: skip
    for key, value in attrs.items():
        worker.storage.set_trial_system_attr(trial._trial_id, key, value)  # type: ignore[arg-type]
    return trial.number


def _status_row(out: str, cell: str) -> dict[str, str]:
    lines = out.splitlines()[1:]
    header = re.split(r"\s{2,}", lines[0].strip())
    row = next(line for line in lines if line.startswith(cell + " "))
    return dict(zip(header, re.split(r"\s{2,}", row.strip()), strict=False))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_status_shows_trials_of_dead_workers_as_stale(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three RUNNING trials: a live worker (this process), a dead pid on this host, and a worker
    on another host silent past the grace period. Only the first is running."""
    storage = (
        JournalFolder(tmp_path)
        if kind == "journal"
        else resolve(None, f"sqlite:///{tmp_path / 's.db'}")
    )
    worker = Worker(protocol(n_trials=5), storage, trial_fn=fake_trial)
    pid = os.getpid()
    here = host_id()
    start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _running_trial(
        worker, {HOST_ATTR: here, PID_ATTR: pid, START_ATTR: start, BEAT_ATTR: time.time()}
    )
    _running_trial(worker, {HOST_ATTR: here, PID_ATTR: _dead_pid(), START_ATTR: None})
    silent = _running_trial(
        worker, {HOST_ATTR: "elsewhere:0", PID_ATTR: 1, BEAT_ATTR: time.time() - 10_000}
    )
    if kind == "sqlite":  # the database's own heartbeat table, as a lost machine leaves it
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 's.db'}")
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, "
                    "datetime('now', '-3 hours') FROM trials WHERE number = :n"
                ),
                {"n": silent},
            )
        engine.dispose()
    target = (
        ["--storage", f"sqlite:///{tmp_path / 's.db'}"] if kind == "sqlite" else [str(tmp_path)]
    )
    assert main(["status", *target]) == 0
    out = capsys.readouterr().out
    row = _status_row(out, "sgd")
    assert (row["running"], row["stale"]) == ("1", "2"), out
    assert "the next `kfaclab sweep` retries them" in out
