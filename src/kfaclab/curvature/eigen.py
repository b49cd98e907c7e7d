"""Eigendecomposition of a factor restricted to its active coordinates.

A coordinate whose diagonal entry is exactly zero has an all-zero row and column (the factor is a
sum of Gram matrices), so its unit vector is an eigenvector with eigenvalue 0. Such coordinates are
common and cost real time: MNIST pixels that are zero in every image (67 of 784) make layer 1's
input factor A partly empty, and dead ReLU units make G partly empty. Decomposing only the active
block is exact, not an approximation, and saves a cubic amount of work.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kfaclab.curvature.decompose import FallbackCounter, robust_eigh


class FactorEigen(NamedTuple):
    """Eigen-decomposition of an n×n factor on its k active coordinates.

    ``active``: (k,) int64 indices, or None when every coordinate is active (then k = n);
    ``values``: (k,) eigenvalues, ascending, ≥ 0; ``vectors``: (k, k), columns are eigenvectors.
    The n − k inactive coordinates have eigenvalue 0 and unit eigenvectors.
    """

    active: torch.Tensor | None
    values: torch.Tensor
    vectors: torch.Tensor

    def full_values(self, n: int) -> torch.Tensor:
        """All n eigenvalues (zeros for inactive coordinates), ascending."""
        if self.active is None:
            return self.values
        zeros = self.values.new_zeros(n - self.values.shape[0])
        return torch.cat([zeros, self.values])

    def inactive(self, n: int) -> torch.Tensor:
        """Indices of the n − k inactive coordinates, ascending (empty when all are active)."""
        device = self.values.device
        if self.active is None:
            return torch.zeros(0, dtype=torch.int64, device=device)
        is_inactive = torch.ones(n, dtype=torch.bool, device=device)
        is_inactive[self.active] = False
        return torch.nonzero(is_inactive, as_tuple=False).squeeze(1)


def active_coordinates(factor: torch.Tensor) -> torch.Tensor | None:
    """Indices of the coordinates with a non-zero diagonal, or None when all are non-zero."""
    nonzero = torch.diagonal(factor) != 0
    if bool(nonzero.all()):
        return None
    return torch.nonzero(nonzero, as_tuple=False).squeeze(1)


def eigen_of_factor(factor: torch.Tensor, counter: FallbackCounter) -> FactorEigen | None:
    """Decompose ``factor`` on its active block; None if even the fallbacks failed."""
    active = active_coordinates(factor)
    block = factor if active is None else factor.index_select(0, active).index_select(1, active)
    if block.shape[0] == 0:
        empty = factor.new_zeros(0)
        return FactorEigen(active, empty, factor.new_zeros(0, 0))
    decomposed = robust_eigh(block, counter)
    if decomposed is None:
        return None
    values, vectors = decomposed
    return FactorEigen(active, values, vectors)


def expanded(eigen: FactorEigen, n: int) -> FactorEigen:
    """The same decomposition written on all n coordinates: each inactive coordinate gets
    eigenvalue 0 and its unit vector, placed first so the values stay ascending. Exact: the
    products with these 0/1 columns add only exact zeros."""
    if eigen.active is None:
        return eigen
    k = eigen.values.shape[0]
    inactive = eigen.inactive(n)
    vectors = eigen.vectors.new_zeros(n, n)
    # Row copies into column slices (index_copy_), not advanced-index assignment: the same
    # entries, written by a kernel several times cheaper at these sizes.
    unit = torch.eye(n - k, dtype=vectors.dtype, device=vectors.device)
    vectors[:, : n - k].index_copy_(0, inactive, unit)
    vectors[:, n - k :].index_copy_(0, eigen.active, eigen.vectors)
    return FactorEigen(None, eigen.full_values(n), vectors)


def floored(eigen: FactorEigen, floor: float) -> FactorEigen:
    """The decomposition with eigenvalues below ``floor`` set to 0 (an implementation profile:
    several popular K-FACs drop eigenvalues below 1e-10 before damping). ``floor = 0`` returns
    ``eigen`` itself, so the default path is untouched."""
    if not floor:
        return eigen
    values = torch.where(eigen.values < floor, torch.zeros_like(eigen.values), eigen.values)
    return FactorEigen(eigen.active, values, eigen.vectors)


def diagonal_eigen(factor: torch.Tensor) -> FactorEigen:
    """The diagonal of ``factor`` as a decomposition with unit eigenvectors: what a layer uses
    when its very first factorisation failed (no earlier basis to keep). (diag G ⊗ diag A + λI)⁻¹
    is the exact damped inverse of G⊗A's diagonal, a far better step than ∇/λ."""
    values = torch.diagonal(factor).clamp_min(0.0).clone()
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    return FactorEigen(None, values, eye)
