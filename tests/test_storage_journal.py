"""A journal that survives a torn write, and journals that are not journals at all.

The journals here are real: written by a real sweep (a subprocess, so its workers are dead
afterwards, as after a crash), then cut short the way a crash or a full disk cuts them, or
filled by a real ``ulimit -f`` on a real ``kfaclab sweep``. Afterwards status, export, report
and the next sweep must all work, every complete record must be kept, and the torn bytes must
be in the file the one-line announcement names.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kfaclab.cli.main import main
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import JournalFolder
from kfaclab.study.storage.journal_check import parse_record
from test_sweep import assert_exact, fake_trial, protocol

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.toml"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
N_TRIALS = 2  # per cell, three cells


@pytest.fixture(scope="module")
def finished_journal(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a finished sweep's journal, written by a process that has exited."""
    out = tmp_path_factory.mktemp("finished")
    script = (
        "import io; from pathlib import Path; from test_sweep import fake_trial, protocol; "
        "from kfaclab.study.runner import run_sweep; "
        "from kfaclab.study.storage import JournalFolder; "
        f"raise SystemExit(run_sweep(protocol(n_trials={N_TRIALS}), "
        f"JournalFolder(Path({str(out)!r})), trial_fn=fake_trial, stream=io.StringIO()))"
    )
    subprocess.run([sys.executable, "-c", script], env=ENV, check=True, timeout=300)
    return (out / "studies.journal").read_bytes()


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def a_copy(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "studies.journal").write_bytes(data)
    return folder


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def torn_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("studies.journal.torn-*"))


