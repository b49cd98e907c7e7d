"""A sweep rides out a PostgreSQL restart (issue 29, F9), and two sweeps creating a new SQLite
file at once both work (F10). The restart test starts its own throwaway server (scripts/
start-postgres.sh with a private folder and port) so that restarting it disturbs no other test."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cli_helpers import REPO, tiny_protocol

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def kfaclab_popen(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def states(url: str, protocol: str) -> list[TrialState]:
    storage = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        found = []
        for s in storage.get_all_studies():
            if s.study_name.startswith(f"{protocol}/"):
                found += [t.state for t in storage.get_all_trials(s._study_id, deepcopy=False)]
        return found
    finally:
        storage.engine.dispose()


@pytest.mark.slow  # a server of its own and a sweep
def test_an_outage_longer_than_the_budget_is_one_line(server: Server, tmp_path: Path) -> None:
    url = server.start()
    config = tiny_protocol(tmp_path)
    text = config.read_text().replace("n_trials = 1", "n_trials = 50")
    config.write_text(text.replace("steps = 2", "steps = 150"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KFACLAB_OUTAGE_SECONDS": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(config), "--storage", url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while complete(url) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    server.pg_ctl("stop", "-m", "fast")  # and it stays down
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("kfaclab: error: storage postgresql://kfaclab@127.0.0.1:"), last
    assert "unreachable for 4 s" in last and "rerun the same command to resume" in last, last
    assert "kfaclab:kfaclab@" not in err  # no password


def complete(url: str) -> int:
    """COMPLETE trials of the protocol 'tiny'; 0 while its tables do not exist yet."""
    try:
        return states(url, "tiny").count(TrialState.COMPLETE)
    except Exception:
        return 0


class Server:
    """A throwaway PostgreSQL server in a private folder on a free port."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.root = root
        self.env = {**os.environ, "PGROOT": str(root), "PGPORT": str(port)}
        self.env["KFACLAB_PG_DB"] = "faults"

    def start(self) -> str:
        """Starts it (creating it the first time); returns its URL."""
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "start-postgres.sh")],
            env=self.env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    def pg_ctl(self, *args: str) -> None:
        cmd = f"'{PG_BIN[-1]}/pg_ctl' -D '{self.root}/data' -w -t 60 {' '.join(args)}"
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", cmd] if os.geteuid() == 0 else None
        # Output to /dev/null, not a pipe: a restarted server keeps its output open for good.
        quiet = subprocess.DEVNULL
        subprocess.run(
            argv or ["bash", "-c", cmd], check=True, timeout=90, stdout=quiet, stderr=quiet
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not PG_BIN:
        pytest.skip("PostgreSQL binaries not installed (scripts/setup.sh --system)")
    # Not under tmp_path: pytest's folders are private to this user, and the server runs as
    # the postgres user when the tests run as root.
    folder = Path(tempfile.mkdtemp(prefix="kfaclab-faults-pg-"))
    folder.chmod(0o755)
    pg = Server(folder / "pg")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a server of its own and a sweep of ~30 s
def test_a_sweep_rides_out_postgres_restarts(server: Server, tmp_path: Path) -> None:
    url = server.start()
    config = tiny_protocol(tmp_path)
    text = config.read_text().replace("n_trials = 1", "n_trials = 12")
    config.write_text(text.replace("steps = 2", "steps = 150"))
    proc = kfaclab_popen("sweep", str(config), "--storage", url, "--workers", "2")
    deadline = time.monotonic() + 180
    while complete(url) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    server.pg_ctl(
        "restart", "-m", "fast", "-l", f"'{server.root}/log'"
    )  # about a second without a server (F9)
    time.sleep(2.0)
    server.pg_ctl("stop", "-m", "fast")  # then an 8 s outage, as turn 3's probe had
    time.sleep(8.0)
    server.start()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "exceeding max length" not in err, err
    final = states(url, "tiny")
    assert final.count(TrialState.COMPLETE) == 12, final
    assert TrialState.RUNNING not in final


def test_storage_creation_on_a_new_sqlite_file_survives_a_race(tmp_path: Path) -> None:
    """Six openers create the tables of one new SQLite file at the same instant (turn 3: one of
    two sweeps died in 3 of 4 runs with "alembic_version.version_num"; Optuna's RDBStorage alone
    fails here for about 2 of 3 openers: "table studies already exists")."""
    from kfaclab.study.storage import StorageSpec, open_storage

    for attempt in range(4):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        barrier = threading.Barrier(6)
        errors: list[str] = []

        def open_it(
            url: str = url, barrier: threading.Barrier = barrier, errors: list[str] = errors
        ) -> None:
            barrier.wait()
            try:
                open_storage(StorageSpec(url), create=True)
            except Exception as exc:  # every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []


@pytest.mark.slow  # two sweeps at once: ~30 s on a loaded 2-core machine
def test_two_sweeps_creating_one_new_sqlite_file_both_finish(tmp_path: Path) -> None:
    config = tiny_protocol(tmp_path)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    procs = [kfaclab_popen("sweep", str(config), "--storage", url) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "alembic" not in err
    storage = optuna.storages.RDBStorage(url)
    (cell,) = [s for s in storage.get_all_studies() if s.study_name == "tiny/sgd"]
    assert [t.state for t in storage.get_all_trials(cell._study_id)] == [TrialState.COMPLETE]
