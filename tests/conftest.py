"""Shared fixtures: where the project's datasets live on every machine (and in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
import torch

from kfaclab.study.storage import driver_url

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


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """float32 on CUDA means float32: TF32 (cuDNN's default for convolutions, and matmuls where
    enabled) keeps 10 mantissa bits, so float32 results would agree with the CPU's to ~1e-3
    only, while the tests compare float32 at 1e-5 and tighter. No effect without CUDA."""
    if "cuda" not in DEVICES:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The test server's URL narrowed to a new, empty schema (dropped afterwards): every test
    starts as the first sweep on a new database does, with Optuna's tables still to be created."""
    url = os.environ.get("KFACLAB_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KFACLAB_TEST_POSTGRES is not set in CI (start scripts/start-postgres.sh)")
        pytest.skip("KFACLAB_TEST_POSTGRES not set (scripts/start-postgres.sh starts a server)")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(driver_url(url))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in url else "?"
    yield f"{url}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()
