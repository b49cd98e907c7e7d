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
from dataclasses import dataclass, field

import torch

from kfaclab.curvature.exact import ExactInverse


@dataclass
class StackedExactInverse:
    """k dense exact inverses of (out, in) blocks: Q_G (k, out, out), Q_A (k, in, in), the
    eigenvalues shaped (k, out, 1) and (k, 1, in) for the broadcast g aᵀ.

    Built once per inversion and applied at every step until the next, so it also keeps what
    does not change between those steps: Q_Gᵀ and Q_Aᵀ laid out contiguously (a batched product
    with a transposed operand runs ~1.4× slower here) and, per damping vector, g aᵀ + λ.
    """

    g_vectors: torch.Tensor
    a_vectors: torch.Tensor
    g_values: torch.Tensor
    a_values: torch.Tensor
    g_vectors_t: torch.Tensor = field(init=False)
    a_vectors_t: torch.Tensor = field(init=False)
    _denominators: dict[tuple[float, ...], torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.g_vectors_t = self.g_vectors.transpose(1, 2).contiguous()
        self.a_vectors_t = self.a_vectors.transpose(1, 2).contiguous()

    @classmethod
    def stack(cls, inverses: Sequence[ExactInverse]) -> StackedExactInverse:
        return cls(
            torch.stack([inv.g.vectors for inv in inverses]),
            torch.stack([inv.a.vectors for inv in inverses]),
            torch.stack([inv.g.values for inv in inverses]).unsqueeze(2),
            torch.stack([inv.a.values for inv in inverses]).unsqueeze(1),
        )

    def precondition(self, grads: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
        """(G_j⊗A_j + λ_j I)⁻¹ vec(grads[j]) for every j; grads (k, out, in), λ_j = dampings[j]."""
        # bmm itself rather than ``@`` (matmul's batched case reaches the same bmm on the same
        # operands, after its shape logic), and the division in place on the temporary.
        rotated = torch.bmm(torch.bmm(self.g_vectors_t, grads), self.a_vectors)
        rotated.div_(self._denominator(tuple(dampings)))
        return torch.bmm(torch.bmm(self.g_vectors, rotated), self.a_vectors_t)

    def _denominator(self, dampings: tuple[float, ...]) -> torch.Tensor:
        """g_j a_jᵀ + λ_j, computed once per damping vector (a constant λ: once per inversion)."""
        known = self._denominators.get(dampings)
        if known is None:
            lam = torch.tensor(dampings, dtype=self.g_values.dtype, device=self.g_values.device)
            known = self.g_values * self.a_values + lam.view(-1, 1, 1)
            if len(self._denominators) >= 4:  # a changing λ (a schedule): keep only a few
                self._denominators.clear()
            self._denominators[dampings] = known
        return known


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
