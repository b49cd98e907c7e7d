"""Adaptive damping: λ set by the Levenberg–Marquardt rule instead of a fixed value.

Every ``every`` steps the rule compares the loss reduction the step achieved with the reduction
its quadratic model predicted (ρ), and multiplies λ by ω when ρ > 3/4 (the model is good: damp
less) or divides it by ω when ρ < 1/4 (Martens & Grosse 2015, §6.5). On the same batch the rule
needs the loss after the step: ``loss_closure`` re-evaluates the minibatch at the current
parameters (no backward; called only on the steps where λ is updated). With
``LevenbergMarquardt(source="next_batch")`` the next step's loss is used instead and no closure
is needed, at no extra cost. Strategies are objects: ``damping=`` takes any of them.

    python examples/levenberg_marquardt.py --data-dir ../shared/data/mnist [--steps 300]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kfaclab import KFAC, LevenbergMarquardt
from kfaclab.data import load_dataset
from kfaclab.models import build_mlp


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("mnist", args.data_dir)
    model = build_mlp()  # the paper's 784-100×5-10 ReLU MLP
    damping = LevenbergMarquardt(initial=1.0, every=5)  # ω: its documented default
    opt = KFAC(model, lr=0.02, damping=damping, momentum=0.9)
    lambdas, losses = [], []
    for step in range(args.steps):
        idx = torch.randint(0, len(data.train_y), (128,))
        x, y = data.train_x[idx], data.train_y[idx]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss, loss_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
        lambdas.append(opt.current_damping())
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}  λ {lambdas[-1]:.2e}")
    print(f"λ {lambdas[0]:.2e} → {lambdas[-1]:.2e}; loss {losses[0]:.3f} → {losses[-1]:.3f}")
    return {"first_lambda": lambdas[0], "last_lambda": lambdas[-1], "last_loss": losses[-1]}


if __name__ == "__main__":
    main()
