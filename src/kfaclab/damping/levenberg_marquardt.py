"""Levenberg–Marquardt adaptation of λ from the K-FAC quadratic model's reduction ratio."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from kfaclab.damping._common import MultiplicativeRule, as_float, finite, warn_missing_loss
from kfaclab.damping.base import StepOutcome
from kfaclab.errors import UsageError

Source = Literal["same_batch", "next_batch"]
_SOURCES = ("same_batch", "next_batch")


class LevenbergMarquardt(MultiplicativeRule):
    """Martens & Grosse (2015, "Optimizing Neural Networks with Kronecker-factored Approximate
    Curvature", sec. 6.5): every T steps compute the reduction ratio

        ρ = (h(θ+δ) − h(θ)) / (M(δ) − M(0)),

    where h is the minibatch loss and M the K-FAC quadratic model of the step δ taken, then
    ``ρ > upper: λ ← ω·λ``; ``ρ < lower: λ ← λ/ω``; otherwise λ is kept; finally λ is clipped to
    ``[min_value, max_value]``. The update happens after steps T−1, 2T−1, … (0-based), so
    ``initial`` is used for exactly the first T steps.

    Constants (defaults and where they come from):

    - ``initial = 1.0``: Martens & Grosse's λ₀ is 150 for autoencoders with their un-averaged
      Fisher scale; 1.0 is the middle of the paper's grid (1e-5 … 1e2) in our per-example scale.
    - ``every = 5`` (T): Martens & Grosse's T₁ = 5.
    - ``omega = (19/20)**every`` (ω): Martens & Grosse's ω₁ = (19/20)^T₁, i.e. λ moves by at most
      a factor 19/20 per step on average, whatever T is.
    - ``lower = 0.25``, ``upper = 0.75``: Martens & Grosse's thresholds (the classical
      Levenberg–Marquardt / trust-region constants, Moré 1978).
    - ``min_value = 1e-8``, ``max_value = 1e4``: ours; two decades beyond each end of the grid,
      so the rule is never pinned inside the studied range yet can neither reach 0 (an
      unregularised, possibly singular inverse) nor blow up without bound.

    A ratio that cannot be computed counts as a **bad step** and raises λ by 1/ω: a predicted
    reduction that is missing or ≥ 0 (M predicts no descent, so the step is not trustworthy),
    or a missing or non-finite loss (a NaN/inf loss is the strongest sign that λ is too small).
    Missing losses also warn once, since they mean the loss was never passed to ``step``.

    ``source`` chooses where h(θ+δ) comes from:

    - ``"same_batch"`` (Martens & Grosse): the optimizer re-evaluates the same minibatch after
      the update through ``KFAC.step``'s ``loss_closure``. Cost: one extra forward pass every
      T steps, plus the model reduction (a few matmuls) on those steps. ρ compares like with like.
    - ``"next_batch"``: no extra pass. The ``loss_before`` that the next step reports (the next
      minibatch at θ+δ) stands in for h(θ+δ). Cost: the model reduction every T steps only.
      Trade-off: the difference of two different minibatches' losses carries their sampling
      noise, which late in training easily exceeds the predicted reduction, so ρ is much noisier
      and λ random-walks more; and the change lands one step later (after step kT, not kT−1).

    Running state: λ, the pending (loss, prediction) of a next-batch update, and counters
    ``updates`` (decisions taken) and ``invalid`` (bad steps from missing/non-finite inputs).
    """

    KIND: ClassVar[str] = "levenberg_marquardt"
    # Class-level default is the conservative one (a class-level reader would supply a
    # closure); each instance overrides it from ``source``.
    needs_loss_after_step: bool = True
    needs_loss = True

    def __init__(
        self,
        initial: float = 1.0,
        every: int = 5,
        omega: float | None = None,
        lower: float = 0.25,
        upper: float = 0.75,
        min_value: float = 1e-8,
        max_value: float = 1e4,
        source: Source = "same_batch",
    ) -> None:
        k = self.KIND
        self._init_rate(initial, every, 1, omega)
        self.lower = as_float(f"{k}.lower", lower)
        self.upper = as_float(f"{k}.upper", upper)
        if self.lower > self.upper:
            raise UsageError(f"{k}.lower must be <= upper, got {lower!r} > {upper!r}")
        self._init_bounds(min_value, max_value)
        if source not in _SOURCES:
            raise UsageError(f"{k}.source must be one of {', '.join(_SOURCES)}, got {source!r}")
        self.source: Source = source
        # This rule's need depends on the instance's source.
        self.needs_loss_after_step = source == "same_batch"
        self._pending: tuple[float, float] | None = None  # next_batch: (h(θ), M(δ) − M(0))
        self.updates = 0
        self.invalid = 0
        self._warned = False

    def wants_model_reduction(self, step: int) -> bool:
        return (step + 1) % self.every == 0

    def observe(self, outcome: StepOutcome) -> None:
        if self.source == "same_batch":
            if self.wants_model_reduction(outcome.step):
                self._decide(outcome.loss_before, outcome.loss_after, outcome.predicted_reduction)
            return
        # next_batch: first settle the previous update step with this step's loss at θ+δ
        # (before possibly opening a new one, which matters when every == 1).
        if self._pending is not None:
            before, predicted = self._pending
            self._pending = None
            self._decide(before, outcome.loss_before, predicted)
        if self.wants_model_reduction(outcome.step):
            loss, reduction = outcome.loss_before, outcome.predicted_reduction
            if finite(loss) and finite(reduction):
                self._pending = (loss, reduction)
            else:  # no ratio can come of it: decide now rather than carry garbage
                self._decide(loss, math.nan, reduction)

    def _decide(self, before: float | None, after: float | None, predicted: float | None) -> None:
        self.updates += 1
        rho: float | None = None
        if finite(before) and finite(after) and finite(predicted):
            if predicted < 0:
                rho = (after - before) / predicted
        else:
            self.invalid += 1
            if (before is None or after is None) and not self._warned:
                self._warned = True
                warn_missing_loss(self.KIND, "loss before or after the step")
        if rho is None or rho < self.lower:
            self._raise_lam()
        elif rho > self.upper:
            self._lower_lam()

    def state_dict(self) -> dict[str, Any]:
        pending = self._pending
        return {
            "value": self._lam,
            "pending_loss_before": None if pending is None else pending[0],
            "pending_predicted_reduction": None if pending is None else pending[1],
            "updates": self.updates,
            "invalid": self.invalid,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._lam = float(state["value"])
        before, predicted = state["pending_loss_before"], state["pending_predicted_reduction"]
        self._pending = None if before is None else (float(before), float(predicted))
        self.updates = int(state["updates"])
        self.invalid = int(state["invalid"])

    def describe(self) -> dict[str, Any]:
        return self._rule_spec({"lower": self.lower, "upper": self.upper}, source=self.source)
