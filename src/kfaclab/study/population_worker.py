"""A sweep worker that runs its trials as populations (``kfaclab sweep --population``).

``Worker`` runs one trial at a time. This one runs rounds: it asks every open cell for its next
trial, steps those trials together as populations (``kfaclab.train.population``: one per kind
of trial, e.g. the K-FAC cells in one and SGD in another) and tells each trial's result as soon
as it ends (a diverged trial leaves the population at its step). The next round starts when the
last trial of this one has ended, so all of a round's trials share one cohort: the same batches,
layer 1's input factor and its decompositions computed once for all of them.

Each cell's sampler still sees every earlier trial of the cell finished before it proposes the
next one — exactly what it sees in a one-worker sequential sweep — so with the same seeds the
samplers propose the same points and the stored trials are those of the sequential sweep (up to
float rounding in the values, which could in principle reorder two near-equal trials). Trials
the population step does not compute (damping strategies, the CNN, KL clipping, …) run alone
through ``run_trial``, as in ``Worker``; a worker given its own trial function (tests' fakes)
runs everything through it, one trial at a time. Several trials of one cell per round
(Optuna's constant-liar batching, for a GPU's thousands of slots) is not done here.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import optuna

from kfaclab.study.cells import CellInfo
from kfaclab.study.liveness import Heartbeat
from kfaclab.study.sweep import Worker, default_trial_fn, trial_config
from kfaclab.trial_types import TrialConfig, TrialResult

InFlight = tuple[CellInfo, optuna.Trial, Heartbeat]


class PopulationWorker(Worker):
    """``Worker`` with every open cell's next trial(s) run in one population step.

    ``per_cell``: trials of each cell per round. Above 1 a cell's sampler proposes several
    points from one history (as when that many workers share the cell: each trial's sampler
    has its own seed, none sees the others' running trials), trading the strictly sequential
    search for a GPU's parallel slots."""

    def __init__(self, *args: Any, per_cell: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_cell = per_cell

    def run(self, max_trials: int | None = None) -> int:
        from kfaclab.train.population import Population, population_unsupported, shared_part

        if self.trial_fn is not None:  # a caller's own trial function cannot be batched
            return super().run(max_trials)
        fn = default_trial_fn()
        for cell in self.cells:
            self._reap(cell)
        populations: dict[TrialConfig, Population] = {}
        in_flight: dict[Hashable, InFlight] = {}
        ran, next_key = 0, 0
        try:
            # On ``stop`` the round in flight is finished first (Worker finishes its trial).
            while in_flight or not self.stop.is_set():
                ran_before = ran
                round_cells = [c for c in self.cells for _ in range(self.per_cell)]
                for cell in round_cells if not in_flight else ():  # a new round
                    if max_trials is not None and ran + len(in_flight) >= max_trials:
                        break
                    if self.stop.is_set():
                        break
                    started = self._start(cell)
                    if started is None:
                        continue
                    trial, beat = started
                    seed = int(trial.user_attrs["seed"])
                    config = trial_config(self.protocol, cell, trial.params, seed)
                    if population_unsupported(config) is not None:
                        self._finish(cell, trial, beat, fn)  # alone, as Worker does
                        ran += 1
                        continue
                    self._current = None  # in_flight holds it from here
                    kind = shared_part(config)
                    populations.setdefault(kind, Population()).add(config, next_key)
                    in_flight[next_key] = (cell, trial, beat)
                    next_key += 1
                if not in_flight:
                    if max_trials is not None and ran >= max_trials:
                        break
                    if ran == ran_before and not self._wait_for_others():
                        break  # (trials run alone this round: straight to the next)
                    continue
                for population in populations.values():
                    for key, result in population.step():
                        cell, trial, beat = in_flight.pop(key)
                        self._current = (self.studies[cell.name], trial, beat)
                        self._finish(cell, trial, beat, _Finished(result))
                        ran += 1
        except BaseException as exc:
            # As Worker.run: every asked trial not yet told is failed and re-queued.
            self._abandon_current(exc)
            for cell, trial, beat in in_flight.values():
                self._current = (self.studies[cell.name], trial, beat)
                self._abandon_current(exc)
            raise
        return ran


class _Finished:
    """A trial function that returns the result the population already computed."""

    def __init__(self, result: TrialResult) -> None:
        self.result = result

    def __call__(self, config: TrialConfig, *args: Any, **kwargs: Any) -> TrialResult:
        return self.result
