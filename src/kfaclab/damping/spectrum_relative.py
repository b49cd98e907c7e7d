"""Per-layer damping proportional to each layer's curvature scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from kfaclab.damping._common import Strategy, positive
from kfaclab.damping.base import LayerSpectrum


class SpectrumRelative(Strategy):
    """λ_l = c · (mean eigenvalue of G_l⊗A_l), per preconditioned layer.

    Why: a single global λ means very different things in different layers (their curvature
    scales differ by orders of magnitude; the diagnostics' "λ relative to the mean eigenvalue"
    shows it). Fixing the *relative* λ keeps the fraction of each layer's spectrum that damping
    dominates comparable across layers and over training. The mean eigenvalue of G⊗A is
    mean(eig A)·mean(eig G) = (tr A/dim A)(tr G/dim G), since the eigenvalues of a Kronecker
    product are the pairwise products.

    Fallbacks (``mean_eigenvalue`` is ``None`` before the first decomposition, or always with a
    damping form that has no eigenvalues, e.g. ``factored``; it can be 0 or tiny for a dead layer):

    - ``None`` or non-finite: the layer keeps its last λ_l; a layer never seen gets ``c``
      (as if its mean eigenvalue were 1), floored.
    - otherwise λ_l = max(c · mean_eigenvalue, ``min_value``): the floor keeps the damped
      inverse well defined when a layer's curvature vanishes (0, or slightly negative from
      rounding) (default 1e-8, the same floor as
      the Levenberg–Marquardt rule).

    ``value()`` (what traces show) is the arithmetic mean of the λ_l of the last call to
    ``layer_values``, or ``max(c, min_value)`` before any call.

    Cost per step: one multiply per layer; the eigenvalues come from the decomposition the
    exact damping form computes anyway, so it updates with it at no extra cost.
    """

    KIND: ClassVar[str] = "spectrum_relative"

    def __init__(self, c: float, min_value: float = 1e-8) -> None:
        self.c = positive(f"{self.KIND}.c", c)
        self.min_value = positive(f"{self.KIND}.min_value", min_value)
        self._fallback = max(self.c, self.min_value)
        self._last: dict[str, float] = {}  # layer name -> λ_l of the latest call
        self._current: list[str] = []  # names in the latest call, in order (value() averages)

    def layer_values(self, spectra: Sequence[LayerSpectrum]) -> list[float]:
        values: list[float] = []
        for spectrum in spectra:
            m = spectrum.mean_eigenvalue
            if m is None or not math.isfinite(m):
                lam = self._last.get(spectrum.name, self._fallback)
            else:
                # A tiny negative mean (float32 eigh on a near-zero factor) also lands on the
                # floor: G⊗A is PSD, and a training run must not end over rounding.
                lam = max(self.c * m, self.min_value)
            self._last[spectrum.name] = lam
            values.append(lam)
        self._current = [s.name for s in spectra]
        return values

    def value(self) -> float:
        if not self._current:
            return self._fallback
        return sum(self._last[name] for name in self._current) / len(self._current)

    def state_dict(self) -> dict[str, Any]:
        return {"layers": dict(self._last), "current": list(self._current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = {str(k): float(v) for k, v in state["layers"].items()}
        self._current = [str(name) for name in state["current"]]

    def describe(self) -> dict[str, Any]:
        return self._spec(c=self.c, min_value=self.min_value)
