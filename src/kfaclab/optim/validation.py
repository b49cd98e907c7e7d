"""The damping argument of ``KFAC``: a number means ``Constant``; a strategy passes through."""

from __future__ import annotations

import math
from typing import Any

from kfaclab.damping.base import Damping


def as_damping(damping: Any) -> Damping:
    """A float means ``Constant(damping)``; a ``Damping`` passes through."""
    if isinstance(damping, Damping):
        return damping
    ok = isinstance(damping, int | float) and not isinstance(damping, bool)
    if not (ok and math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be > 0 or a Damping strategy, got {damping!r}")
    from kfaclab.damping.constant import Constant  # the damping package imports nothing of ours

    return Constant(float(damping))
