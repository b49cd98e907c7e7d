"""How far one sweep trial is from what its arithmetic alone would take on this core.

    PYTHONPATH=src python benchmarks/trial_floor.py [--repeats 3] [--damping 1.0]

For an SGD trial and a K-FAC trial as a sweep's worker runs them (one epoch of MNIST, batch 128,
one thread, warm input stream, the six histograms), and for the K-FAC trial once more through the
general ``KFAC`` optimizer (``run_trial(..., fused=False)``) instead of the fused step, it counts

* the floating-point operations of every matrix product the trial executes (torch's
  ``FlopCounterMode``, with the in-place ``baddbmm_`` of the factor updates added: the counter
  knows only the out-of-place form), priced at this core's measured rate for a GEMM of the
  trial's dominant shape (128×785 by 785×100);
* the eigendecompositions (by size), priced at their measured time;

and prints that floor beside the measured trial time (median of interleaved repeats). The ratio
is everything else: per-operation dispatch, Python, element-wise passes and allocation. It is the
part a faster implementation could still remove; the floor itself only fewer operations can.

A second, stricter floor prices every product at its own shape: each distinct (operation, shapes,
strides) the trial executes is replayed alone in a tight loop and its time multiplied by its count
(the eigendecompositions as above). A 128×100 by 100×100 product runs far below the dominant
shape's rate, so this "shape floor" is what the same kernels would take with nothing between them.

SGD runs twice: ``FusedSGD`` (run_trial's default for the MLP) and autograd with
``torch.optim.SGD`` (``fused=False``); the two are bitwise the same trial.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from _data import mnist_dir
from kfaclab.train import run_trial
from kfaclab.trial_types import TrialConfig

HISTOGRAMS = (60, 120, 180, 240, 300, 360)


_PRODUCTS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.baddbmm_.default,
    torch.ops.aten.addmm_.default,
    torch.ops.aten.mm.out,
    torch.ops.aten.addmm.out,
    torch.ops.aten.bmm.out,
    torch.ops.aten.baddbmm.out,
}


class ProductShapes(TorchDispatchMode):
    """Every matrix product by (operation, shapes and strides of its tensor arguments), and the
    eigendecompositions by matrix size."""

    def __init__(self) -> None:
        super().__init__()
        self.eigh_sizes: Counter[int] = Counter()
        self.calls: Counter[tuple[Any, ...]] = Counter()
        self.example: dict[tuple[Any, ...], tuple[Any, list[Any], dict[str, Any]]] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._linalg_eigh.default:
            self.eigh_sizes[int(args[0].shape[-1])] += 1
        if func in _PRODUCTS:
            key = (func, *(_layout(a) for a in args), *((k, _layout(v)) for k, v in kwargs.items()))
            self.calls[key] += 1
            if key not in self.example:
                self.example[key] = (
                    func,
                    [_fresh(a) for a in args],
                    {k: _fresh(v) for k, v in kwargs.items()},
                )
        return func(*args, **kwargs)

    def seconds(self) -> float:
        """Σ count × the product's own time, each replayed alone on fresh operands."""
        total = 0.0
        for key, count in self.calls.items():
            func, args, kwargs = self.example[key]
            total += count * best_seconds(functools.partial(func, *args, **kwargs), repeats=20)
        return total


def _layout(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), tuple(value.stride()), value.dtype)
    return value


def _fresh(value: Any) -> Any:
    """A random tensor of ``value``'s shape, strides and dtype (other arguments as they are)."""
    if not isinstance(value, torch.Tensor):
        return value
    extent = 1 + sum((n - 1) * st for n, st in zip(value.shape, value.stride(), strict=True))
    base = torch.randn(max(extent, 1), dtype=value.dtype)
    return torch.as_strided(base, value.shape, value.stride())


def best_seconds(fn: Callable[[], object], repeats: int = 200) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def gemm_rate() -> float:
    """FLOP/s of this core on the trial's dominant product (layer 1: 128×785 by 785×100)."""
    x, w = torch.randn(128, 785), torch.randn(785, 100)
    return 2 * 128 * 785 * 100 / best_seconds(lambda: x @ w)


def eigh_seconds(n: int) -> float:
    rows = torch.randn(4 * n, n)
    factor = rows.T @ rows / (4 * n)
    return best_seconds(lambda: torch.linalg.eigh(factor), repeats=20)


def _baddbmm_flops(
    _self: torch.Size, left: torch.Size, right: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of the batched product in ``out.baddbmm_(left, right)`` (given shapes)."""
    batch, rows, inner = left
    return 2 * batch * rows * inner * right[-1]


def counted(config: TrialConfig, fused: bool) -> tuple[float, Counter[int], float]:
    """(matrix-product FLOPs, eigendecompositions by size, the products' shape floor in
    seconds) of one warm trial."""
    counter = FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_flops},
    )
    shapes = ProductShapes()
    with counter, shapes:
        run_trial(config, fused=fused)
    return float(counter.get_total_flops()), shapes.eigh_sizes, shapes.seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--damping", type=float, default=1.0, help="K-FAC's λ (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = mnist_dir()
    configs = {
        name: TrialConfig(
            optimizer=name,
            lr=0.02,
            momentum=0.9,
            damping=args.damping,
            data_dir=None if folder is None else str(folder),
            histogram_steps=HISTOGRAMS,
        )
        for name in ("sgd", "kfac")
    }
    # Each optimizer twice: run_trial's fused step, and autograd with the torch optimizer or
    # the general KFAC (fused=False).
    variants = {
        "sgd": (configs["sgd"], True),
        "sgd-autograd": (configs["sgd"], False),
        "kfac": (configs["kfac"], True),
        "kfac-general": (configs["kfac"], False),
    }
    for config, fused in variants.values():
        run_trial(config, fused=fused)  # loads the data; records the input stream
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits all alike
        for name, (config, fused) in variants.items():
            times[name].append(run_trial(config, fused=fused).seconds)
    rate = gemm_rate()
    print(f"GEMM rate of this core (128x785 @ 785x100): {rate / 1e9:.1f} GFLOP/s")
    for name, (config, fused) in variants.items():
        flops, eighs, shape_floor = counted(config, fused)
        eigh_total = sum(count * eigh_seconds(n) for n, count in eighs.items())
        floor = flops / rate + eigh_total
        strict = shape_floor + eigh_total
        measured = statistics.median(times[name])
        print(
            f"{name}: {flops / 1e9:.1f} GFLOP of products ({flops / rate:.2f} s at that rate) + "
            f"{sum(eighs.values())} eigh ({eigh_total:.2f} s) = floor {floor:.2f} s; "
            f"shape floor {strict:.2f} s; measured {measured:.2f} s (median of "
            f"{args.repeats}), {measured / floor:.2f}x the floor, {measured / strict:.2f}x "
            "the shape floor"
        )
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"ratios in this run: sgd-autograd / sgd {median['sgd-autograd'] / median['sgd']:.2f}, "
        f"kfac / sgd {median['kfac'] / median['sgd']:.2f}, "
        f"kfac-general / sgd {median['kfac-general'] / median['sgd']:.2f}, "
        f"kfac-general / kfac {median['kfac-general'] / median['kfac']:.2f}"
    )


if __name__ == "__main__":
    main()
