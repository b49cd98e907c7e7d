"""`factored` damping: Martens & Grosse's π-adjusted Tikhonov form (K-FAC paper, sec. 6.3).

    (G⊗A + λI)⁻¹ ≈ (A + π√λ I)⁻¹ ⊗ (G + (√λ/π) I)⁻¹,   π = sqrt((tr A / dim A) / (tr G / dim G))

applied as d = (G + (√λ/π)I)⁻¹ ∇ (A + π√λ I)⁻¹. Each inverse comes from a Cholesky factorisation,
which is cheaper than an eigendecomposition; the price is that λ is fixed at inversion time, so a
λ that changes between inversions (schedules, Levenberg–Marquardt) takes effect at the next one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from kfaclab.curvature.decompose import FallbackCounter, robust_damped_inverse


class FactoredInverse(NamedTuple):
    """The two damped factor inverses of one layer and the λ and π they were built with."""

    inv_a: torch.Tensor  # (in[+1], in[+1])
    inv_g: torch.Tensor  # (out, out)
    damping: float
    pi: float

    def precondition(self, grad: torch.Tensor) -> torch.Tensor:
        return self.inv_g @ grad @ self.inv_a


def pi_adjustment(a: torch.Tensor, g: torch.Tensor) -> float:
    """π = sqrt((tr A / dim A) / (tr G / dim G)); 1 when either trace is zero (no information)."""
    mean_a = float(torch.diagonal(a).sum()) / a.shape[0]
    mean_g = float(torch.diagonal(g).sum()) / g.shape[0]
    if mean_a <= 0 or mean_g <= 0 or not math.isfinite(mean_a / mean_g):
        return 1.0
    return math.sqrt(mean_a / mean_g)


def factored_inverse(
    a: torch.Tensor, g: torch.Tensor, damping: float, counter: FallbackCounter
) -> FactoredInverse | None:
    pi = pi_adjustment(a, g)
    root = math.sqrt(damping)
    inv_a = robust_damped_inverse(a, pi * root, counter)
    inv_g = robust_damped_inverse(g, root / pi, counter)
    if inv_a is None or inv_g is None:
        return None
    return FactoredInverse(inv_a, inv_g, damping, pi)
