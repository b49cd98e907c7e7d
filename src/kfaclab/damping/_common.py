"""Shared plumbing of the damping strategies: argument checks and spec-based equality.

Checks raise :class:`kfaclab.errors.UsageError` with the message shape the project uses
everywhere: "<argument> must be <rule>, got <value>".
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, TypeGuard

from kfaclab.damping.base import Damping
from kfaclab.errors import UsageError


def as_float(name: str, x: object) -> float:
    """A finite real number (ints welcome: TOML and JSON write ``1`` for ``1.0``)."""
    # bool is an int subclass; True as a damping constant is a typo, not a number.
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise UsageError(f"{name} must be a number, got {x!r}")
    if not math.isfinite(x):
        raise UsageError(f"{name} must be finite, got {x!r}")
    return float(x)


def positive(name: str, x: object) -> float:
    value = as_float(name, x)
    if value <= 0:
        raise UsageError(f"{name} must be > 0, got {x!r}")
    return value


def int_at_least(name: str, x: object, low: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise UsageError(f"{name} must be an integer >= {low}, got {x!r}")
    if x < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {x!r}")
    return x


def open_unit(name: str, x: object) -> float:
    value = as_float(name, x)
    if not 0.0 < value < 1.0:
        raise UsageError(f"{name} must be in (0, 1), got {x!r}")
    return value


def check_range(kind: str, min_value: float, max_value: float, initial: float) -> None:
    """min_value < max_value and initial inside them: a clipped rule must start in its range."""
    if min_value >= max_value:
        raise UsageError(
            f"{kind}.min_value must be < max_value, got {min_value!r} >= {max_value!r}"
        )
    if not min_value <= initial <= max_value:
        raise UsageError(
            f"{kind}.initial must be in [min_value, max_value] = [{min_value!r}, {max_value!r}], "
            f"got {initial!r}"
        )


def clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def warn_missing_loss(kind: str, what: str) -> None:
    """Once per strategy instance (callers keep the flag): a rule fed no losses is a usage bug."""
    warnings.warn(
        f"{kind} damping got no {what}; pass step(loss=...) (and loss_closure= where required) "
        "so it can adapt",
        RuntimeWarning,
        stacklevel=3,
    )


class Strategy(Damping):
    """A Damping whose constants are its spec: equality and repr come from ``describe()``.

    Two strategies are equal when they have the same type, the same constants and the same
    running state, so ``build_damping(s.describe()) == s`` holds for a fresh ``s``. Strategies
    are mutable, hence unhashable.
    """

    #: The spec's ``kind``; empty for strategies that cannot be described (Schedule(fn)).
    KIND: ClassVar[str] = ""

    __hash__ = None  # type: ignore[assignment]  # mutable value objects must not be hashable

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, Strategy)
        try:
            return self.describe() == other.describe() and self.state_dict() == other.state_dict()
        except NotImplementedError:  # an undescribable strategy is only equal to itself
            return self is other

    def __repr__(self) -> str:
        try:
            spec = self.describe()
        except NotImplementedError:
            return f"{type(self).__name__}(<undescribed>)"
        args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "kind")
        return f"{type(self).__name__}({args})"

    def _spec(self, **constants: Any) -> dict[str, Any]:
        return {"kind": self.KIND, **constants}


class MultiplicativeRule(Strategy):
    """A rule that, at each decision, multiplies λ by ω (lowers it), divides it by ω (raises
    it) or keeps it, and clips it to ``[min_value, max_value]``.

    Levenberg–Marquardt and the loss-trend rule differ only in how they decide; the constants
    ``initial``, ``every``, ``omega``, ``min_value``, ``max_value``, their checks and the clipped
    move live here once. Subclasses call ``_init_rate`` then ``_init_bounds`` from ``__init__``
    (in that order, around their own constants, so each argument's error comes in the order
    the signature lists them).
    """

    initial: float
    every: int
    omega: float
    min_value: float
    max_value: float
    _lam: float

    def _init_rate(self, initial: float, every: int, min_every: int, omega: float | None) -> None:
        k = self.KIND
        self.initial = positive(f"{k}.initial", initial)
        self.every = int_at_least(f"{k}.every", every, min_every)
        # Default ω = (19/20)^T: λ moves by at most 19/20 per step on average, whatever T is.
        self.omega = (19 / 20) ** self.every if omega is None else open_unit(f"{k}.omega", omega)

    def _init_bounds(self, min_value: float, max_value: float) -> None:
        k = self.KIND
        self.min_value = positive(f"{k}.min_value", min_value)
        self.max_value = positive(f"{k}.max_value", max_value)
        check_range(k, self.min_value, self.max_value, self.initial)
        self._lam = self.initial

    def value(self) -> float:
        return self._lam

    def _lower_lam(self) -> None:
        self._lam = clip(self._lam * self.omega, self.min_value, self.max_value)

    def _raise_lam(self) -> None:
        self._lam = clip(self._lam / self.omega, self.min_value, self.max_value)

    def _rule_spec(self, thresholds: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """The spec in the order the constructor lists its arguments."""
        return self._spec(
            initial=self.initial,
            every=self.every,
            omega=self.omega,
            **thresholds,
            min_value=self.min_value,
            max_value=self.max_value,
            **extra,
        )
