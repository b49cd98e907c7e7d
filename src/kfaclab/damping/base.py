"""The one small interface every damping strategy implements.

A strategy owns the *value* of λ and how it evolves; it never sees factors or parameters. The
optimizer asks it for λ before preconditioning and reports what happened after each step.
How λ enters the inverse (exact or factored) is the curvature package's concern, not this one's.

Call order inside ``KFAC.step`` (one optimizer step, t = 0, 1, …):

1. ``layer_values(spectra)`` — λ for each preconditioned layer at this step. ``spectra`` holds
   the mean eigenvalue of each layer's G⊗A from the latest decomposition (``None`` before the
   first one or when the damping form has no eigenvalues). The default returns ``value()`` for
   every layer; per-layer rules (e.g. spectrum-relative damping) override it.
2. the optimizer updates the parameters.
3. ``observe(outcome)`` — once per step, with the losses the optimizer knows and the reduction
   predicted by the K-FAC quadratic model, when the strategy asked for it
   (``wants_model_reduction``).

``state_dict()`` / ``load_state_dict()`` must capture everything that affects future values, so
that a resumed run continues bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerSpectrum:
    """What a per-layer rule may read about one layer's curvature (from the last decomposition)."""

    name: str
    mean_eigenvalue: float | None  # mean eigenvalue of G⊗A = mean(eig A) · mean(eig G)


@dataclass(frozen=True)
class StepOutcome:
    """What the optimizer reports after step ``step`` (0-based) has updated the parameters.

    ``loss_before``: the minibatch loss at θ_t (the one whose gradient was used), if the caller
    passed it to ``step(loss=...)`` or a closure computed it.
    ``loss_after``: the same minibatch's loss at θ_{t+1}; only when the strategy set
    ``needs_loss_after_step`` and this was one of its update steps (one extra forward pass).
    ``predicted_reduction``: M(δ) − M(0) = ∇ᵀδ + ½ δᵀ(F̂ + λI)δ of the K-FAC quadratic model for the
    step δ actually taken (negative for a descent step); only on steps where
    ``wants_model_reduction(step)`` was true.
    """

    step: int
    loss_before: float | None = None
    loss_after: float | None = None
    predicted_reduction: float | None = None


class Damping(ABC):
    """Base class of damping strategies; a float ``damping=`` means ``Constant(value)``."""

    #: True if the strategy needs the loss of the same minibatch after the update, which costs
    #: one extra forward pass on the steps where ``wants_model_reduction`` is true. The optimizer
    #: then requires ``step(loss_closure=...)``, an evaluation closure that returns that loss.
    needs_loss_after_step: bool = False

    #: True if the strategy reads ``StepOutcome.loss_before``: ``KFAC.step`` then refuses a step
    #: without ``loss=`` (or a closure that returns it) at once, instead of a silent bad λ.
    needs_loss: bool = False

    @abstractmethod
    def value(self) -> float:
        """The current global λ (> 0). Also what reports and traces show."""

    def layer_values(self, spectra: Sequence[LayerSpectrum]) -> list[float]:
        """λ for each layer at this step; by default the global value for all of them."""
        lam = self.value()
        return [lam] * len(spectra)

    def wants_model_reduction(self, step: int) -> bool:
        """Whether ``observe`` at ``step`` needs ``predicted_reduction`` (costs a few matmuls)."""
        return False

    def observe(self, outcome: StepOutcome) -> None:  # noqa: B027 - optional hook
        """Called once after every step; stateless strategies ignore it."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything that affects future values (plain Python numbers, JSON-serialisable)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable spec that ``kfaclab.damping.build_damping`` turns back into an equal
        strategy (its constants, not its running state). Used in trial configs and reports."""
        raise NotImplementedError(f"{type(self).__name__} does not describe itself")
