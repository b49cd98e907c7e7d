"""What analysis reads from a stored study, as structural types.

The study package owns the concrete ``StudySet``/``CellInfo``/``StoredTrial``; analysis depends
only on these attributes (see docs/interfaces.md), so it can be tested on hand-made studies and
does not import Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kfaclab.trial_types import TrialResult


class CellLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def damping(self) -> Any: ...  # float, a spec mapping, or None for SGD
    @property
    def damping_label(self) -> str: ...
    @property
    def n_trials(self) -> int: ...
    @property
    def top_k(self) -> int: ...


class TrialLike(Protocol):
    @property
    def cell(self) -> str: ...
    @property
    def number(self) -> int: ...
    @property
    def state(self) -> str: ...  # COMPLETE | RUNNING | FAIL | WAITING
    @property
    def status(self) -> str | None: ...  # ok | diverged | None
    @property
    def value(self) -> float | None: ...
    @property
    def params(self) -> Mapping[str, Any]: ...
    @property
    def seconds(self) -> float | None: ...
    @property
    def record(self) -> TrialResult | None: ...


class StudySetLike(Protocol):
    @property
    def protocol(self) -> Mapping[str, Any]: ...
    @property
    def cells(self) -> Sequence[CellLike]: ...
    @property
    def trials(self) -> Sequence[TrialLike]: ...
