"""Helpers of the CLI tests: a tiny protocol (a whole sweep in about a second), in-process and
real-process runs of `kfaclab` that check the one-line error contract."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kfaclab.cli.main import main

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
LONG = "x" * 300  # longer than any file system's name limit (255 bytes on Linux)
SMOKE = REPO / "configs" / "smoke.toml"


def smoke_top1(name: str, n_trials: int, **search: Any) -> dict[str, Any]:
    """The smoke preset as a raw table, renamed, with ``n_trials`` a cell and a top-1 (plus any
    other ``search`` keys): the sweep tests' protocol. Its paired reruns are dropped, since their
    top of 2 would exceed that top-1 (parse with ``base_dir=SMOKE.parent``)."""
    raw = tomllib.loads(SMOKE.read_text())
    raw["protocol"]["name"] = name
    raw["search"].update({"n_trials": n_trials, "top_k": 1, **search})
    raw.get("report", {}).pop("paired_reruns", None)
    return raw


def tiny_protocol(folder: Path, extra: str = "", name: str = "tiny") -> Path:
    """SGD only, one trial of two steps: the whole sweep machinery in about a second."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'[protocol]\nname = "{name}"\n[data]\ndataset = "mnist"\ndata_dir = "{MNIST}"\n'
        "[model]\ndepth = 2\nwidth = 8\n"
        "[training]\nbatch_size = 64\nsteps = 2\neval_steps = [2]\nhistogram_steps = []\n"
        f"{extra}"
        "[cells]\nsgd = true\n"
        "[search]\nn_trials = 1\nlr = { low = 0.01, high = 0.1 }\n"
        "lr_decay = { low = 0.0, high = 1.0 }\nmomentum = { low = 0.0, high = 0.5 }\n"
    )
    return path


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command in this process; assert exit 2 and a single stderr line; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("kfaclab: error: "), err
    return err


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
