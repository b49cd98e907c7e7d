"""Constant damping: the paper's fixed λ (its grid 1e-5 … 1e2)."""

from __future__ import annotations

from typing import Any, ClassVar

from kfaclab.damping._common import Strategy, positive


class Constant(Strategy):
    """λ_t = value for every step and every layer.

    Cost per step: none (no extra passes, no model reduction).
    """

    KIND: ClassVar[str] = "constant"

    def __init__(self, value: float) -> None:
        # Named "damping" in the message: a float passed as `damping=` lands here.
        self._value = positive("damping", value)

    def value(self) -> float:
        return self._value

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing evolves

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return self._spec(value=self._value)
