"""One optimizer step of K-FAC (exact and factored) on ``build_cnn`` against SGD with momentum.

The LeNet-like CNN of the CNN study (conv1 1→6 5×5, conv2 6→16 5×5, fc 400-120-84-10, ReLU),
batch 128, one thread by default (as the study's workers run), real Fashion-MNIST batches when
the dataset is installed (else a synthetic stand-in), factors every step, inverse every 10. Each
configuration runs ``--steps`` steps (a multiple of 10 so the amortised inversion is counted
fairly), repeated ``--repeats`` times in interleaved order; the median time per step is reported
with its ratio to SGD measured in the same run.

If ``KFAC`` accepts ``conv_approx`` (the Conv2d approximation, kfaclab.optim.conv), both "expand"
and "reduce" are timed; otherwise the engine's default. The script refuses to report K-FAC
numbers if the optimizer does not precondition the conv layers (an engine without Conv2d support
would time SGD on them and call it K-FAC).

    python benchmarks/bench_cnn_step.py [--steps 50] [--repeats 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _trained import DAMPING, LR, require_trained
from kfaclab import KFAC, KFACOptions
from kfaclab.choices import CONV_APPROXIMATIONS, DAMPING_FORMS
from kfaclab.data import load_dataset
from kfaclab.errors import UsageError
from kfaclab.models import build_cnn

BATCH = 128
CONV_LAYERS = ("conv1", "conv2")


def load_batches(n: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        data = load_dataset("fashion-mnist", device=device, download=False)
        x, y = data.train_x, data.train_y
    except UsageError as error:  # not installed here: a stand-in of the same shapes
        print(f"(Fashion-MNIST unavailable: {error}; using synthetic batches)", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n * BATCH, 784, generator=g).to(device)
        y = torch.randint(0, 10, (n * BATCH,), generator=g).to(device)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1)).to(device)
    return [
        (x[perm[i * BATCH : (i + 1) * BATCH]], y[perm[i * BATCH : (i + 1) * BATCH]])
        for i in range(n)
    ]


def make_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return build_cnn().to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int = 10,
) -> float:
    model = make_model(device)
    opt = make_opt(model)

    def one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if isinstance(opt, KFAC):
            opt.step(loss=loss)
        else:
            opt.step()
        return loss

    for x, y in batches[:warmup]:
        one(x, y)
    _synchronize(device)
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        loss = one(x, y)
    _synchronize(device)
    seconds = (time.perf_counter() - start) / (len(batches) - warmup)
    require_trained("bench_cnn_step", opt, loss)
    return seconds


def check_preconditions_convs(
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> None:
    """Exit with a clear message if K-FAC leaves conv1/conv2 out of its preconditioned layers."""
    model = make_model(device)
    opt = make_opt(model)
    assert isinstance(opt, KFAC)
    x, y = batches[0]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step(loss=loss)
    missing = [name for name in CONV_LAYERS if name not in opt.diagnostics()]
    if missing:
        sys.exit(
            "bench_cnn_step: KFAC does not precondition "
            + ", ".join(missing)
            + " (the engine has no Conv2d support yet): its timings would be SGD on those layers"
        )


def kfac_configs() -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    configs: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {}
    for approx in CONV_APPROXIMATIONS:
        for form in DAMPING_FORMS:
            options = KFACOptions(inverse_every=10, damping_form=form, conv_approx=approx)  # type: ignore[arg-type]
            configs[f"kfac-{form}-{approx}"] = lambda m, options=options: KFAC(
                m, lr=LR, damping=DAMPING, momentum=0.9, options=options
            )
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.steps < 10 or args.steps % 10:
        parser.error(f"--steps must be a positive multiple of 10, got {args.steps}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = load_batches(args.steps + 10, device)
    configs: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9),
        **kfac_configs(),
    }
    for name, make in configs.items():
        if name != "sgd":
            check_preconditions_convs(make, batches, device)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
        for name, make in configs.items():
            samples[name].append(time_steps(make, batches, device))
    median = {name: statistics.median(v) for name, v in samples.items()}
    print(
        f"build_cnn, batch={BATCH}, device={device}, threads={args.threads}, "
        f"steps={args.steps}, repeats={args.repeats}"
    )
    print(f"{'optimizer':<24}{'ms/step':>10}{'× SGD':>8}")
    for name in configs:
        print(f"{name:<24}{median[name] * 1e3:>10.2f}{median[name] / median['sgd']:>8.2f}")


if __name__ == "__main__":
    main()
