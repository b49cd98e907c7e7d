"""The dense float64 oracle of one damped K-FAC direction, shared by the Linear and Conv2d tests."""

from __future__ import annotations

import math

import torch


def dense_direction(
    a: torch.Tensor, g: torch.Tensor, grad: torch.Tensor, lam: float, form: str
) -> torch.Tensor:
    """(G⊗A + λI)⁻¹ vec(grad) ("exact") or the π-split (G + √λ/π I)⊗(A + π√λ I) solve
    ("factored"), as one dense linear system."""
    if form == "exact":
        curvature = torch.kron(g, a) + lam * torch.eye(g.shape[0] * a.shape[0], dtype=a.dtype)
    else:
        pi = math.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
        eye_a = torch.eye(a.shape[0], dtype=a.dtype)
        eye_g = torch.eye(g.shape[0], dtype=a.dtype)
        curvature = torch.kron(g + math.sqrt(lam) / pi * eye_g, a + pi * math.sqrt(lam) * eye_a)
    return torch.linalg.solve(curvature, grad.reshape(-1)).reshape(grad.shape)
