"""benchmarks/device_check.sh, the GPU session's one command, run here on the CPU (--dry-run):
so the script a lent GPU runs is not untested. Its CUDA stages differ only in arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.sh"


def _dry_run(tmp_path: Path, stages: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(tmp_path), "STAGES": stages, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )


def _summary(stdout: str) -> list[str]:
    return stdout.split("=== summary", 1)[1].splitlines()[1:]


def test_the_script_parses_and_refuses_unknown_options() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    bad = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "device_check.sh: the only option is --dry-run, got '--gpu'"


def test_its_env_and_eigh_stages_run_on_the_cpu(tmp_path: Path) -> None:
    done = _dry_run(tmp_path, "env eigh")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _summary(done.stdout)
    assert [r.split()[:2] for r in rows] == [["env", "ok"], ["eigh", "ok"]]
    assert "device cpu" in rows[0] and "eigh k=4" in rows[1]
    assert (tmp_path / "eigh.log").read_text().count("ms on cpu") == 2


@pytest.mark.slow
def test_every_stage_runs_on_the_cpu(tmp_path: Path) -> None:
    """Tests, benchmark and a population sweep of the smoke protocol, about a minute."""
    done = _dry_run(tmp_path, "env tests eigh bench paper")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _summary(done.stdout)
    assert [r.split()[:2] for r in rows] == [
        [stage, "ok"] for stage in ("env", "tests", "eigh", "bench", "paper")
    ]
    assert "kfac k=2" in rows[3] and "sgd k=2" in rows[3]
    assert "paper: --per-cell 1: 3 trials (1 per cell)" in rows[4]
    assert "paper: --per-cell 2: 6 trials (2 per cell)" in rows[4]
