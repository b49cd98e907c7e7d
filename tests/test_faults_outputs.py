"""Every file kfaclab writes survives a kill or a full disk (issue 29, points 1 and 9's temp
files): real SIGKILLs and a real file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets) on real
`kfaclab` processes; the previous file must come through byte for byte."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import REPO, tiny_protocol
from kfaclab import atomic
from kfaclab.cli.main import main
from kfaclab.cli.outputs import save_result


def kfaclab(*args: str, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """`kfaclab ARGS` in a new process, under a file-size limit of ``fsize`` bytes if given."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False, preexec_fn=limit,
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    assert main(["sweep", str(tiny_protocol(root)), "--out", str(root / "s")]) == 0
    return root / "s"


def test_export_under_a_file_size_limit_keeps_the_previous_export(
    swept: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e.csv"
    assert kfaclab("export", str(swept), str(out)).returncode == 0
    before = snapshot(tmp_path)
    assert len(before) == 2 and all(before.values())
    done = kfaclab("export", str(swept), str(out), fsize=64)  # smaller than e.csv
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "File too large" in done.stderr, done.stderr
    assert "previous file is kept" in done.stderr
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.slow  # three reports: about 20 s on a loaded 2-core machine
def test_report_under_a_file_size_limit_keeps_the_previous_report(
    swept: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    assert kfaclab("report", str(swept), "--out", str(out), "--no-reruns").returncode == 0
    before = snapshot(out)
    assert {"report.html", "report.md", "claims.json"} <= set(before)
    # 20 kB: the first figure (a PNG of ~20-30 kB) is cut, as turn 2's `ulimit -f` cut report.html.
    for fsize in (20_000, 60_000):
        done = kfaclab("report", str(swept), "--out", str(out), "--no-reruns", fsize=fsize)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
        assert "File too large" in done.stderr
        after = snapshot(out)
        for name in ("report.html", "report.md", "claims.json"):
            assert after[name] == before[name], name
        # A figure is the old one or a whole new one (SVG ids differ between runs).
        assert set(after) == set(before) and not leftovers(out)
        for name, data in after.items():
            if name.endswith(".png"):
                assert data.endswith(b"IEND\xaeB`\x82"), name
            if name.endswith(".svg"):
                assert data.endswith(b"</svg>\n"), name


_WRITER = """
import sys, time
from kfaclab import atomic
with atomic.open_atomic(sys.argv[1], "wb") as handle:
    handle.write(b"N" * 100_000)
    handle.flush()
    print("half", flush=True)
    time.sleep(60)
    handle.write(b"N" * 100_000)
"""


def test_sigkill_in_the_middle_of_a_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_bytes(b"OLD" * 1000)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target)], env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"half\n"
        (temp,) = leftovers(tmp_path)  # 100 kB of the new file are on disk, under a fresh name
        assert temp.stat().st_size == 100_000
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert target.read_bytes() == b"OLD" * 1000
        temp.unlink()  # what a kill leaves: a hidden temporary file, never a half target


@pytest.mark.slow  # six exports killed at 0.5-3 s: about 15 s
def test_sigkill_loop_on_export_never_leaves_a_cut_file(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.csv"
    assert kfaclab("export", str(swept), str(out)).returncode == 0
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "kfaclab.cli.main", "export", str(swept), str(out)]
    killed = 0
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        # Same study, same export: whatever moment the kill came, the files are the whole export.
        files = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(".")}
        assert files == before
    assert killed >= 1


def test_planted_links_at_temporary_names_are_never_followed(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM")
    for name in ("reruns.json.tmp", "claims.json.tmp", "report.md.tmp", "report.html.part"):
        (out / name).symlink_to(victim)
    done = kfaclab("report", str(swept), "--out", str(out), "--no-reruns")
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "VICTIM"
    assert not (out / "claims.json").is_symlink() and (out / "claims.json").stat().st_size > 0


def test_a_link_at_a_fresh_temporary_name_is_refused_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM")
    target = tmp_path / "out.json"
    real = atomic.temp_name
    planted = tmp_path / ".out.json.planted.tmp"
    planted.symlink_to(victim)
    # The one way a link could sit at the name chosen: the same random name twice. It is
    # skipped (O_EXCL|O_NOFOLLOW fails on it) and another name is drawn.
    names = iter([planted, *(real(target) for _ in range(3))])
    monkeypatch.setattr(atomic, "temp_name", lambda path: next(names))
    atomic.write_text(target, "{}")
    assert victim.read_text() == "VICTIM" and target.read_text() == "{}"


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_result({"a": 1}, tmp_path / "r.json")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # was 0600 (mkstemp)


def test_several_files_are_replaced_all_or_none(tmp_path: Path) -> None:
    target = tmp_path / "x.md"
    target.write_text("previous")
    # The second file cannot be written (its folder is missing): the first, already complete
    # under its temporary name, must not replace its previous version either (report.md and
    # report.html from two different runs would disagree).
    missing = tmp_path / "no" / "such" / "x.html"
    with pytest.raises(atomic.OutputError, match=r"cannot write .*x\.html.*nothing was written"):
        atomic.write_many({target: b"new", missing: b"x"})
    assert target.read_text() == "previous" and not leftovers(tmp_path)
