"""Dense float64 oracles shared by the K-FAC tests: one batch's Kronecker factors from first
principles, and one damped direction as a dense linear solve."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: (A, G) per nn.Linear layer, in order.
Factors = list[tuple[torch.Tensor, torch.Tensor]]


def batch_factors(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> Factors:
    """(A, G) per layer of one batch from first principles (no hooks): ā = [a; 1] the layer's
    input with a ones column, g = ∂ℓᵢ/∂sᵢ the per-example gradient of the summed cross-entropy
    at its output; A = āᵀā / n, G = gᵀg / n."""
    inputs, pre, h = [], [], x
    for module in model:
        if isinstance(module, nn.Linear):
            ones = torch.ones(len(h), 1, dtype=h.dtype, device=h.device)
            inputs.append(torch.cat([h.detach(), ones], 1))
            h = F.linear(h, module.weight, module.bias)
            pre.append(h)
        else:
            h = module(h)
    grads = torch.autograd.grad(F.cross_entropy(h, y, reduction="sum"), pre)
    return [(a.T @ a / len(x), g.T @ g / len(x)) for a, g in zip(inputs, grads, strict=True)]


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
