"""One whole trial (one epoch of MNIST, batch 128, one torch thread), ours against the usual way.

    PYTHONPATH=src python benchmarks/bench_trial.py [--repeats 3] [--optimizers sgd,kfac]

Variants, run interleaved within each repeat so that machine drift hits them alike:

* ``usual``:   the textbook loop — DataLoader(TensorDataset, batch_size=128, shuffle=True), per
               step zero_grad / forward / backward / step and ``losses.append(loss.item())``;
               no evaluation, no diagnostics. Same model and hyperparameters; the optimizer as
               a user builds it (``KFAC(model, ...)`` with its defaults, no input stream).
* ``bare``:    ``run_trial`` with no histograms and no curvature diagnostics; it still evaluates
               the final full-training-set loss (the trial's value) and the test set once.
* ``default``: ``run_trial`` at default settings (histograms and, for K-FAC, diagnostics at
               60, 120, …, 360; evaluation at the last step).
* ``warm``:    ``default`` again right after ``default``: what every trial but a worker's first
               costs in a sweep, where layer 1's data-only work (factor updates, decompositions,
               batch projections: the same for every trial of the study) comes from the
               per-process input stream (``kfaclab.optim.InputStreamCache``).

``usual``, ``bare`` and ``default`` start with an empty input-stream cache (cold), so their
comparison is not confounded by the cache.
* ``observe``: the six histograms (+ diagnostics) alone, timed directly.
* ``eval``:    the one final evaluation alone (full training set + test set).

Reported: medians over repeats, the ratios ours/usual, the overhead of observation
(default/bare − 1, the 15 % budget), and the cost of the one final evaluation on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _data import mnist_dir
from kfaclab import KFAC
from kfaclab.data import load_dataset
from kfaclab.optim import KFACOptions
from kfaclab.train import run_trial
from kfaclab.train.build import (
    INPUT_STREAMS,
    build_model,
    build_optimizer,
    linear_layers,
    seeded,
)
from kfaclab.train.observe import GradHistogram, evaluate
from kfaclab.trial_types import TrialConfig

CONFIGS = {
    "sgd": TrialConfig(optimizer="sgd", lr=0.05, momentum=0.9),
    "kfac": TrialConfig(optimizer="kfac", lr=0.02, momentum=0.9, damping=0.1),
}


def usual_trial(config: TrialConfig) -> float:
    """The same training written the common way; returns its wall time."""
    data = load_dataset(config.dataset, config.data_dir)
    with seeded(config.seed, torch.device("cpu")):
        start = time.perf_counter()
        model = build_model(config, torch.device("cpu"))
        opt = _plain_optimizer(config, model)
        loader = DataLoader(
            TensorDataset(data.train_x, data.train_y), batch_size=config.batch_size, shuffle=True
        )
        losses = []
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return time.perf_counter() - start


def _plain_optimizer(config: TrialConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """What a user writes: torch's SGD, or KFAC with its defaults (no sweep-only sharing)."""
    if config.optimizer == "sgd":
        return build_optimizer(config, model)
    assert isinstance(config.damping, float)
    return KFAC(
        model,
        lr=config.lr,
        damping=config.damping,
        momentum=config.momentum,
        options=KFACOptions(factor_decay=config.factor_decay, inverse_every=config.inverse_every),
    )


def final_eval_seconds(config: TrialConfig) -> float:
    """The one evaluation every trial needs (full train set + test set), timed alone."""
    data = load_dataset(config.dataset, config.data_dir)
    model = build_model(config, torch.device("cpu"))
    start = time.perf_counter()
    evaluate(model, 0, (data.train_x, data.train_y), (data.test_x, data.test_y))
    return time.perf_counter() - start


def observe_seconds(config: TrialConfig) -> float:
    """Histograms (+ K-FAC diagnostics) at the default six steps, timed directly: the difference
    default − bare of two ~2 s medians is noisier than this cost on a shared machine."""
    data = load_dataset(config.dataset, config.data_dir)
    model = build_model(config, torch.device("cpu"))
    opt = build_optimizer(config, model)
    histogram = GradHistogram(linear_layers(model), config.histogram_bins)
    diagnostics = getattr(opt, "diagnostics", None)
    x, y = data.train_x[: config.batch_size], data.train_y[: config.batch_size]
    for _ in range(11):  # past the first inverse update, so diagnostics have spectra
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    start = time.perf_counter()
    for _ in config.histogram_steps:
        histogram()
        if diagnostics is not None:
            diagnostics()
    return time.perf_counter() - start


def _cold(fn: Callable[[TrialConfig], float], config: TrialConfig) -> float:
    INPUT_STREAMS.clear()
    return fn(config)


def _ours(config: TrialConfig) -> float:
    return run_trial(config).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizers", default="sgd,kfac")
    folder = mnist_dir()
    parser.add_argument("--data-dir", default=None if folder is None else str(folder))
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for name in args.optimizers.split(","):
        default = dataclasses.replace(CONFIGS[name], data_dir=args.data_dir)
        bare = dataclasses.replace(default, histogram_steps=())
        load_dataset(default.dataset, default.data_dir)  # cache it: loading is not timed
        variants: dict[str, Callable[[], float]] = {
            "usual": partial(_cold, usual_trial, default),
            "bare": partial(_cold, _ours, bare),
            "default": partial(_cold, _ours, default),
            "warm": partial(_ours, default),
            "eval": partial(final_eval_seconds, default),
            "observe": partial(observe_seconds, default),
        }
        variants["bare"]()  # warm-up (first-touch costs, lazy imports)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for key, fn in variants.items():
                times[key].append(fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        value = run_trial(default).value
        rows.append((name, med, value))

    print(f"\none epoch, batch 128, 1 thread; medians of {args.repeats} repeats (seconds)")
    head = (
        "opt   usual   ours(bare)  ours(default)  ours(warm)  bare/usual  default/usual"
        "  warm/usual  default/bare  observe  final-eval"
    )
    print(head)
    for name, m, value in rows:
        print(
            f"{name:5} {m['usual']:6.2f}  {m['bare']:10.2f}  {m['default']:13.2f}"
            f"  {m['warm']:10.2f}"
            f"  {m['bare'] / m['usual']:10.2f}  {m['default'] / m['usual']:13.2f}"
            f"  {m['warm'] / m['usual']:10.2f}"
            f"  {100 * (m['default'] / m['bare'] - 1):+11.1f}%"
            f"  {100 * m['observe'] / m['bare']:6.1f}%"
            f"  {100 * m['eval'] / m['bare']:9.1f}%"
            f"   (final train loss {value:.4f})"
        )
    print(
        "default/bare − 1: observation overhead from whole trials (noisy on a shared machine);"
        " observe: histograms + diagnostics timed directly; final-eval: the objective's one"
        " evaluation (train + test sets); both as shares of the bare trial (budget 15 %)"
    )


if __name__ == "__main__":
    main()
