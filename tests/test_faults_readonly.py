"""Read-only places (an archive, a colleague's folder): one line, never a traceback, and a
read-only sweep whose journal ends in a torn write can still be read (issue 29, F13)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import REPO, tiny_protocol
from kfaclab.cli.main import main

# Root ignores permission bits; without these capabilities it is bound by them like anyone.
_NO_OVERRIDE = [
    "setpriv", "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]  # fmt: skip


def as_reader(*argv: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permission bits cannot be tested")
        prefix = _NO_OVERRIDE
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kfaclab.cli.main", *argv],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    assert main(["sweep", str(tiny_protocol(root)), "--out", str(root / "s")]) == 0
    return root / "s"


def read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_a_read_only_sweep_with_a_torn_tail_is_still_read(swept: Path, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    journal = folder / "studies.journal"
    size = journal.stat().st_size
    os.truncate(journal, size - 9)  # a record cut by a kill or a full disk
    read_only(folder)
    try:
        done = as_reader("status", str(folder))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "torn write and cannot be healed" in done.stderr and "sgd" in done.stdout
        done = as_reader("export", str(folder), str(tmp_path / "e.csv"))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert journal.stat().st_size == size - 9  # untouched
    finally:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_a_read_only_artifacts_folder_stops_the_sweep_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "ra"
    (out / "artifacts").mkdir(parents=True)
    (out / "artifacts").chmod(0o555)
    try:
        done = as_reader("sweep", str(tiny_protocol(tmp_path)), "--out", str(out))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("kfaclab: error: cannot write") and "Permission denied" in last
    finally:
        (out / "artifacts").chmod(0o755)
