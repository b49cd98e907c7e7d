"""Sweep throughput: trials per minute (in all and per cell) with 1 and with 2 worker processes.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sweep.py [--config configs/quick.toml]
        [--trials 4] [--workers 1 2]

Runs the protocol (default: quick, the paper's cells with 100-step trials) with a small trial
budget per cell into a fresh temporary journal for each worker count, using the real trial
runner, and reports wall time including worker start-up. "Per cell" is the rate at which one
cell's study advances while all cells run interleaved (total rate / number of cells), which is
what the paper-protocol estimate needs: time = cells x trials per cell / total rate.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import tomllib
from pathlib import Path

from _data import REPO, mnist_dir
from kfaclab.study.cells import build_cells
from kfaclab.study.protocol import parse_protocol
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import StorageSpec


def measure(
    config: Path, trials: int, workers: int, data_dir: Path | None
) -> tuple[float, int, int]:
    """(wall seconds, trials run, cells) for one sweep with ``workers`` processes."""
    raw = tomllib.loads(config.read_text())
    if data_dir is not None:
        raw["data"]["data_dir"] = str(data_dir.resolve())
    raw["protocol"]["name"] = f"bench-{workers}"
    raw["search"]["n_trials"] = trials
    raw["search"]["top_k"] = min(raw["search"].get("top_k", trials), trials)
    protocol = parse_protocol(raw, base_dir=config.resolve().parent)
    cells = len(build_cells(protocol))
    with tempfile.TemporaryDirectory(prefix="kfaclab-bench-") as folder:
        start = time.perf_counter()
        code = run_sweep(protocol, StorageSpec(folder=Path(folder)), workers=workers,
                         stream=io.StringIO())  # fmt: skip
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"sweep with {workers} workers failed (exit {code})")
    return seconds, cells * trials, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quick.toml")
    parser.add_argument("--trials", type=int, default=4, help="trials per cell (default 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=mnist_dir(),
        help="MNIST folder (default: the project's shared copy, else cache/download)",
    )
    args = parser.parse_args()
    print(f"{args.config.name}: {args.trials} trials per cell; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'workers':>7}  {'wall s':>8}  {'trials':>6}  {'trials/min':>10}  {'per cell':>8}")
    for workers in args.workers:
        seconds, n, cells = measure(args.config, args.trials, workers, args.data_dir)
        rate = n / seconds * 60
        print(f"{workers:>7}  {seconds:>8.1f}  {n:>6}  {rate:>10.2f}  {rate / cells:>8.3f}")


if __name__ == "__main__":
    main()
