"""Projects the wall time of a full sweep from a shorter probe run of the same protocol.

    # a copy of configs/paper.toml with n_trials = 60, swept into PROBE:
    kfaclab sweep probe.toml --out PROBE --workers 2
    kfaclab export PROBE probe.csv
    PYTHONPATH=src python benchmarks/paper_estimate.py probe.csv --wall 1234 --workers 2 \
        [--target-trials 300] [--startup 10] [--tail 25]

A trial's cost depends on how far it gets before it diverges, and that changes as TPE learns:
its first ``--startup`` trials are random (many diverge early, cheap), later ones concentrate on
the good region (most train the whole epoch). So per cell the projection takes the probe's
start-up trials as they were and prices every later trial at the mean of the probe's last
``--tail`` trials (the most converged behaviour the probe saw):

    cell seconds = Σ start-up trials + (target − startup) × mean(last tail trials)
    wall = Σ cells × (probe worker-seconds / probe trial-seconds) / workers

The middle factor carries what is not trial time (Optuna, storage, process start-up) over from
the probe. It assumes the workers stay busy to the end, which holds when cells ≫ workers.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials_csv", type=Path, help="`kfaclab export` of the probe")
    parser.add_argument("--wall", type=float, required=True, help="probe wall time, seconds")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--target-trials", type=int, default=300)
    parser.add_argument("--startup", type=int, default=10)
    parser.add_argument("--tail", type=int, default=25)
    args = parser.parse_args()

    cells: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    with args.trials_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["state"] == "COMPLETE":
                cells[row["cell"]].append((int(row["trial"]), float(row["seconds"]), row["status"]))
    trial_seconds = sum(s for rows in cells.values() for _, s, _ in rows)
    overhead = args.wall * args.workers / trial_seconds
    n = sum(map(len, cells.values()))
    print(f"probe: {n} trials, {trial_seconds:.0f} trial-seconds, wall {args.wall:.0f} s "
          f"x {args.workers} workers -> overhead x{overhead:.3f}")  # fmt: skip
    header = ("cell", "startup s", "tail mean s", "tail diverged", "projected s")
    print(f"{header[0]:<16}{header[1]:>10}{header[2]:>12}{header[3]:>14}{header[4]:>12}")
    total = 0.0
    for cell, rows in cells.items():
        rows.sort()
        startup = rows[: args.startup]
        tail = rows[-args.tail :]
        tail_mean = statistics.mean(s for _, s, _ in tail)
        diverged = sum(status != "ok" for _, _, status in tail) / len(tail)
        projected = sum(s for _, s, _ in startup) + (args.target_trials - len(startup)) * tail_mean
        total += projected
        print(f"{cell:<16}{sum(s for _, s, _ in startup):>10.1f}{tail_mean:>12.2f}"
              f"{diverged:>14.0%}{projected:>12.0f}")  # fmt: skip
    wall = total * overhead / args.workers
    print(f"projected wall time for {args.target_trials} trials per cell with {args.workers} "
          f"workers: {wall:.0f} s = {wall / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
