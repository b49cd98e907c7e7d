"""Spectral probes of one damped curvature block G⊗A + λI, from the factors' eigenvalues.

The eigenvalues of G⊗A are all products gᵢ·aⱼ, so everything here is exact for the K-FAC block
and costs O(dim A · dim G) (78,500 products for layer 1 of the reference MLP: well under a ms).
"""

from __future__ import annotations

from typing import Any

import torch


def layer_diagnostics(eig_a: torch.Tensor, eig_g: torch.Tensor, damping: float) -> dict[str, Any]:
    """Numbers a report can plot for one layer; all plain floats.

    - ``eig_A_*``/``eig_G_*``: min, max and mean eigenvalue of each factor;
    - ``relative_damping``: λ / mean eigenvalue of G⊗A (= λ / (mean a · mean g));
    - ``condition_number``: (e_max + λ)/(e_min + λ) of the damped block;
    - ``frac_below_damping``: share of G⊗A's eigenvalues below λ (directions λ dominates);
    - ``effective_dim``: Σ e/(e+λ), the number of directions the curvature still resolves;
    - ``dim``: dim A · dim G, the size of the block.
    """
    a = eig_a.detach().to(torch.float64).clamp_min(0.0)
    g = eig_g.detach().to(torch.float64).clamp_min(0.0)
    products = torch.outer(g, a)
    mean_product = float(products.mean())
    e_max, e_min = float(products.max()), float(products.min())
    return {
        "damping": float(damping),
        "eig_A_min": float(a.min()),
        "eig_A_max": float(a.max()),
        "eig_A_mean": float(a.mean()),
        "eig_G_min": float(g.min()),
        "eig_G_max": float(g.max()),
        "eig_G_mean": float(g.mean()),
        "relative_damping": damping / mean_product if mean_product > 0 else float("inf"),
        "condition_number": (e_max + damping) / (e_min + damping),
        "frac_below_damping": float((products < damping).to(torch.float64).mean()),
        "effective_dim": float((products / (products + damping)).sum()),
        "dim": int(products.numel()),
    }
