"""Argument checks of ``KFAC``: each error names the argument, the rule and the bad value."""

from __future__ import annotations

import math
from typing import Any

from kfaclab.damping.base import Damping

_CHOICES = {
    "damping_form": ("exact", "factored"),
    "fisher": ("empirical", "mc"),
    "loss_reduction": ("mean", "sum"),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def validate_arguments(
    *,
    lr: Any,
    momentum: Any,
    factor_decay: Any,
    factor_every: Any,
    inverse_every: Any,
    damping_form: Any,
    fisher: Any,
    weight_decay: Any,
    kl_clip: Any,
    loss_reduction: Any,
) -> None:
    _require(_is_number(lr) and lr > 0, "lr", "> 0", lr)
    _require(_is_number(momentum) and 0 <= momentum < 1, "momentum", "in [0, 1)", momentum)
    _require(
        _is_number(factor_decay) and 0 <= factor_decay < 1,
        "factor_decay",
        "in [0, 1)",
        factor_decay,
    )
    for name, value in (("factor_every", factor_every), ("inverse_every", inverse_every)):
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            name,
            "an integer >= 1",
            value,
        )
    _require(_is_number(weight_decay) and weight_decay >= 0, "weight_decay", ">= 0", weight_decay)
    _require(
        kl_clip is None or (_is_number(kl_clip) and kl_clip > 0), "kl_clip", "None or > 0", kl_clip
    )
    for name, value in (
        ("damping_form", damping_form),
        ("fisher", fisher),
        ("loss_reduction", loss_reduction),
    ):
        allowed = _CHOICES[name]
        _require(value in allowed, name, "one of " + ", ".join(map(repr, allowed)), value)


def as_damping(damping: Any) -> Damping:
    """A float means ``Constant(damping)``; a ``Damping`` passes through."""
    if isinstance(damping, Damping):
        return damping
    _require(_is_number(damping) and damping > 0, "damping", "> 0 or a Damping strategy", damping)
    from kfaclab.damping.constant import Constant  # the damping package imports nothing of ours

    return Constant(float(damping))
