"""The Monte-Carlo Fisher's sampled targets and their output gradients (used by both backends).

For each example one target ŷᵢ ~ p(y|xᵢ) is drawn from the model's own predictive distribution;
the per-example gradients gᵢ = ∂ℓ(ŷᵢ)/∂sᵢ of that sampled loss (reduction "sum", so already per
example) give G = (1/N)Σ gᵢgᵢᵀ, an unbiased estimate of the true Fisher's output factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LIKELIHOODS = ("categorical", "gaussian")


def sample_targets(logits: torch.Tensor, likelihood: str) -> torch.Tensor:
    """ŷ ~ p(y|x): class indices (N,) for "categorical", logits + ε for "gaussian"."""
    with torch.no_grad():
        if likelihood == "categorical":
            return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
        if likelihood == "gaussian":
            return logits + torch.randn_like(logits)
    raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")


def sampled_output_grads(
    logits: torch.Tensor, outputs: Sequence[torch.Tensor], likelihood: str
) -> tuple[torch.Tensor, ...]:
    """∂ℓ(ŷ)/∂s for every layer output in ``outputs`` (autograd, graph kept for backward)."""
    sampled = sample_targets(logits, likelihood)
    if likelihood == "categorical":
        sampled_loss = nn.functional.cross_entropy(logits, sampled, reduction="sum")
    else:
        sampled_loss = 0.5 * (logits - sampled).pow(2).sum()
    return torch.autograd.grad(sampled_loss, list(outputs), retain_graph=True)
