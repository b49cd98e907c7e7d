"""One number format for every table and sentence: three significant digits, and within a column
one notation (plain decimals, or scientific if any value needs it), so 0.000276 never sits above
3.11e-05 in the same column."""

from __future__ import annotations

import math
from collections.abc import Sequence

PLAIN_LOW, PLAIN_HIGH = 1e-3, 1e4  # |x| in [1e-3, 1e4) reads well as a plain decimal


def _plain(x: float) -> bool:
    return x == 0 or PLAIN_LOW <= abs(x) < PLAIN_HIGH


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return None


def num(x: float, sci: bool | None = None) -> str:
    """x to three significant digits: "0.0641", "96.9", "3.11e-05"; "–" for nan, "∞" for inf.
    ``sci`` forces the notation (a column's choice); None picks by magnitude."""
    special = _special(x)
    if special is not None:
        return special
    if sci is None:
        sci = not _plain(x)
    if sci:
        return f"{x:.2e}"
    text = f"{x:#.3g}"  # '#' keeps trailing zeros ("0.100"): three digits means three digits
    if "e" in text:  # .3g switches to exponent form for ≥ 1000; write those as integers
        return f"{x:.0f}"
    return text.rstrip(".")


def column(values: Sequence[float]) -> list[str]:
    """A column of numbers in one notation: scientific if any finite value needs it."""
    finite = [v for v in values if math.isfinite(v)]
    sci = any(not _plain(v) for v in finite)
    return [num(v, sci) for v in values]


def percent(x: float) -> str:
    """A fraction as a percentage with three significant digits at most ("45%", "0.5%")."""
    special = _special(x)
    if special is not None:
        return special
    p = 100 * x
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"
