"""The update math of K-FAC as pure functions: no hooks, no optimizer state objects.

Shapes: a preconditioned layer's gradient block is (out, in[+1]) = [∇W | ∇b].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def kl_clip_factor(
    directions: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    lr: float | Sequence[float],
    kl_clip: float,
    inner_products: Sequence[tuple[int, float]] = (),
) -> float:
    """ν = min(1, sqrt(c / (η² Σ dᵀ∇))), the usual K-FAC KL clipping (Ba et al. 2017).

    η² dᵀ∇ estimates the KL divergence between the predictive distributions before and after the
    step; ν scales the direction so the estimate stays below ``kl_clip``. A non-positive or
    non-finite estimate (not a descent direction) leaves the step unscaled. ``lr``: one η, or
    one per direction (parameter groups): then the estimate is Σ ηᵢ² dᵢᵀ∇ᵢ. ``inner_products``:
    (item index, dᵀ∇) of items whose direction is not in ``directions`` (a deferred layer's,
    kept in its eigenbasis), added with that item's η.
    """
    pairs = zip(directions, gradients, strict=True)
    if isinstance(lr, Sequence):
        per_item = zip(lr, pairs, strict=True)
        estimate = sum(eta * eta * float((d * g).sum()) for eta, (d, g) in per_item)
        estimate += sum(lr[i] * lr[i] * inner for i, inner in inner_products)
    else:
        total = sum(float((d * g).sum()) for d, g in pairs)
        total += sum(inner for _, inner in inner_products)
        estimate = lr * lr * total
    if not (estimate > 0 and math.isfinite(estimate)):
        return 1.0
    return min(1.0, math.sqrt(kl_clip / estimate))


def kronecker_quadratic(
    delta: torch.Tensor, factor_a: torch.Tensor, factor_g: torch.Tensor
) -> float:
    """vec(Δ)ᵀ(G⊗A)vec(Δ) = tr(Δᵀ G Δ A) for Δ of shape (out, in[+1])."""
    return float(((factor_g @ delta) @ factor_a).mul_(delta).sum())


def model_reduction(linear_terms: float, curvature_terms: float, damping_terms: float) -> float:
    """M(δ) − M(0) = ∇ᵀδ + ½ δᵀ(F̂ + λI)δ, given the three sums over all parameters."""
    return linear_terms + 0.5 * (curvature_terms + damping_terms)