@pytest.mark.parametrize("keep", [1, 11, 40, -1])
def test_torn_tail_is_moved_aside_and_every_complete_record_kept(
    finished_journal: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    """The last record cut after ``keep`` bytes (-1: all but its last two bytes)."""
    complete = lines_of(finished_journal)[:-1]
    last = lines_of(finished_journal)[-1]
    torn = last[:keep] if keep > 0 else last[:-2]
    folder = a_copy(tmp_path / "out", b"".join(complete) + torn)
    code, out, err = run_cli(["status", str(folder)], capsys)
    assert code == 0, err
    [aside] = torn_files(folder)
    assert err.count("\n") == 1 and "torn write" in err and str(aside) in err
    assert aside.read_bytes() == torn
    assert (folder / "studies.journal").read_bytes() == b"".join(complete)
    assert "smoke" not in out and "fake" in out  # the table of the stored protocol


def test_after_a_torn_tail_status_export_report_and_sweep_all_work(
    finished_journal: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last record is the final trial's COMPLETE: losing it leaves that trial RUNNING with
    a dead worker, which status shows as stale and the next sweep retries."""
    last = lines_of(finished_journal)[-1]
    folder = a_copy(tmp_path / "out", finished_journal[: -len(last) // 2])
    code, out, err = run_cli(["status", str(folder)], capsys)
    assert code == 0 and "torn write" in err
    header, *rows = out.splitlines()[1:]
    assert "stale" in header.split()
    cols = header.split()
    total = next(r.split() for r in rows if r.startswith("all"))
    # "all" row: done/total, running, stale (no diverged column value on that row)
    assert total[1] == f"{3 * N_TRIALS - 1}/{3 * N_TRIALS}"
    assert total[2:4] == ["0", "1"], (cols, total)
    code, _, err = run_cli(["export", str(folder), str(tmp_path / "t.csv")], capsys)
    assert code == 0 and err == ""  # healed once, announced once
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + 3 * N_TRIALS
    code, _, err = run_cli(
        ["report", str(folder), "--no-reruns", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 0, err
    p = protocol(n_trials=N_TRIALS)
    assert run_sweep(p, JournalFolder(folder), trial_fn=fake_trial, stream=io.StringIO()) == 0
    assert_exact(folder, p)
    code, out, _ = run_cli(["status", str(folder)], capsys)
    assert code == 0 and "stale" not in out


def test_a_record_missing_only_its_newline_is_completed(
    finished_journal: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = a_copy(tmp_path / "out", finished_journal[:-1])
    code, _, err = run_cli(["status", str(folder)], capsys)
    assert code == 0 and err.count("\n") == 1 and "completed it" in err
    assert (folder / "studies.journal").read_bytes() == finished_journal
    assert torn_files(folder) == []


def test_a_torn_write_glued_to_the_next_record_keeps_the_record(
    finished_journal: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an unhealed torn write becomes after one more append (by kfaclab before this fix,
    or by a worker that was running when another one crashed)."""
    *complete, last = lines_of(finished_journal)
    fragment = last[:30]
    folder = a_copy(tmp_path / "out", b"".join(complete) + fragment + last)
    code, _, err = run_cli(["status", str(folder)], capsys)
    assert code == 0 and err.count("\n") == 1 and "glued" in err
    assert (folder / "studies.journal").read_bytes() == finished_journal
    [aside] = torn_files(folder)
    assert aside.read_bytes() == fragment and str(aside) in err


def test_a_worker_appending_after_another_ones_torn_write_heals_it_first(
    finished_journal: bytes, tmp_path: Path
) -> None:
    """A journal opened while sound, torn afterwards by another process: the next append moves
    the torn tail aside instead of gluing the record to it."""
    folder = a_copy(tmp_path / "out", finished_journal)
    storage = JournalFolder(folder).open(create=False)
    torn = b'{"op_code":5,"worker_id":"x","trial_id":0,"user_att'
    with open(folder / "studies.journal", "ab") as handle:
        handle.write(torn)
    study_id = storage.get_all_studies()[0]._study_id
    storage.set_study_user_attr(study_id, "after", 1)
    data = (folder / "studies.journal").read_bytes()
    assert data.startswith(finished_journal) and data.endswith(b"\n")
    assert all(parse_record(line) is not None for line in lines_of(data))
    [aside] = torn_files(folder)
    assert aside.read_bytes() == torn
    reopened = JournalFolder(folder).open(create=False)
    assert reopened.get_study_user_attrs(study_id)["after"] == 1


def test_damage_further_up_is_refused_then_repaired_by_the_named_command(
    finished_journal: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(finished_journal)
    junk = b"\x00\xff not a record \x13\n"
    glued = lines[12][:25]  # a torn fragment glued to line 13
    damaged = b"".join([*lines[:5], junk, *lines[5:12], glued, *lines[12:]])
    folder = a_copy(tmp_path / "out", damaged)
    journal = folder / "studies.journal"
    for command in (["status", str(folder)], ["export", str(folder), str(tmp_path / "x.csv")]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.count("\n") == 1
        assert f"{journal} is damaged at line 6" in err
        repair = re.search(r"`(python -m kfaclab\.study\.storage\.repair [^`]+)`", err)
        assert repair is not None
    assert journal.read_bytes() == damaged  # refusing changes nothing
    assert not (tmp_path / "x.csv").exists()
    assert repair is not None
    done = subprocess.run(
        [sys.executable, *repair.group(1).split()[1:]], env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert journal.read_bytes() == finished_journal
    [backup] = folder.glob("studies.journal.before-repair-*")
    [moved] = folder.glob("studies.journal.damaged-*")
    assert backup.read_bytes() == damaged and moved.read_bytes() == junk + glued + b"\n"
    assert str(moved) in done.stdout and str(backup) in done.stdout
    assert run_cli(["status", str(folder)], capsys)[0] == 0
    again = subprocess.run(
        [sys.executable, *repair.group(1).split()[1:]], env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    assert journal.read_bytes() == finished_journal


@pytest.mark.parametrize(
    "content", [bytes(range(256)) * 8, b"\x00" * 512, b"hello\nworld\n", b"{}\n"]
)
def test_a_journal_of_junk_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    folder = a_copy(tmp_path / "out", content)
    for command in (
        ["status", str(folder)],
        ["export", str(folder), str(tmp_path / "x.csv")],
        ["sweep", str(SMOKE), "--out", str(folder)],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "is not an Optuna journal" in err and str(folder / "studies.journal") in err
    assert (folder / "studies.journal").read_bytes() == content


def test_a_journal_that_is_a_folder_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out" / "studies.journal").mkdir(parents=True)
    for command in (
        ["status", str(tmp_path / "out")],
        ["sweep", str(SMOKE), "--out", str(tmp_path / "out")],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.count("\n") == 1
        assert "is a folder, not a journal file" in err


def test_a_sqlite_url_naming_a_file_that_is_not_a_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    url = f"sqlite:///{path}"
    for command in (
        ["status", "--storage", url],
        ["export", "--storage", url, str(tmp_path / "x.csv")],
        ["sweep", str(SMOKE), "--storage", url],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.count("\n") == 1
        assert f"storage {url} is not a SQLite database" in err
    assert path.read_text() == "not a database\n" * 100
    code, _, err = run_cli(["status", "--storage", f"sqlite:///{tmp_path}"], capsys)
    assert code == 2 and err == (
        f"kfaclab: error: storage sqlite:///{tmp_path} is a folder, not a SQLite database file\n"
    )


def _sweep_under_ulimit(
    out: Path, kib: int, default_sigxfsz: bool
) -> subprocess.CompletedProcess[str]:
    """The real `kfaclab sweep configs/smoke.toml` in a shell with `ulimit -f`. Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG; ``default_sigxfsz`` restores the
    default action, so the kernel kills the process in the middle of the write instead."""
    prelude = (
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); " if default_sigxfsz else ""
    )
    code = f"{prelude}import sys; from kfaclab.cli.main import main; sys.exit(main(sys.argv[1:]))"
    args = " ".join(["sweep", str(SMOKE), "--out", str(out)])
    shell = f'ulimit -f {kib}; exec "{sys.executable}" -c "{code}" {args}'
    return subprocess.run(
        ["bash", "-c", shell], env=ENV, capture_output=True, text=True, timeout=600
    )


def _sound(journal: Path) -> int:
    data = journal.read_bytes()
    assert data.endswith(b"\n")
    assert all(parse_record(line) is not None for line in lines_of(data))
    return len(lines_of(data))


def test_a_sweep_hitting_the_file_size_limit_stops_in_one_line_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    failed = _sweep_under_ulimit(out, 30, default_sigxfsz=False)
    assert failed.returncode == 2, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("kfaclab: error: cannot write to") and "File too large" in last
    assert "Traceback" not in failed.stderr
    journal = out / "studies.journal"
    assert journal.stat().st_size <= 30 * 1024
    kept = _sound(journal)  # the partial record was taken back
    code, out_text, _ = run_cli(["status", str(out)], capsys)
    assert code == 0 and "smoke" in out_text
    rerun = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(SMOKE), "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert _sound(journal) > kept
    assert run_cli(["export", str(out), str(tmp_path / "t.csv")], capsys)[0] == 0


@pytest.mark.slow
def test_a_sweep_killed_mid_write_by_the_file_size_limit_is_recovered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGXFSZ kills the writer inside its append, holding the journal lock: the next command
    waits out Optuna's 30 s grace period for the stale lock, then moves the torn tail aside."""
    out = tmp_path / "out"
    killed = _sweep_under_ulimit(out, 30, default_sigxfsz=True)
    assert killed.returncode == -25 or killed.returncode == 128 + 25, killed.stderr
    journal = out / "studies.journal"
    before = journal.read_bytes()
    assert not before.endswith(b"\n")  # torn
    complete = before[: before.rfind(b"\n") + 1]
    code, _, err = run_cli(["status", str(out)], capsys)
    assert code == 0, err
    [aside] = torn_files(out)
    assert aside.read_bytes() == before[len(complete) :] and str(aside) in err
    assert journal.read_bytes() == complete
    rerun = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(SMOKE), "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    code, _, err = run_cli(["report", str(out), "--no-reruns"], capsys)
    assert code == 0, err
    shutil.rmtree(out / "figures", ignore_errors=True)
