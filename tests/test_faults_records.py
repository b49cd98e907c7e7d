"""Damaged records and side files are skipped and named, never a traceback; compressed inputs
are inflated only as far as they may go (issue 29, points 2 and 3)."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from cli_helpers import REPO, tiny_protocol
from kfaclab.cli.main import main
from kfaclab.data.catalog import DATASETS
from kfaclab.data.idx import idx_size, read_bytes
from kfaclab.errors import UsageError
from kfaclab.gunzip import InflateError, gunzip
from kfaclab.study.records import RECORD_MAX_BYTES

SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def bomb(inflated: int) -> bytes:
    """Gzip that inflates to ``inflated`` zero bytes: one 64 MiB member, repeated (a gzip file
    may hold several members), so the test makes 1 GiB in a fraction of a second."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=1)
    return member * (inflated // (64 << 20))


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    toml = tiny_protocol(root, extra="").read_text().replace("n_trials = 1", "n_trials = 2")
    (root / "two.toml").write_text(toml)
    assert main(["sweep", str(root / "two.toml"), "--out", str(root / "s")]) == 0
    return root / "s"


DAMAGES = {
    "random bytes": lambda: os.urandom(3000),
    "half a gzip": lambda: gzip.compress(os.urandom(4000))[:2000],
    "gzip of non-JSON": lambda: gzip.compress(b"{not json"),
    "gzip of a wrong shape": lambda: gzip.compress(b'{"config": 5, "step_losses": 1}'),
    "gzip of a list": lambda: gzip.compress(b"[1, 2]"),
    "empty file": lambda: b"",
    "not UTF-8": lambda: gzip.compress(b"\xff\xfe{}"),
}


def damaged_copy(swept: Path, tmp_path: Path, data: bytes | None) -> tuple[Path, str]:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    victim = sorted((folder / "artifacts").iterdir())[0]
    if data is None:
        victim.unlink()
        victim.symlink_to("/etc/passwd")
    else:
        victim.write_bytes(data)
    return folder, victim.name


@pytest.mark.parametrize("damage", [*DAMAGES, "symlink to /etc/passwd"])
def test_a_damaged_record_is_skipped_and_named_by_export_report_and_claims(
    swept: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = DAMAGES[damage]() if damage in DAMAGES else None
    folder, artifact = damaged_copy(swept, tmp_path, data)
    commands = [
        ["export", str(folder), str(tmp_path / "e.csv")],
        ["claims", str(folder)],
    ]
    if damage == "random bytes":  # the report's figures take seconds: one damage is enough
        commands.append(["report", str(folder), "--out", str(tmp_path / "r"), "--no-reruns"])
    for argv in commands:
        assert main(argv) == 0, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        named = [line for line in err.splitlines() if "damaged record" in line]
        assert len(named) == 1 and artifact in named[0] and "sgd: trial" in named[0], err
    rows = (tmp_path / "e.csv").read_text().splitlines()
    assert len(rows) == 3  # both trials are listed; the damaged one without its accuracy
    curves = (tmp_path / "e-curves.csv").read_text().splitlines()
    assert len(curves) == 1 + 2  # the intact trial's two steps only


# The child's peak memory, measured from a small intermediary: a child forked straight from pytest
# inherits pytest's own peak (Linux keeps the pre-exec high-water mark in ru_maxrss), which late
# in the full suite is 1-2 GB and says nothing about the command under test.
_MEASURE = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, ru = os.wait4(p.pid, 0)\n"
    "sys.stderr.write(f'\\nMAXRSS_KB {ru.ru_maxrss}\\n')\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in KiB) of ``argv`` run as a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], env=env, capture_output=True, text=True
    )
    err, _, tail = proc.stderr.rpartition("\nMAXRSS_KB ")
    return proc.returncode, proc.stdout, err, int(tail.split()[0])


def test_a_record_bomb_stops_at_the_documented_cap(swept: Path, tmp_path: Path) -> None:
    folder, artifact = damaged_copy(swept, tmp_path, bomb(1 << 30))  # 1 GiB inflated
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "kfaclab.cli.main", "export", str(folder), str(tmp_path / "e")]
    code, _, err, rss_kb = run_measured(argv, env)
    assert code == 0, err
    assert f"inflates to more than {RECORD_MAX_BYTES} bytes" in err and artifact in err
    # Python, torch and the cap (128 MiB) fit well under 1 GiB; inflating the bomb whole took
    # 2.4 GB (turn 3's probe, F5).
    assert rss_kb * 1024 < (1 << 30) - (128 << 20), rss_kb


