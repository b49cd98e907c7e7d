"""`kfaclab data verify`: one line per file; exit 0 if all check out, 1 if not, 2 on bad input."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kfaclab.cli.main import main
from kfaclab.data import clear_cache

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    clear_cache()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["data", "verify", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_all_mnist_files_check_out(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "--dataset", "mnist", "--data-dir", str(mnist_dir))
    assert code == 0
    assert len(lines) == 4
    for line, name in zip(lines, MNIST_FILES, strict=True):
        assert line.split() == ["ok", f"mnist/{name}", str(mnist_dir.resolve() / f"{name}.gz")]
    assert "4 of 4 files ok" in err


def test_a_damaged_file_fails_with_one_line(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "d"
    shutil.copytree(mnist_dir, folder)
    os.chmod(folder, 0o755)  # the shared copy is read-only
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    os.chmod(bad, 0o644)
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    bad.write_bytes(gzip.compress(bytes(raw)))

    code, lines, err = run(capsys, "--dataset", "mnist", "--data-dir", str(folder))
    assert code == 1
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "FAILED"]
    assert "mnist/t10k-labels-idx1-ubyte" in lines[3]
    assert f"{bad}: sha256 mismatch, expected ff7bcfd4" in lines[3]
    assert "Traceback" not in err and "3 of 4 files ok; 1 failed" in err


def test_missing_files_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert code == 1
    assert len(lines) == 4 and all(line.startswith("FAILED") for line in lines)
    assert all("not found in" in line and str(tmp_path) in line for line in lines)


def test_bad_data_dir_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "--data-dir", str(tmp_path / "nope"))
    assert code == 2 and lines == []
    assert (
        err.strip()
        == f"kfaclab: error: data_dir must be an existing folder, got '{tmp_path / 'nope'}'"
    )


def test_unknown_dataset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", "verify", "--dataset", "cifar"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_as_a_subprocess(mnist_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    argv = [
        sys.executable,
        "-m",
        "kfaclab.cli.main",
        "data",
        "verify",
        "--data-dir",
        str(mnist_dir),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    # --dataset all also searches Fashion-MNIST, found only where Debian's package is installed.
    fashion_present = Path("/usr/share/datasets/fashion-mnist").is_dir()
    assert done.returncode == (0 if fashion_present else 1), done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 8
    assert all(line.startswith("ok ") for line in lines[:4])
    assert "Traceback" not in done.stderr
