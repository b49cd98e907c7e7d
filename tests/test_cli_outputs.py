"""Writing results: a finished run is never lost to an output problem found at the end, and the
report never writes through a symbolic link planted in its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli_helpers import MNIST, REPO, one_line, tiny_protocol
from kfaclab.cli.main import main
from kfaclab.cli.outputs import save_result, write_atomic
from kfaclab.errors import UsageError
from kfaclab.trial_types import TrialResult


def test_result_goes_to_a_fallback_when_its_folder_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    out = tmp_path / "gone" / "r.json"  # its folder does not exist (removed during the run)
    with pytest.raises(UsageError) as info:
        save_result({"value": 1.5}, out, stem="kfaclab-train")
    message = str(info.value)
    assert message.startswith(f"--out: cannot write '{out}' (No such file or directory)")
    saved = Path(message.rsplit("result saved to ", 1)[1])
    assert saved.parent == fallback and saved.name.startswith("kfaclab-train-")
    assert json.loads(saved.read_text()) == {"value": 1.5}


def test_train_keeps_its_result_when_out_breaks_during_the_run(tmp_path: Path) -> None:
    """The real command: --out's folder passes the check, then is replaced by a file while the
    trial trains; the result lands in the fallback file, named on one line, exit 2."""
    folder, fallback = tmp_path / "results", tmp_path / "tmp"
    fallback.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(fallback)}
    argv = ["train", "--steps", "400", "--data-dir", str(MNIST), "--no-progress",
            "--histogram-steps", "", "--out", str(folder / "r.json")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not folder.is_dir():  # the check creates it, before the data loads
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    folder.rmdir()
    folder.write_text("now a file")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kfaclab: error: --out: cannot write '{folder / 'r.json'}'")
    saved = Path(err.strip().rsplit("result saved to ", 1)[1])
    assert saved.parent == fallback
    result = TrialResult.from_dict(json.loads(saved.read_text()))
    assert result.steps_done == 400 and result.status == "ok"


def test_write_atomic_replaces_a_planted_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "report.md"
    link.symlink_to(victim)
    write_atomic(link, "new\n")
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "new\n"


@pytest.mark.parametrize("name", ["report.md", "report.html", "reruns.json", "figures"])
def test_report_refuses_a_symlink_where_it_writes(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(sweep)]) == 0
    capsys.readouterr()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    report = tmp_path / "report"
    report.mkdir()
    (report / name).symlink_to(victim)
    err = one_line(capsys, ["report", str(sweep), "--out", str(report), "--no-reruns"])
    assert f"must not hold a symbolic link where the report writes, got '{report / name}'" in err
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in report.iterdir()) == [name]  # nothing else written


def test_report_refuses_a_symlink_among_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(sweep)]) == 0
    capsys.readouterr()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (sweep / "figures").mkdir()
    (sweep / "figures" / "learning_curves.png").symlink_to(victim)
    err = one_line(capsys, ["report", str(sweep), "--no-reruns"])
    assert "learning_curves.png" in err and victim.read_text() == "precious\n"


def test_report_into_a_git_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(sweep)]) == 0
    capsys.readouterr()
    git = tmp_path / "repo" / ".git"
    git.mkdir(parents=True)
    for out in (git, git / "objects" / "report"):
        err = one_line(capsys, ["report", str(sweep), "--out", str(out), "--no-reruns"])
        assert "--out must not be inside a .git folder" in err
    assert list(git.iterdir()) == []