def test_an_idx_bomb_stops_at_the_files_expected_size(tmp_path: Path) -> None:
    spec = DATASETS["mnist"].train_labels
    expected = idx_size(spec.shape)
    path = tmp_path / f"{spec.name}.gz"
    path.write_bytes(bomb(1 << 30))
    with pytest.raises(UsageError, match=f"inflates to more than the {expected} bytes expected"):
        read_bytes(path, limit=expected)
    # The real file, compressed, reads in full under the same limit: the limit is exact.
    real = SHARED_MNIST / f"{spec.name}.gz"
    if real.is_file():
        assert len(read_bytes(real, limit=expected)) == expected
        with pytest.raises(UsageError, match="inflates to more than"):
            read_bytes(real, limit=expected - 1)


def test_data_verify_on_an_idx_bomb_is_one_line_and_bounded(tmp_path: Path) -> None:
    for name in os.listdir(SHARED_MNIST):
        if name.endswith(".gz"):
            shutil.copy(SHARED_MNIST / name, tmp_path / name)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bomb(1 << 30))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "kfaclab.cli.main", "data", "verify", "--data-dir", str(tmp_path)]
    code, out, err, rss_kb = run_measured(argv, env)
    assert code != 0 and "Traceback" not in err + out, err
    assert "train-images-idx3-ubyte.gz: inflates to more than the 47040016 bytes" in out, out
    assert rss_kb * 1024 < (1 << 30), rss_kb  # was 4.5 GB for a 2 GiB bomb


def test_gunzip_refuses_what_gzip_refuses_and_reads_what_it_reads() -> None:
    payload = os.urandom(300_000)
    for data in (b"", b"x", payload):
        z = gzip.compress(data)
        assert gunzip(z, len(data)) == gzip.decompress(z)
        assert gunzip(z + gzip.compress(b"!") + b"\0" * 7, len(data) + 1) == data + b"!"
        with pytest.raises(InflateError, match="cut short"):
            gunzip(z[:-5], len(data))
    with pytest.raises(InflateError, match="more than 299999"):
        gunzip(gzip.compress(payload), len(payload) - 1)
    for junk in (b"", b"{not gzip", os.urandom(100)):
        with pytest.raises(InflateError):
            gunzip(junk, 100)


def test_a_damaged_claims_json_is_refused_in_one_line_with_the_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ("{not json", '{"headline": 5}', "[]", ""):
        (tmp_path / "claims.json").write_text(text)
        code = main(["claims", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "claims.json is damaged" in err and "kfaclab report" in err


def test_a_damaged_reruns_json_is_named_and_remade(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "reruns.json").write_text('{"x": {"values": 5}}')
    assert main(["claims", str(swept)]) == 0  # no reruns.json there: the baseline
    capsys.readouterr()
    from kfaclab.analysis.summary.reruns import load_reruns

    assert load_reruns(out / "reruns.json") == {}
    err = capsys.readouterr().err
    assert "ignored a damaged" in err and "reruns.json" in err


class _Mirror(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "body", "words"),
    [
        ("train-images-idx3-ubyte.gz", "bomb", "inflates to more than the 47040016 bytes expected"),
        ("train-labels-idx1-ubyte.gz", "endless", "serves more than"),
    ],
)
def test_a_mirror_serving_a_bomb_or_a_huge_file_is_refused_and_bounded(
    tmp_path: Path, name: str, body: str, words: str
) -> None:
    _Mirror.files = {p.name: p.read_bytes() for p in SHARED_MNIST.glob("*.gz")}
    # 1 GiB inflated from 1 MB; or 64 MiB of noise where a 60 kB file belongs.
    _Mirror.files[name] = bomb(1 << 30) if body == "bomb" else os.urandom(64 << 20)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "KFACLAB_MIRRORS": f"http://127.0.0.1:{server.server_address[1]}/",
    }
    code = "from kfaclab.data import ensure_dataset; ensure_dataset('mnist')"
    try:
        status, _, err, rss_kb = run_measured([sys.executable, "-c", code], env)
    finally:
        server.shutdown()
        server.server_close()
    assert status != 0
    assert f"{name}: download failed" in err and words in err, err
    assert rss_kb * 1024 < (1 << 30), rss_kb  # was 4.5 GB (F5, a mirror)
    assert not list((tmp_path / "cache").rglob(name + "*"))  # nothing bad was kept
