"""What a population's trials record besides their losses: gradient histograms, batched.

The counts are ``observe.GradHistogram``'s: per layer, weight and bias gradients together,
(∂L/∂θ)² on fixed log10 bins, binned in float64 on the CPU; here every trial's at once.
"""

from __future__ import annotations

import torch

from kfaclab.trial_types import HistogramBins


class StackedHistogram:
    """Counts of (∂L/∂θ)² per layer for P trials from their gradient blocks [∇W | ∇b]."""

    def __init__(self, names: list[str], bins: HistogramBins) -> None:
        self.names = names
        self.n_slots = bins.n_bins + 2
        self.edges = torch.tensor(bins.edges(), dtype=torch.float64)

    @torch.no_grad()
    def __call__(self, blocks: list[torch.Tensor]) -> list[dict[str, list[int]]]:
        """``blocks[j]``: layer j's (P, out, in + 1) in real coordinates → per trial, per layer
        name, the counts (``n_bins + 2`` slots, see ``HistogramBins``)."""
        size = blocks[0].shape[0]
        out: list[dict[str, list[int]]] = [{} for _ in range(size)]
        offsets = torch.arange(size).unsqueeze(1) * self.n_slots
        for name, block in zip(self.names, blocks, strict=True):
            # GradHistogram's order: the weight's entries, then the bias's.
            flat = torch.cat([block[:, :, :-1].reshape(size, -1), block[:, :, -1]], dim=1)
            flat = flat.double().cpu()
            slots = torch.bucketize(torch.log10(flat.square()), self.edges, right=True)
            counts = torch.bincount((slots + offsets).reshape(-1), minlength=size * self.n_slots)
            for p, row in enumerate(counts.view(size, self.n_slots).tolist()):
                out[p][name] = row
        return out
