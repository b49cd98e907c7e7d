"""kfaclab.data: the IDX reader, verified loading of real MNIST / Fashion-MNIST, and downloads
from a real HTTP server on 127.0.0.1 (failing, flaky, truncating and corrupt mirrors)."""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import shutil
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from kfaclab.data import (
    DATASETS,
    clear_cache,
    download_file,
    get_spec,
    load_dataset,
    parse_idx,
    read_idx,
    verify_dataset,
)
from kfaclab.errors import UsageError

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An independent IDX writer: the reader must agree with the format, not with itself."""
    code = IDX_CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Never read or fill the real user cache; never keep 200 MB datasets between tests.
    cache_root = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    clear_cache()
    yield cache_root
    clear_cache()


# ----------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 2)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...], suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    back = read_idx(write_idx(tmp_path / f"x-idx{suffix}", array))
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_not_suffix(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


def one_line_error(match: str, call: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(UsageError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_raw_file(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-10])
    msg = one_line_error("truncated", read_idx, path)
    assert msg.startswith(
        f"{path}: truncated: header says shape (4, 5, 5), 100 data bytes, found 90"
    )


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(idx_bytes(np.zeros((4, 5, 5), np.uint8))[:9])
    assert one_line_error("truncated", read_idx, path).startswith(f"{path}: truncated")


def test_truncated_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))[:-20])
    assert one_line_error("truncated gzip", read_idx, path).startswith(f"{path}: ")


def test_trailing_bytes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"xx")
    assert "2 unexpected bytes after the data" in one_line_error("unexpected", read_idx, path)


TWO_ZEROS = "an IDX file starts with two zero bytes"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"\x12\x34\x08\x01", f"wrong magic number 0x12340801, {TWO_ZEROS}"),
        (b"\x00\x00\x07\x01", "wrong magic number 0x00000701, unknown dtype code 0x07"),
        (b"\x00\x00\x08\x00", "wrong magic number 0x00000800, zero dimensions"),
    ],
)
def test_wrong_magic_number(tmp_path: Path, header: bytes, problem: str) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(header + struct.pack(">I", 3) + b"abc"))
    assert one_line_error("wrong magic", read_idx, path) == f"{path}: {problem}"


def test_parse_idx_names_its_source() -> None:
    assert one_line_error("truncated", parse_idx, b"\x00\x00", "somewhere.idx").startswith(
        "somewhere.idx: truncated"
    )


# ----------------------------------------------------------------------------- real datasets


def test_real_mnist(mnist_dir: Path) -> None:
    ds = load_dataset("mnist", mnist_dir)
    assert ds.name == "mnist"
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_x.device.type == "cpu"
    assert ds.train_x.min().item() == 0.0 and ds.train_x.max().item() == 1.0
    # Pixels are k/255 exactly as float32 would round them.
    assert torch.equal(ds.test_x[0], (ds.test_x[0] * 255).round() / 255)
    assert torch.bincount(ds.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.test_y).tolist() == MNIST_TEST_COUNTS
    # Every file was found in mnist_dir and its decompressed sha256 matched.
    reports = verify_dataset("mnist", mnist_dir)
    assert [r.ok for r in reports] == [True] * 4
    assert {r.path.parent for r in reports if r.path} == {mnist_dir.resolve()}


def test_second_load_is_the_cached_object(mnist_dir: Path) -> None:
    first = load_dataset("mnist", mnist_dir)
    assert load_dataset("MNIST", str(mnist_dir), device="cpu", dtype=torch.float32) is first
    double = load_dataset("mnist", mnist_dir, dtype="float64")
    assert double is not first and double.train_x.dtype == torch.float64
    torch.testing.assert_close(double.test_x.float(), first.test_x)


def test_fashion_mnist_from_the_debian_package() -> None:
    if not FASHION_SYSTEM_DIR.is_dir():
        pytest.skip(f"{FASHION_SYSTEM_DIR} absent (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.name == "fashion-mnist"
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_x.min().item() >= 0.0 and ds.train_x.max().item() <= 1.0
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


def copy_mnist(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for file in get_spec("mnist").files:
        shutil.copyfile(src / f"{file.name}.gz", dst / f"{file.name}.gz")
    return dst


def test_wrong_checksum_names_the_file(mnist_dir: Path, tmp_path: Path) -> None:
    folder = copy_mnist(mnist_dir, tmp_path / "d")
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    labels[0] = (labels[0] + 1) % 10  # still a perfectly valid IDX file, just not MNIST's
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(folder / "train-labels-idx1-ubyte", labels)
    expected = get_spec("mnist").train_labels.sha256
    msg = one_line_error("sha256 mismatch", load_dataset, "mnist", folder)
    assert msg.startswith(
        f"{folder / 'train-labels-idx1-ubyte'}: sha256 mismatch, expected {expected}, got "
    )


def test_truncated_dataset_file(mnist_dir: Path, tmp_path: Path) -> None:
    folder = copy_mnist(mnist_dir, tmp_path / "d")
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    assert one_line_error("truncated", load_dataset, "mnist", folder).startswith(f"{path}: ")


def test_missing_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = one_line_error("not found", load_dataset, "mnist", empty, download=False)
    assert msg.startswith("train-images-idx3-ubyte: not found in ") and str(empty) in msg


def test_bad_arguments(tmp_path: Path) -> None:
    assert one_line_error("dataset must be one of", load_dataset, "cifar") == (
        "dataset must be one of 'mnist', 'fashion-mnist', got 'cifar'"
    )
    one_line_error("data_dir must be an existing folder", load_dataset, "mnist", tmp_path / "no")
    one_line_error(
        "dtype must be a floating-point", load_dataset, "mnist", None, "cpu", torch.int64
    )
    one_line_error("device must be", load_dataset, "mnist", None, "nonsense")


def test_another_datasets_folder_is_passed_over(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same file names, other content: a folder of MNIST is not a damaged Fashion-MNIST.
    spec = dataclasses.replace(DATASETS["fashion-mnist"], system_dirs=())
    monkeypatch.setitem(DATASETS, "fashion-mnist", spec)
    reports = verify_dataset("fashion-mnist", mnist_dir)
    assert not any(r.ok for r in reports)
    assert all("not found in" in (r.problem or "") for r in reports)


def test_dataset_subfolder_of_data_dir(mnist_dir: Path, tmp_path: Path) -> None:
    copy_mnist(mnist_dir, tmp_path / "root" / "mnist")
    reports = verify_dataset("mnist", tmp_path / "root")
    assert all(r.ok and r.path and r.path.parent.name == "mnist" for r in reports)


# ----------------------------------------------------------------------------- downloads


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """/<mode>/<file>.gz with mode: good, missing (404), error (500), flaky (503 on the first
    request, then good), short (announces the full length, sends half), corrupt (valid gzip of
    IDX bytes with one byte changed)."""

    files: ClassVar[dict[str, bytes]] = {}
    hits: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        _, mode, name = self.path.split("/", 2)
        body = self.files.get(name)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode == "error" or (mode == "flaky" and self.hits[self.path] == 1):
            self.send_error(500 if mode == "error" else 503)
            return
        if mode == "corrupt":
            raw = bytearray(gzip.decompress(body))
            raw[-1] ^= 0x01
            body = gzip.compress(bytes(raw), compresslevel=1)  # level 9 takes ~20 s on 47 MB
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "short" else body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(mnist_dir: Path) -> Iterator[str]:
    MirrorHandler.files = {p.name: p.read_bytes() for p in mnist_dir.glob("*.gz")}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


LABELS = get_spec("mnist").train_labels
LABELS_GZ = f"{LABELS.name}.gz"


def hits(mode: str) -> int:
    return MirrorHandler.hits[f"/{mode}/{LABELS_GZ}"]


def test_download_falls_back_to_the_next_mirror(mirror: str, _isolated_cache: Path) -> None:
    MirrorHandler.hits.clear()
    ds = load_dataset("mnist", mirrors=[f"{mirror}/missing/", f"{mirror}/good/"])
    assert torch.bincount(ds.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert hits("missing") == 1  # a 404 is not retried
    cached = _isolated_cache / "kfaclab" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(MirrorHandler.files)
    # The cache now serves, verified, without any network.
    clear_cache()
    assert load_dataset("mnist", download=False).train_x.shape == (60000, 784)
    assert all(r.ok and r.path and r.path.parent == cached for r in verify_dataset("mnist"))


def test_transient_failures_are_retried(mirror: str, tmp_path: Path) -> None:
    MirrorHandler.hits.clear()
    path = download_file(LABELS, tmp_path, [f"{mirror}/flaky/"], backoff_s=0)
    assert hits("flaky") == 2
    assert path == tmp_path / LABELS_GZ and read_idx(path).shape == (60000,)

    MirrorHandler.hits.clear()
    download_file(
        LABELS, tmp_path, [f"{mirror}/error/", f"{mirror}/good/"], attempts=3, backoff_s=0
    )
    assert (hits("error"), hits("good")) == (3, 1)


def test_short_transfer_is_retried_then_reported(mirror: str, tmp_path: Path) -> None:
    MirrorHandler.hits.clear()
    with pytest.raises(UsageError) as info:
        download_file(LABELS, tmp_path, [f"{mirror}/short/"], attempts=2, backoff_s=0)
    assert hits("short") == 2
    assert "connection closed after" in str(info.value) and "after 2 attempts" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_mirror_is_rejected_and_nothing_is_cached(mirror: str, tmp_path: Path) -> None:
    MirrorHandler.hits.clear()
    with pytest.raises(UsageError) as info:
        download_file(LABELS, tmp_path, [f"{mirror}/corrupt/"], backoff_s=0)
    message = str(info.value)
    assert message.startswith(f"{LABELS_GZ}: download failed ({mirror}/corrupt/{LABELS_GZ}: ")
    assert f"sha256 mismatch, expected {LABELS.sha256}" in message and "\n" not in message
    assert hits("corrupt") == 1  # bad bytes are the mirror's fault, not bad luck: no retry
    assert list(tmp_path.iterdir()) == []

    path = download_file(LABELS, tmp_path, [f"{mirror}/corrupt/", f"{mirror}/good/"], backoff_s=0)
    assert [p.name for p in tmp_path.iterdir()] == [LABELS_GZ]
    assert read_idx(path).shape == (60000,)


def test_load_fails_cleanly_when_every_mirror_is_bad(mirror: str, _isolated_cache: Path) -> None:
    msg = one_line_error(
        "download failed",
        load_dataset,
        "mnist",
        mirrors=[f"{mirror}/missing/", f"{mirror}/corrupt/"],
    )
    assert (
        msg.startswith("train-images-idx3-ubyte.gz: download failed") and "not found locally" in msg
    )
    cached = _isolated_cache / "kfaclab" / "mnist"
    assert not cached.exists() or list(cached.iterdir()) == []
