"""Tests build ``KFAC`` from flat keyword arguments: this splits them into the constructor's own
arguments, ``KFACOptions`` and ``Speedups`` by field name (an unknown name is an error)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from kfaclab.optim import KFAC, KFACOptions, Speedups

_OPTIONS = {f.name for f in dataclasses.fields(KFACOptions)}
_SPEEDUPS = {f.name for f in dataclasses.fields(Speedups)}


def make_kfac(model: nn.Module, **kwargs: Any) -> KFAC:
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
    speedups = {k: kwargs.pop(k) for k in list(kwargs) if k in _SPEEDUPS}
    return KFAC(model, **kwargs, options=KFACOptions(**options), speedups=Speedups(**speedups))
