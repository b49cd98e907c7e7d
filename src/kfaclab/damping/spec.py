"""Damping specs: ``{"kind": "<name>", **constants}`` (or a bare float) ↔ strategy objects.

Specs are what trial configs, TOML protocols and reports store; ``Damping.describe()`` writes
them and :func:`build_damping` reads them back.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from kfaclab.damping._common import Strategy
from kfaclab.damping.base import Damping
from kfaclab.damping.constant import Constant
from kfaclab.damping.levenberg_marquardt import LevenbergMarquardt
from kfaclab.damping.loss_trend import LossTrend
from kfaclab.damping.schedule import ExponentialDecay, LinearDecay
from kfaclab.damping.spectrum_relative import SpectrumRelative
from kfaclab.errors import UsageError

_CLASSES: tuple[type[Strategy], ...] = (
    Constant,
    ExponentialDecay,
    LinearDecay,
    LevenbergMarquardt,
    SpectrumRelative,
    LossTrend,
)
#: kind -> strategy class; each class's constructor arguments are the spec's allowed keys.
KINDS: dict[str, type[Strategy]] = {cls.KIND: cls for cls in _CLASSES}


def allowed_keys(kind: str) -> tuple[str, ...]:
    """The constants a spec of ``kind`` may set (besides ``kind``), in constructor order."""
    params = inspect.signature(KINDS[kind]).parameters
    return tuple(params)


def build_damping(spec: float | Mapping[str, Any]) -> Damping:
    """A strategy from its spec. A number means ``Constant(value)``.

    Raises UsageError naming the offending key and the allowed ones for a missing or unknown
    ``kind`` or an unknown key; each strategy validates its own constants.
    """
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return Constant(spec)
    if not isinstance(spec, Mapping):
        raise UsageError(f"damping must be a number > 0 or a mapping with a kind, got {spec!r}")
    kinds = ", ".join(KINDS)
    if "kind" not in spec:
        raise UsageError(f"damping.kind is required (one of {kinds}), got {dict(spec)!r}")
    kind = spec["kind"]
    if kind not in KINDS:
        raise UsageError(f"damping.kind must be one of {kinds}, got {kind!r}")
    allowed = allowed_keys(kind)
    constants = {k: v for k, v in spec.items() if k != "kind"}
    for key in constants:
        if key not in allowed:
            raise UsageError(
                f"damping key {key!r} is not allowed for kind {kind!r}; "
                f"allowed: {', '.join(allowed)}"
            )
    for key, param in inspect.signature(KINDS[kind]).parameters.items():
        # Checked here so a missing constant is a one-line UsageError, not a TypeError.
        if param.default is inspect.Parameter.empty and key not in constants:
            raise UsageError(f"{kind}.{key} is required; allowed: {', '.join(allowed)}")
    return KINDS[kind](**constants)
