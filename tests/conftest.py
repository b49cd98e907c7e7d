"""Shared fixtures: where the project's datasets live on every machine (and in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert SHARED_MNIST.is_dir(), f"MNIST expected at {SHARED_MNIST}"
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The study's workers run with one thread; tests do too, so timings and results match them.
    torch.set_num_threads(1)


# Library tests run on every device this machine has: the CPU always, CUDA when present (the
# accelerator machine). CI has no GPU, so there they run once, on the CPU.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)
