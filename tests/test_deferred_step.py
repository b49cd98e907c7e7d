"""A deferred layer's step under a KL clip: dᵀ∇ from its rotated parts equals the dense
direction's in float64, and the clip factor with those parts equals the one of the dense step."""

from __future__ import annotations

import math

import pytest
import torch

from kfaclab.optim.deferred import DeferredStep, InactivePart
from kfaclab.optim.functional import kl_clip_factor


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


def test_inner_product_of_a_rotated_step_equals_the_dense_one() -> None:
    gen = torch.Generator().manual_seed(0)
    out, n_cols, lam = 5, 9, 0.3
    active = torch.tensor([0, 2, 3, 5, 6, 8])  # the basis of A lives on these columns
    inactive = torch.tensor([1, 4, 7])
    q_g, q_a = _orthogonal(out, gen), _orthogonal(len(active), gen)
    g_vals = torch.rand(out, generator=gen, dtype=torch.float64)
    a_vals = torch.rand(len(active), generator=gen, dtype=torch.float64)
    grad = torch.randn(out, n_cols, generator=gen, dtype=torch.float64)
    # The dense oracle: on the active block (G⊗A + λI)⁻¹∇ in the eigenbasis, ∇/λ elsewhere.
    rotated_grad = q_g.T @ grad[:, active] @ q_a
    rotated = rotated_grad / (torch.outer(g_vals, a_vals) + lam)
    direction = torch.empty_like(grad)
    direction[:, active] = q_g @ rotated @ q_a.T
    direction[:, inactive] = grad[:, inactive] / lam
    step = DeferredStep(rotated, InactivePart(inactive, grad[:, inactive] / lam), rotated_grad, lam)
    dense = float((direction * grad).sum())
    assert step.inner_with_gradient() == pytest.approx(dense, rel=1e-12)
    # The clip factor: the deferred layer's product passed apart gives the dense step's ν.
    other_d, other_g = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    other_g = other_d.abs() + other_g.abs()  # a descent direction: dᵀ∇ > 0
    other_d = other_d.abs()
    empty = torch.empty(0, dtype=torch.float64)
    lrs: float | list[float]
    for lrs in (0.1, [0.1, 0.05]):  # one η, and one per item (parameter groups)
        whole = kl_clip_factor([direction, other_d], [grad, other_g], lrs, 1e-4)
        split = kl_clip_factor(
            [empty, other_d], [empty, other_g], lrs, 1e-4, [(0, step.inner_with_gradient())]
        )
        assert whole < 1.0 and split == pytest.approx(whole, rel=1e-12)
    scaled = step.scaled(0.5)
    assert torch.equal(scaled.rotated, rotated * 0.5) and scaled.rotated_grad is rotated_grad
    assert torch.equal(scaled.inactive.values, step.inactive.values * 0.5)
    assert math.isclose(scaled.inner_with_gradient(), 0.5 * dense, rel_tol=1e-12)
