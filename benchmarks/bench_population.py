"""Per-trial cost of a population step against one fused trial, on one device.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_population.py \
        [--k 1 4 16 64] [--steps 50] [--repeats 3] [--optimizer kfac sgd] [--device cpu]

For each population size k: k trials of the reference protocol's MLP (MNIST, batch 128, one
shared seed as a sweep's trials have) with different λ, lr and momentum, stepped as one
population (``kfaclab.train.population``); against them the single trial (``run_trial``: the
fused K-FAC step, or SGD) on the same steps, its input stream warm as in a sweep (and the
populations' record of layer 1's shared work, as in a population sweep's later rounds). Both
timings cover steps 1 … S−2 (S = --steps) — in process CPU time on the CPU, wall time on a GPU
(see ``CLOCK``) — the first step's one-off allocations and the final full-dataset evaluation
left out (the population's is never run). Populations and single
trials alternate, repeat after repeat, so a noisy shared machine slows both alike; printed: the
median over repeats of the per-trial milliseconds per step, the spread (min–max), and the ratio
single / population per trial (>1: the population is faster). A run in which any trial
diverged is refused (it did less work).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from _data import mnist_dir
from kfaclab.train import run_trial
from kfaclab.train.population import Population
from kfaclab.train.population_kfac import eigh_on_cpu
from kfaclab.train.population_stream import Streams
from kfaclab.trial_types import TrialConfig


def trial_configs(
    optimizer: str, k: int, steps: int, device: str, data_dir: str
) -> list[TrialConfig]:
    """k trials that train without diverging (λ in [0.1, 10), lr and momentum spread)."""
    base = TrialConfig(
        optimizer=optimizer,  # type: ignore[arg-type]
        steps=steps,
        histogram_steps=(),
        data_dir=data_dir,
        device=device,
        lr=0.02,
        momentum=0.9,
        damping=0.1,
    )
    configs = []
    for i in range(k):
        spread = (i % 16) / 16.0
        configs.append(
            dataclasses.replace(
                base,
                damping=0.1 * 100.0**spread,
                lr=(0.01 + 0.02 * spread) * (100.0**spread if optimizer == "kfac" else 1.0),
                momentum=0.5 + 0.4 * spread,
                lr_decay=spread,
            )
        )
    return configs


# What the per-step timings read: this process's CPU time on the CPU (a shared, loaded machine
# then slows a measurement only through caches, not through time slices lost to other
# processes; one thread, so it is the compute time), wall time on a GPU (which the CPU waits
# for). ``main`` sets it.
CLOCK = time.perf_counter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def population_ms(
    configs: list[TrialConfig], streams: Streams, host_eigh: bool | None = None
) -> float:
    """Milliseconds per trial and step over steps 1 … S−2 of one population (left before its
    last step: the final evaluation is not timed, and need not be run)."""
    population = Population(streams, eigh_on_cpu=host_eigh)
    for i, config in enumerate(configs):
        population.add(config, i)
    steps, device = configs[0].steps or 0, configs[0].device
    population.step()
    _sync(device)
    start = CLOCK()
    for _ in range(steps - 2):
        population.step()
    _sync(device)
    seconds = CLOCK() - start
    if len(population) != len(configs):  # a diverged trial leaves the population
        sys.exit(f"refused: {len(configs) - len(population)} population trial(s) diverged")
    return seconds / (steps - 2) / len(configs) * 1e3


def single_ms(config: TrialConfig) -> float:
    """Milliseconds per step over steps 1 … S−2 of one ``run_trial`` (progress timestamps)."""
    marks: dict[int, float] = {}
    steps = config.steps or 0

    def progress(done: int, total: int, loss: float) -> None:
        if done in (1, steps - 1):
            _sync(config.device)
            marks[done] = CLOCK()

    result = run_trial(config, progress)
    if result.status != "ok":
        sys.exit(f"refused: the single trial diverged at step {result.diverged_at}")
    return (marks[steps - 1] - marks[1]) / (steps - 2) * 1e3


def eigh_ms(k: int, n: int, device: str, on_cpu: bool = False) -> float:
    """Milliseconds for one batched ``torch.linalg.eigh`` of k SPD n×n factors on ``device`` (a
    population's inversion does 2·depth − 1 of these every ``inverse_every`` steps), best of 3;
    ``on_cpu``: through ``population_kfac.eigh_on_cpu`` (host threads) instead."""
    rows = torch.randn(k, 4 * n, n, device=device)
    factors = rows.transpose(1, 2) @ rows / (4 * n)
    decompose = eigh_on_cpu if on_cpu else torch.linalg.eigh
    decompose(factors)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        decompose(factors)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", nargs="+", default=["kfac", "sgd"], choices=["kfac", "sgd"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eigh", action="store_true", help="also time batched eigh (101×101)")
    parser.add_argument(
        "--eigh-on",
        choices=["auto", "device", "cpu"],
        default="auto",
        help="where populations decompose the trials' factors (auto: the host for cuda)",
    )
    args = parser.parse_args()
    if args.steps < 4:
        sys.exit(f"--steps must be >= 4, got {args.steps}")
    data_dir = args.data_dir or str(mnist_dir())
    global CLOCK
    on_cpu = args.device == "cpu"
    CLOCK = time.process_time if on_cpu else time.perf_counter
    torch.set_num_threads(torch.get_num_threads())  # OMP_NUM_THREADS decides; printed below
    print(
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{'process CPU' if on_cpu else 'wall'} time, "
        f"{args.steps} steps, {args.repeats} interleaved repeats (median, min-max)"
    )
    if args.eigh:
        for k in args.k:
            print(
                f"eigh k={k:>5} of 101x101 on {args.device}: {eigh_ms(k, 101, args.device):9.2f} ms"
            )
    header = f"{'optimizer':>9} {'k':>5} {'single ms/step':>16} {'population ms/trial/step':>26}"
    print(f"{header} {'speed-up':>9}")
    on_cpu = {"auto": None, "device": False, "cpu": True}[args.eigh_on]
    for optimizer in args.optimizer:
        single_config = trial_configs(optimizer, 1, args.steps, args.device, data_dir)[0]
        # Both warm, as in a sweep after its first trials: the data, the single trial's input
        # stream, the populations' record of layer 1's work (one for all, like a sweep's rounds).
        run_trial(single_config)
        streams = Streams()
        population_ms([single_config], streams)
        for k in args.k:
            configs = trial_configs(optimizer, k, args.steps, args.device, data_dir)
            singles, populations = [], []
            for _ in range(args.repeats):
                singles.append(single_ms(single_config))
                populations.append(population_ms(configs, streams, on_cpu))
            s, p = statistics.median(singles), statistics.median(populations)
            print(
                f"{optimizer:>9} {k:>5} {s:8.2f} ({min(singles):.2f}-{max(singles):.2f})"
                f" {p:12.3f} ({min(populations):.3f}-{max(populations):.3f})  {s / p:8.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
