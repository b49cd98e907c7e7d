"""K-FAC with the Monte-Carlo Fisher: G from labels sampled from the model, not the data's.

The empirical Fisher (kfaclab's default) builds G from the gradients of the loss at the true
labels. The Fisher proper samples ŷ ~ p(y|x) from the model instead. With
``KFACOptions(fisher="mc")`` call ``opt.sample_fisher(logits)`` after ``zero_grad()`` and the
forward pass, before ``loss.backward()``: it back-propagates the sampled labels' loss to the
layer outputs only (no parameter gradient), once per example. A factor step without it is
refused.

    python examples/mc_fisher.py --data-dir ../shared/data/mnist [--steps 200]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kfaclab import KFAC, KFACOptions
from kfaclab.data import load_dataset
from kfaclab.models import build_mlp


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("mnist", args.data_dir)
    model = build_mlp(depth=3, width=100)
    opt = KFAC(model, lr=0.02, damping=0.1, momentum=0.9, options=KFACOptions(fisher="mc"))
    losses = []
    for _ in range(args.steps):
        idx = torch.randint(0, len(data.train_y), (128,))
        opt.zero_grad()  # first: it also forgets any capture of the previous batch
        logits = model(data.train_x[idx])
        opt.sample_fisher(logits)  # ŷ ~ softmax(logits): the curvature's labels
        loss = F.cross_entropy(logits, data.train_y[idx])
        loss.backward()  # the gradient's labels: the data's
        opt.step(loss=loss)
        losses.append(loss.item())
    print(f"MC-Fisher K-FAC: loss {losses[0]:.3f} → {losses[-1]:.3f} in {args.steps} steps")
    return {"first_loss": losses[0], "last_loss": losses[-1]}


if __name__ == "__main__":
    main()
