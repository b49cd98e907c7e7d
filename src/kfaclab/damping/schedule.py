"""λ as a function of the step count: any callable, or a ready decay from large to small λ.

The paper finds that large λ helps escape plateaus early while small λ is better late; a decay
from ``start`` to ``end`` is the direct reading of that finding.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from kfaclab.damping._common import Strategy, int_at_least, positive
from kfaclab.damping.base import StepOutcome
from kfaclab.errors import UsageError


class Schedule(Strategy):
    """λ_t = fn(t), where t is the number of steps observed so far (0 before the first step).

    ``fn`` must return a finite λ > 0. A ``Schedule(fn)`` built from an arbitrary callable cannot
    be written as a spec (``describe()`` raises); use :class:`ExponentialDecay` or
    :class:`LinearDecay` where a spec is needed (trial configs, studies).

    Cost per step: one call of ``fn``; no extra passes.
    """

    def __init__(self, fn: Callable[[int], float]) -> None:
        if not callable(fn):
            raise UsageError(f"schedule fn must be callable, got {fn!r}")
        self._fn = fn
        self._t = 0

    @property
    def t(self) -> int:
        """Number of steps observed so far (the argument of ``fn`` for the next step)."""
        return self._t

    def value(self) -> float:
        lam = self._fn(self._t)
        if not (isinstance(lam, int | float) and math.isfinite(lam) and lam > 0):
            raise UsageError(f"schedule value at step {self._t} must be > 0, got {lam!r}")
        return float(lam)

    def observe(self, outcome: StepOutcome) -> None:
        # Count observations rather than trust outcome.step: the schedule's clock is "steps
        # taken by this strategy", which is what state_dict restores.
        self._t += 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self._t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._t = int(state["t"])


class _Interpolation(Schedule):
    """From ``start`` at t = 0 to ``end`` at t = ``steps``, then ``end``; subclasses say how
    λ moves in between (``_between``). The constants, their checks and the spec live here."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        kind = self.KIND
        self.start = positive(f"{kind}.start", start)
        self.end = positive(f"{kind}.end", end)
        self.steps = int_at_least(f"{kind}.steps", steps, 1)
        super().__init__(self._at)

    def _at(self, t: int) -> float:
        if t >= self.steps:
            return self.end
        return self._between(t)

    @abstractmethod
    def _between(self, t: int) -> float:
        """λ at 0 <= t < steps."""

    def describe(self) -> dict[str, Any]:
        return self._spec(start=self.start, end=self.end, steps=self.steps)


class ExponentialDecay(_Interpolation):
    """Geometric interpolation: λ_t = start · (end/start)^(t/steps) for t < steps, then end.

    Hits both endpoints exactly (λ_0 = start, λ_t = end for t ≥ steps). ``end > start`` gives a
    growth schedule; the name follows the common use. Equal log-spacing is the natural choice
    because λ's effect (and the paper's grid) spans orders of magnitude.

    Cost per step: one power; no extra passes.
    """

    KIND: ClassVar[str] = "exponential_decay"

    def _between(self, t: int) -> float:
        # (end/start)**0.0 == 1.0 exactly, so λ_0 == start bit for bit.
        return self.start * (self.end / self.start) ** (t / self.steps)


class LinearDecay(_Interpolation):
    """Linear interpolation: λ_t = start + (end − start) · t/steps for t < steps, then end.

    Hits both endpoints exactly. Spends most of its length at large λ when end ≪ start, which
    makes it a useful contrast to :class:`ExponentialDecay`.

    Cost per step: a few flops; no extra passes.
    """

    KIND: ClassVar[str] = "linear_decay"

    def _between(self, t: int) -> float:
        return self.start + (self.end - self.start) * (t / self.steps)
