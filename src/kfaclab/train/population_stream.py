"""Layer 1's data-only work, done once per seed for every cohort of a population.

Layer 1's input factor A_1 depends on the batches alone (not on θ), so every cohort that trains
on a seed's batch sequence (every round of a population sweep, every trial added later) has
bitwise the same A_1 at every step, the same eigenbases, the same change-of-basis matrices and
the same projections X̄_t Q of its batches. The first cohort to reach a step *records* them in
its ``SeedStream``; the others take them from there and skip the work (for the reference MLP:
a 785×785 eigendecomposition every ``inverse_every`` steps, a 785³ change of basis, and per step
a 128×785×785 projection and the factor's update).

A cohort keeps the batches since its last inversion; at an inversion the stream lacks, it
replays them onto the factor after the previous inversion (its own, or the recorded snapshot)
— the same operations on the same values, so bitwise what updating at every step gives. Memory
is bounded by ``max_bytes`` over all seeds (recording stops at the bound; nothing is evicted,
so a recorded basis always has its snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.eigen import FactorEigen, diagonal_eigen, eigen_of_factor, expanded
from kfaclab.optim.factors import update_input_factor


def first_basis(
    running: torch.Tensor, previous: FactorEigen | None, counter: FallbackCounter
) -> FactorEigen:
    """Layer 1's eigenbasis on all n+1 coordinates (the single trial's decomposition of the
    active block, expanded). A failed decomposition keeps the previous basis, or the diagonal
    before the first (as ``FactorSide.invert`` and ``DirectionSide.precondition`` do)."""
    eigen = eigen_of_factor(running, counter)
    if eigen is None:
        return previous if previous is not None else diagonal_eigen(running)
    return expanded(eigen, running.shape[0])


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(0 if t is None else t.numel() * t.element_size() for t in tensors)


@dataclass
class SeedStream:
    """What layer 1's shared work gave along one seed's batches, by step."""

    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # A_1 after update t
    bases: dict[int, FactorEigen] = field(default_factory=dict)  # basis from inversion at t
    changes: dict[int, torch.Tensor] = field(default_factory=dict)  # Q_previousᵀ Q_t
    projections: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (t, s)


class Streams:
    """The population's seed streams within a byte budget."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.by_seed: dict[int, SeedStream] = {}

    def stream(self, seed: int) -> SeedStream:
        return self.by_seed.setdefault(seed, SeedStream())

    def fits(self, size: int) -> bool:
        if self.nbytes + size > self.max_bytes:
            return False
        self.nbytes += size
        return True


class LayerOne:
    """One cohort's layer 1 input side: its basis in force, and the stream it follows."""

    def __init__(self, streams: Streams, seed: int, decay: float, counter: FallbackCounter) -> None:
        self.streams, self.stream = streams, streams.stream(seed)
        self.decay, self.counter = decay, counter
        self.factor: torch.Tensor | None = None  # A_1 after update ``factor_step`` (owned)
        self.factor_step = -1
        self.window: list[torch.Tensor] = []  # the batches (B, n) since the last inversion
        self.last_inversion = -1
        self.basis: FactorEigen | None = None  # from the inversion at ``last_inversion``

    def observe(self, x: torch.Tensor) -> None:
        """This step's batch (before its inversion, if it has one)."""
        self.window.append(x)

    def projection(self, x_bar: torch.Tensor, t: int) -> torch.Tensor:
        """X̄_t Q in the basis in force (X̄_t itself before the first)."""
        basis = self.basis
        if basis is None:
            return x_bar
        key = (t, self.last_inversion)
        held = self.stream.projections.get(key)
        if held is not None:
            return held
        projected = x_bar @ basis.vectors
        if self.streams.fits(_nbytes(projected)):
            self.stream.projections[key] = projected
        return projected

    def invert(self, t: int) -> torch.Tensor | None:
        """The inversion at step t: the new basis in force; returns the change of basis
        C = Q_oldᵀ Q_new for the rotated weights (Q_new before any basis; None: unchanged)."""
        stream, previous = self.stream, self.basis
        basis = stream.bases.get(t)
        if basis is None:
            factor = self._settle(t)
            basis = first_basis(factor, previous, self.counter)
            snapshot = factor.clone()
            if self.streams.fits(_nbytes(snapshot, basis.values, basis.vectors)):
                stream.snapshots[t], stream.bases[t] = snapshot, basis
        self.window = []
        last, self.last_inversion, self.basis = self.last_inversion, t, basis
        if previous is None:
            return basis.vectors
        if basis is previous:
            return None
        change = stream.changes.get(t)
        if change is None or stream.bases.get(last) is not previous:
            change = previous.vectors.T @ basis.vectors
            if stream.bases.get(last) is previous and self.streams.fits(_nbytes(change)):
                stream.changes[t] = change
        return change

    def _settle(self, t: int) -> torch.Tensor:
        """A_1 after update t: from the factor after the last inversion (this cohort's own, or
        the stream's snapshot) with the window's batches replayed."""
        last = self.last_inversion
        if self.factor_step == last or last < 0:
            factor = self.factor
        else:
            factor = self.stream.snapshots[last].clone()
        for x in self.window:
            factor = update_input_factor(factor, x, True, self.decay)
        assert factor is not None
        self.factor, self.factor_step = factor, t
        return factor
