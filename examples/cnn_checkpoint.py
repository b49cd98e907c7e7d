"""A CNN with BatchNorm under bfloat16 autocast, an lr scheduler, and a checkpoint that resumes.

K-FAC preconditions the nn.Conv2d and nn.Linear layers (Conv2d by KFC's expand approximation);
BatchNorm's scale and shift get the plain gradient and are named once in a warning. The forward
pass runs under ``torch.autocast`` in bfloat16 (on the CPU too); K-FAC keeps its factors and
decompositions in float32. Half-way, model, optimizer and scheduler are saved with
``torch.save``; fresh objects load them and finish the run, and the resumed losses are compared
with an uninterrupted run: they are identical, bit for bit.

    python examples/cnn_checkpoint.py --data-dir ../shared/data/mnist [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab import KFAC, KFACOptions
from kfaclab.data import load_dataset


def build() -> tuple[nn.Module, KFAC, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 5), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # 8×12×12
        nn.Conv2d(8, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # 16×4×4
        nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    with warnings.catch_warnings():  # the BatchNorm parameters, named once: expected here
        warnings.simplefilter("ignore", UserWarning)
        opt = KFAC(model, lr=0.05, damping=0.1, momentum=0.9, options=KFACOptions(inverse_every=5))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    return model, opt, sched


def train(
    model: nn.Module, opt: KFAC, sched: torch.optim.lr_scheduler.StepLR, data, steps: range
) -> list[float]:
    model.train()
    losses = []
    for step in steps:
        g = torch.Generator().manual_seed(step)  # the batch of a step, whatever process runs it
        idx = torch.randint(0, len(data.train_y), (64,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # before step, as usual
        opt.step(loss=loss)
        sched.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    data = load_dataset("mnist", args.data_dir)
    half = args.steps // 2

    model, opt, sched = build()
    straight = train(model, opt, sched, data, range(args.steps))

    model, opt, sched = build()
    first = train(model, opt, sched, data, range(half))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        torch.save(state, path)
        model, opt, sched = build()  # a fresh process would do the same
        saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    resumed = first + train(model, opt, sched, data, range(half, args.steps))

    gap = max(abs(a - b) for a, b in zip(straight, resumed, strict=True))
    print(f"loss {straight[0]:.3f} → {straight[-1]:.3f} in {args.steps} steps (bf16 autocast)")
    print(f"resumed at step {half}: largest loss difference to the straight run {gap}")
    return {"first_loss": straight[0], "last_loss": straight[-1], "resume_gap": gap}


if __name__ == "__main__":
    main()
