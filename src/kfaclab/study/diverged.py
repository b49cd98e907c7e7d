"""How a diverged trial is stored: COMPLETE, a finite penalty value, user attr status="diverged".

A diverged trial used to be told with value +inf. Every storage
accepts inf, but optuna-dashboard's plots drop it, so a diverged trial vanished from the history,
slice and parallel-coordinate plots. It is now told with a finite value, ``diverged_value``: ten
times the protocol's ``training.divergence_loss``. The trial runner ends a trial as diverged as
soon as a minibatch loss exceeds that bound and also when the final training loss does, so every
"ok" trial's value is <= the bound and the penalty ranks strictly after all of them, as inf did.

What reads the value sees exactly what it saw before:
- kfaclab's reader turns the value of a status="diverged" trial back into inf
  (reader.stored_trial), so the report, export and aggregation are unchanged.
- TPE only ranks values, and the order is the same (ties among diverged trials stay ties).
- The GP sampler is the one that uses magnitudes: it clipped inf to the worst finite value
  before fitting, while a finite penalty would be fitted as a huge outlier. ``DivergedAsInf``
  wraps the cell's sampler and shows it the diverged trials with value inf, so GP, TPE and
  random sampling propose exactly what they proposed when inf was stored.

Studies written the old way (inf stored) read the same: inf stays inf.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from kfaclab.study import records

PENALTY_FACTOR = 10.0


def diverged_value(divergence_loss: float) -> float:
    """The finite value told for a diverged trial (float max when the bound is infinite)."""
    penalty = PENALTY_FACTOR * divergence_loss
    return penalty if math.isfinite(penalty) else sys.float_info.max


def is_diverged(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and trial.user_attrs.get(records.STATUS) == "diverged"


def _as_inf(trial: FrozenTrial) -> FrozenTrial:
    if not is_diverged(trial) or trial.value == math.inf:
        return trial
    shown = copy.copy(trial)  # shallow: the sampler only reads it
    shown.value = math.inf
    return shown


class _InfView:
    """A study as a sampler reads it, with diverged trials valued inf; all else is the study."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [_as_inf(t) for t in trials]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._get_trials()


class DivergedAsInf(BaseSampler):
    """Wraps a sampler so that it sees diverged trials' values as inf (see the module doc)."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(_view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(_view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(_view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def _view(study: optuna.Study) -> optuna.Study:
    # Typed as a Study for the samplers' signatures; it forwards everything it does not change.
    return _InfView(study)  # type: ignore[return-value]
