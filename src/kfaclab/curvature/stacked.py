"""Several equally shaped layers' exact inverses applied in one batched product.

A 100-wide MLP has four or more hidden layers whose blocks are all 100×101. Each product there
is small (≈1 M multiply-adds), so per-layer preconditioning is dominated by the fixed cost of
each tensor operation, not by arithmetic. Stacking those layers' eigenbases once per inversion
and the gradients once per step turns 4 × 7 small operations into 7 batched ones. Only fully
dense decompositions (``ExactInverse.build`` writes small factors out in full) are stacked, so
the formula is exactly ``ExactInverse.precondition``'s, layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from kfaclab.curvature.exact import ExactInverse


class StackedExactInverse(NamedTuple):
    """k dense exact inverses of (out, in) blocks: Q_G (k, out, out), Q_A (k, in, in), the
    eigenvalues shaped (k, out, 1) and (k, 1, in) for the broadcast g aᵀ."""

    g_vectors: torch.Tensor
    a_vectors: torch.Tensor
    g_values: torch.Tensor
    a_values: torch.Tensor

    @classmethod
    def stack(cls, inverses: Sequence[ExactInverse]) -> StackedExactInverse:
        return cls(
            torch.stack([inv.g.vectors for inv in inverses]),
            torch.stack([inv.a.vectors for inv in inverses]),
            torch.stack([inv.g.values for inv in inverses]).unsqueeze(2),
            torch.stack([inv.a.values for inv in inverses]).unsqueeze(1),
        )

    def precondition(self, grads: torch.Tensor, dampings: torch.Tensor) -> torch.Tensor:
        """(G_j⊗A_j + λ_j I)⁻¹ vec(grads[j]) for every j; grads (k, out, in), dampings (k,)."""
        rotated = self.g_vectors.transpose(1, 2) @ grads @ self.a_vectors
        rotated = rotated / (self.g_values * self.a_values + dampings.view(-1, 1, 1))
        return self.g_vectors @ rotated @ self.a_vectors.transpose(1, 2)


def stackable_groups(inverses: Sequence[object]) -> list[list[int]]:
    """Indices of the dense ExactInverses, grouped by shape, dtype and device (groups of ≥ 2)."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, inv in enumerate(inverses):
        if (
            not isinstance(inv, ExactInverse)
            or inv.a.active is not None
            or inv.g.active is not None
        ):
            continue
        vectors = inv.g.vectors
        key = (vectors.shape, inv.a.vectors.shape, vectors.dtype, vectors.device)
        groups.setdefault(key, []).append(i)
    return [group for group in groups.values() if len(group) >= 2]
