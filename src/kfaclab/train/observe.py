"""What a trial looks at besides its own minibatch loss: full-dataset evaluation and the
per-layer histograms of the squared gradient. Both run rarely and off the hot path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.trial_types import EvalPoint, HistogramBins

# Rows per evaluation chunk: large enough that the 784×100 matmul dominates (measured on one CPU
# thread: 2048 rows is as fast as any size tried), small enough to keep activations in cache.
EVAL_CHUNK = 2048


def forward_plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward pass that bypasses module hooks where possible.

    K-FAC registers forward/backward hooks on the nn.Linear layers to capture statistics; an
    evaluation pass over 60 000 examples (or the loss-after-step closure) must neither pay for
    nor pollute them. For an nn.Sequential (what ``build_mlp`` returns) we call each child's
    ``forward`` directly; any other model falls back to ``model(x)``.
    """
    if isinstance(model, nn.Sequential):
        for layer in model:
            x = layer.forward(x)
        return x
    return model(x)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    step: int,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> EvalPoint:
    """Mean cross-entropy on the full training set, and loss/accuracy on the test set."""
    train_loss, _ = _loss_and_correct(model, *train)
    test_loss, correct = _loss_and_correct(model, *test)
    return EvalPoint(
        step=step,
        train_loss=train_loss,
        test_loss=test_loss,
        test_accuracy=correct / len(test[1]),
    )


def _loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    # Sums accumulate in float64 so the mean over 60 000 examples does not depend on chunking
    # more than the per-chunk sums do (and is deterministic: fixed chunk order).
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), EVAL_CHUNK):
        xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        logits = forward_plain(model, xb)
        total += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    return total.item() / len(y), int(correct.item())


class GradHistogram:
    """Counts of (∂L/∂θ)² per preconditioned layer (weight and bias together) on fixed log10
    bins.

    Binning follows ``HistogramBins``: slot 0 is below 10**log10_min (exact zeros included), slots
    1…n_bins are the bins [e_i, e_{i+1}), the last slot is at or above 10**log10_max (NaN too).
    ``torch.bucketize(..., right=True)`` yields exactly that slot index.
    """

    def __init__(self, layers: dict[str, nn.Linear | nn.Conv2d], bins: HistogramBins) -> None:
        self.layers = layers
        self.n_slots = bins.n_bins + 2
        # The log10 is taken in float64 so the bin of a value does not depend on the model dtype.
        self.edges = torch.tensor(bins.edges(), dtype=torch.float64)

    @torch.no_grad()
    def __call__(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name, layer in self.layers.items():
            params = [p for p in (layer.weight, layer.bias) if p is not None]
            # A parameter without a gradient (unused this step) counts as zeros, so the counts
            # always sum to the layer's parameter count.
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads]).double().cpu()
            slots = torch.bucketize(torch.log10(flat.square()), self.edges, right=True)
            out[name] = torch.bincount(slots, minlength=self.n_slots).tolist()
        return out
