"""One optimizer step of K-FAC (exact and factored) against torch.optim.SGD with momentum.

The reference MLP 784-100-100-100-100-100-10 (ReLU), batch 128, one thread (as the study's workers
run), real MNIST batches when ../shared/data/mnist exists (their blank pixels are part of the
workload), factors every step, inverse every 10. Each configuration runs ``--steps`` steps
(a multiple of 10 so the amortised inversion is counted fairly), repeated ``--repeats`` times in
interleaved order; the median time per step is reported, with ratios against SGD measured in the
same run.

``kfac-exact-sweep`` is what a trial inside a sweep pays: the same exact K-FAC following a
recorded input stream (``InputStreamCache``: layer 1's factor updates, decompositions and batch
projections shared), with ``batch_gradients_only`` and ``deferred_rotation`` as ``run_trial``
sets them; the stream is recorded once before the timed repeats.

It also counts the floating-point work of one step and times the machine's own float32 matmul and
eigh throughput, to say how close each measured step is to what the hardware allows. The
``-minimal`` rows are the same mathematics written out by hand with nothing else
(``minimal_kfac.py``, checked against KFAC by tests/test_minimal_kfac.py). On ``--dense`` inputs
that is the floor any implementation pays with these kernels on this machine, in situ, where the
roofline prices every kernel at its best isolated speed, and KFAC's distance from it is the
engine's own cost. On MNIST KFAC can be below it: it skips the exactly-zero work of blank pixels,
which the hand-written step does.

    python benchmarks/bench_step.py [--steps 100] [--repeats 7] [--threads 1] [--dense]

``--dense`` feeds random dense inputs (no blank columns), as any user outside MNIST has.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _data import mnist_dir
from _trained import DAMPING, LR, require_trained
from kfaclab import KFAC
from kfaclab.optim import InputStreamCache, KFACOptions, Speedups
from minimal_kfac import MinimalKFAC

SIZES = [784, 100, 100, 100, 100, 100, 10]
BATCH = 128


def build_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def load_batches(n: int, dense: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    folder = mnist_dir()
    if dense:  # what a user without MNIST's blank pixels has: every input column non-zero
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n * BATCH, 784, generator=g)
        y = torch.randint(0, 10, (n * BATCH,), generator=g)
    elif folder is not None:
        from kfaclab.data import load_dataset

        data = load_dataset("mnist", data_dir=folder)
        x, y = data.train_x, data.train_y
    else:  # synthetic stand-in with MNIST's sparsity (about a third of the pixels blank)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n * BATCH, 784, generator=g) * (
            torch.rand(n * BATCH, 784, generator=g) > 0.33
        )
        y = torch.randint(0, 10, (n * BATCH,), generator=g)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    return [
        (x[perm[i * BATCH : (i + 1) * BATCH]], y[perm[i * BATCH : (i + 1) * BATCH]])
        for i in range(n)
    ]


def time_steps(
    make_opt: Callable[[nn.Module], torch.optim.Optimizer], batches: list, warmup: int = 10
) -> float:
    model = build_model()
    opt = make_opt(model)
    is_kfac = isinstance(opt, KFAC)

    def one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if is_kfac:
            opt.step(loss=loss)
        else:
            opt.step()
        return loss

    for x, y in batches[:warmup]:
        one(x, y)
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        loss = one(x, y)
    seconds = (time.perf_counter() - start) / (len(batches) - warmup)
    require_trained("bench_step", opt, loss)
    return seconds


def step_flops(inverse_every: int) -> dict[str, float]:
    """Floating-point operations of one step, per component (multiply-add = 2 flops)."""
    fwd_bwd = 0.0
    factors = precondition_exact = precondition_factored = eig = chol = 0.0
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        a, g = n_in + 1, n_out
        passes = 2 if i == 0 else 3  # forward, weight grad, input grad (none for the data)
        fwd_bwd += passes * 2 * BATCH * n_in * n_out
        factors += 2 * BATCH * (a * a + g * g)
        precondition_exact += 2 * (2 * g * g * a + 2 * g * a * a)  # Q_Gᵀ∇Q_A and back
        precondition_factored += 2 * (g * g * a + g * a * a)
        eig += 9 * (a**3 + g**3) / inverse_every  # symmetric eigh with vectors ≈ 9n³
        chol += (a**3 / 3 + a**3 + g**3 / 3 + g**3) / inverse_every  # Cholesky + inverse
    return {
        "sgd": fwd_bwd,
        "factors": factors,
        "precondition_exact": precondition_exact,
        "precondition_factored": precondition_factored,
        "eigh_amortised": eig,
        "cholesky_amortised": chol,
    }


def machine_throughput() -> dict[str, float]:
    """Measured float32 GFLOP/s of the kernels K-FAC leans on, at the sizes it uses."""

    def best(fn: Callable[[], object], flops: float, repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return flops / min(times) / 1e9

    x = torch.randn(BATCH, 785)
    q = torch.randn(785, 785)
    g = torch.randn(100, 785)
    spd = x.T @ x / BATCH + 1e-2 * torch.eye(785)
    return {
        "gram_gflops": best(lambda: x.T @ x, 2 * BATCH * 785 * 785),
        "matmul_gflops": best(lambda: g @ q, 2 * 100 * 785 * 785),
        "eigh_gflops": best(lambda: torch.linalg.eigh(spd), 9 * 785**3, repeats=3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--dense", action="store_true", help="random dense inputs instead of MNIST (no blanks)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = load_batches(args.steps + 10, dense=args.dense)
    streams = InputStreamCache()
    configs: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9),
        "kfac-exact": lambda m: KFAC(
            m, lr=LR, damping=DAMPING, momentum=0.9, options=KFACOptions(inverse_every=10)
        ),
        "kfac-factored": lambda m: KFAC(
            m,
            lr=LR,
            damping=DAMPING,
            momentum=0.9,
            options=KFACOptions(inverse_every=10, damping_form="factored"),
        ),
        # The popular implementations' schedule (kfac-pytorch's defaults, the `refresh` factor of
        # screen-design.toml): statistics every 10 steps, decompositions every 100. Time it over
        # --steps that are a multiple of 100 so its decompositions are counted fairly.
        "kfac-exact-popular": lambda m: KFAC(
            m,
            lr=LR,
            damping=DAMPING,
            momentum=0.9,
            options=KFACOptions(factor_every=10, inverse_every=100),
        ),
        "kfac-factored-popular": lambda m: KFAC(
            m,
            lr=LR,
            damping=DAMPING,
            momentum=0.9,
            options=KFACOptions(factor_every=10, inverse_every=100, damping_form="factored"),
        ),
        "kfac-exact-minimal": lambda m: MinimalKFAC(m, lr=LR, damping=DAMPING, momentum=0.9),
        "kfac-factored-minimal": lambda m: MinimalKFAC(
            m, lr=LR, damping=DAMPING, momentum=0.9, form="factored"
        ),
        "kfac-exact-sweep": lambda m: KFAC(
            m,
            lr=LR,
            damping=DAMPING,
            momentum=0.9,
            options=KFACOptions(inverse_every=10),
            speedups=Speedups(
                input_stream_cache=streams, batch_gradients_only=True, deferred_rotation=True
            ),
        ),
    }
    time_steps(configs["kfac-exact-sweep"], batches)  # records the stream
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
        for name, make in configs.items():
            samples[name].append(time_steps(make, batches))
    median = {name: statistics.median(v) for name, v in samples.items()}
    flops = step_flops(10)
    speed = machine_throughput()
    ideal_sgd = flops["sgd"] / (speed["matmul_gflops"] * 1e9)
    ideal_exact = (
        ideal_sgd
        + (flops["factors"] + flops["precondition_exact"]) / (speed["matmul_gflops"] * 1e9)
        + flops["eigh_amortised"] / (speed["eigh_gflops"] * 1e9)
    )
    ideal_factored = ideal_sgd + (
        flops["factors"] + flops["precondition_factored"] + flops["cholesky_amortised"]
    ) / (speed["matmul_gflops"] * 1e9)
    ideal = {"sgd": ideal_sgd, "kfac-exact": ideal_exact, "kfac-factored": ideal_factored}
    ideal["kfac-exact-minimal"], ideal["kfac-factored-minimal"] = ideal_exact, ideal_factored
    ideal["kfac-exact-sweep"] = math.nan  # shared work has no per-step roofline
    # statistics every 10 steps, decompositions every 100
    rare = step_flops(100)
    gemm, eig = speed["matmul_gflops"] * 1e9, speed["eigh_gflops"] * 1e9
    ideal["kfac-exact-popular"] = (
        ideal_sgd
        + (flops["factors"] / 10 + flops["precondition_exact"]) / gemm
        + rare["eigh_amortised"] / eig
    )
    ideal["kfac-factored-popular"] = (
        ideal_sgd
        + (flops["factors"] / 10 + flops["precondition_factored"] + rare["cholesky_amortised"])
        / gemm
    )
    inputs = "random dense" if args.dense else "MNIST"
    print(
        f"threads={args.threads} steps={args.steps} repeats={args.repeats} batch={BATCH} "
        f"inputs={inputs}"
    )
    print(
        f"machine: gram {speed['gram_gflops']:.1f}, matmul {speed['matmul_gflops']:.1f}, "
        f"eigh {speed['eigh_gflops']:.1f} GFLOP/s (float32)"
    )
    print("flops per step (GFLOP): " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items()))
    print(f"{'optimizer':<22}{'ms/step':>10}{'× SGD':>8}{'roofline ms':>13}{'of roofline':>13}")
    for name in configs:
        ms = median[name] * 1e3
        print(
            f"{name:<22}{ms:>10.2f}{median[name] / median['sgd']:>8.2f}"
            f"{ideal[name] * 1e3:>13.2f}{ideal[name] / median[name]:>12.0%}"
        )
    for form in ("exact", "factored"):
        engine, floor = median[f"kfac-{form}"], median[f"kfac-{form}-minimal"]
        print(f"KFAC {form} against the same step written out by hand: {engine / floor - 1:+.1%}")


if __name__ == "__main__":
    main()
