"""λ conversions against the B²-scaled convention, checked on the damped inverse itself."""

from __future__ import annotations

import pytest
import torch

from kfaclab import from_b2_scaled, to_b2_scaled
from kfaclab.errors import UsageError


def test_b2_scaled_inverse_has_our_shape_at_the_converted_damping() -> None:
    """A library whose G is built from the mean loss's gradient has G' = G/B². Its damped inverse
    (G'⊗A + λ'I)⁻¹ must equal B²·(G⊗A + λI)⁻¹ exactly when λ = from_b2_scaled(λ', B)."""
    g = torch.Generator().manual_seed(0)
    batch = 32
    per_example_a = torch.randn(batch, 4, generator=g, dtype=torch.float64)
    per_example_g = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    a = per_example_a.T @ per_example_a / batch
    ours_g = per_example_g.T @ per_example_g / batch
    mean_loss_grads = per_example_g / batch  # ∂L/∂sᵢ of the mean loss
    theirs_g = mean_loss_grads.T @ mean_loss_grads / batch
    theirs_lam = 1e-5
    ours_lam = from_b2_scaled(theirs_lam, batch)
    eye = torch.eye(12, dtype=torch.float64)
    theirs = torch.linalg.inv(torch.kron(theirs_g, a) + theirs_lam * eye)
    ours = torch.linalg.inv(torch.kron(ours_g, a) + ours_lam * eye)
    torch.testing.assert_close(theirs, batch**2 * ours)
    assert to_b2_scaled(ours_lam, batch) == pytest.approx(theirs_lam)


@pytest.mark.parametrize(("lam", "batch"), [(0.0, 128), (-1.0, 128), (1.0, 0)])
def test_conversion_rejects_bad_values(lam: float, batch: int) -> None:
    with pytest.raises(UsageError, match="must be"):
        from_b2_scaled(lam, batch)
