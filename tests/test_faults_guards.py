"""Every command that writes refuses the files a study owns, and a sweep refuses a symlinked
journal (issue 29, F6 and F22)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from cli_helpers import MNIST, one_line, tiny_protocol
from kfaclab.cli.main import main


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    assert main(["sweep", str(tiny_protocol(root)), "--out", str(root / "s")]) == 0
    return root / "s"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_and_train_refuse_every_file_a_study_owns(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    (record,) = (folder / "artifacts").iterdir()
    db = tmp_path / "other.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    renamed = tmp_path / "backup.log"  # a journal under another name: known by its content
    shutil.copy(folder / "studies.journal", renamed)
    before = snapshot(tmp_path)
    targets = [
        record,
        folder / ".locks" / "x.csv",
        folder / "studies.journal",
        folder / "studies.journal.lock",
        db,
        renamed,
    ]
    for target in targets:
        err = one_line(capsys, ["export", str(folder), str(target)])
        assert "must not be" in err and str(target) in err, err
        train = ["train", "--steps", "1", "--data-dir", str(MNIST), "--out", str(target)]
        err = one_line(capsys, train)
        assert "must not be" in err, err
    assert snapshot(tmp_path) == before  # nothing was touched
    assert main(["status", str(folder)]) == 0


@pytest.mark.parametrize("kind", ["dangling", "to an empty file"])
def test_a_sweep_refuses_a_symlinked_journal(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere.journal"
    if kind != "dangling":
        elsewhere.touch()
    (out / "studies.journal").symlink_to(elsewhere)
    err = one_line(capsys, ["sweep", str(tiny_protocol(tmp_path)), "--out", str(out)])
    assert "must be a regular file in its folder, got a symbolic link" in err, err
    assert elsewhere.exists() == (kind != "dangling")
    assert not elsewhere.exists() or elsewhere.stat().st_size == 0
