"""Without --data-dir a sweep fetches its dataset once, in the parent, and says where it is; its
workers — and any processes that miss the cache at the same moment — never download twice.
Against a real HTTP server on 127.0.0.1 serving the project's MNIST files."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from cli_helpers import MNIST, REPO, tiny_protocol


class Mirror(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    hits: ClassVar[Counter[str]] = Counter()
    lock = threading.Lock()
    delay = 0.0

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        with self.lock:
            self.hits[name] += 1
        time.sleep(self.delay)  # a slow network: concurrent downloads would overlap for sure
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror() -> Iterator[str]:
    Mirror.files = {p.name: p.read_bytes() for p in MNIST.glob("*.gz")}
    assert len(Mirror.files) == 4
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def env_for(mirror: str, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "XDG_CACHE_HOME": str(cache),
        "KFACLAB_MIRRORS": mirror,
    }


def test_processes_missing_the_cache_together_download_once(mirror: str, tmp_path: Path) -> None:
    Mirror.hits.clear()
    Mirror.delay = 1.0
    code = "from kfaclab.data import ensure_dataset; print(ensure_dataset('mnist'))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env_for(mirror, tmp_path / "cache"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    Mirror.delay = 0.0
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == [str(tmp_path / "cache" / "kfaclab" / "mnist")] * 3
    assert sorted(Mirror.hits.values()) == [1, 1, 1, 1]  # each file fetched exactly once


@pytest.mark.slow  # ~30 s: two spawned workers each import torch
def test_sweep_without_data_dir_downloads_once_in_the_parent(mirror: str, tmp_path: Path) -> None:
    Mirror.hits.clear()
    config = tiny_protocol(tmp_path)
    config.write_text(config.read_text().replace(f'data_dir = "{MNIST}"\n', ""))
    config.write_text(config.read_text().replace("n_trials = 1", "n_trials = 2"))
    proc = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(config), "--out",
         str(tmp_path / "out"), "--workers", "2"],
        env=env_for(mirror, tmp_path / "cache"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "cache" / "kfaclab" / "mnist"
    assert proc.stderr.count(f"kfaclab: dataset mnist in {cache}\n") == 1
    assert sorted(Mirror.hits.values()) == [1, 1, 1, 1]


def test_the_parent_fetch_is_what_the_workers_find(mirror: str, tmp_path: Path) -> None:
    """One worker in-process: the parent's fetch fills the cache; the trial then loads from it
    without another request."""
    Mirror.hits.clear()
    config = tiny_protocol(tmp_path)
    config.write_text(config.read_text().replace(f'data_dir = "{MNIST}"\n', ""))
    proc = subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", "sweep", str(config), "--out",
         str(tmp_path / "out")],
        env=env_for(mirror, tmp_path / "cache"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "cache" / "kfaclab" / "mnist"
    assert f"kfaclab: dataset mnist in {cache}\n" in proc.stderr
    assert sorted(Mirror.hits.values()) == [1, 1, 1, 1]
    assert sorted(p.name for p in cache.glob("*.gz")) == sorted(Mirror.files)
