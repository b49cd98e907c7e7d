"""Every script in examples/ runs, at smoke size, and shows what its docstring promises."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MNIST = (REPO / ".." / "shared" / "data" / "mnist").resolve()

pytestmark = pytest.mark.skipif(not MNIST.is_dir(), reason=f"needs MNIST in {MNIST}")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, *args: str) -> Any:
    return _load(name).main(["--data-dir", str(MNIST), *args])


def test_every_example_has_a_test() -> None:
    tested = {"paper_mlp", "cnn_checkpoint", "mc_fisher", "levenberg_marquardt", "ddp_torchrun"}
    tested.add("custom_sweep")
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_paper_mlp_trains() -> None:
    out = _run("paper_mlp", "--steps", "60")
    assert math.isfinite(out["final_loss"])
    assert out["final_loss"] < out["first_loss"] - 0.5  # 2.31 → ~1.1 in 60 steps


def test_cnn_resumes_bit_for_bit_under_bf16_autocast() -> None:
    out = _run("cnn_checkpoint", "--steps", "6")
    assert out["resume_gap"] == 0.0
    assert out["last_loss"] < out["first_loss"]


def test_mc_fisher_trains() -> None:
    out = _run("mc_fisher", "--steps", "20")
    assert out["last_loss"] < out["first_loss"] - 0.5


def test_levenberg_marquardt_moves_lambda() -> None:
    out = _run("levenberg_marquardt", "--steps", "15")
    assert out["first_lambda"] == 1.0
    assert out["last_lambda"] != 1.0  # updated on steps 5, 10, 15
    assert math.isfinite(out["last_loss"])


def test_custom_sweep_runs_every_cell(tmp_path: Path) -> None:
    best = _run("custom_sweep", "--out", str(tmp_path / "run"), "--smoke")
    assert sorted(best) == ["kfac-lam=1e+00", "kfac-lam=1e-02", "kfac-lm", "sgd"]
    assert all(math.isfinite(v) for v in best.values())


def test_ddp_example_under_torchrun_matches_one_process() -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(EXAMPLES / "ddp_torchrun.py"),
         "--data-dir", str(MNIST), "--steps", "3"],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("ranks agree to "))
    spread, gap = (float(w.rstrip(";")) for w in line.split() if w[0].isdigit())
    assert spread == 0.0  # DDP keeps the ranks' parameters identical
    assert gap < 1e-6  # and their step is one process's step on the whole batch (float32)
