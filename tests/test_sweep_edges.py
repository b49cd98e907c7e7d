"""Edges that mutation testing found unguarded in the sweep worker and the learning-curve band:
a complete study gives a worker nothing to do, a full cell starts no trial, and the band is the
textbook t-interval (checked against scipy's Student t, an independent implementation)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState
from scipy import stats

from cli_helpers import tiny_protocol
from kfaclab.analysis.statistics.intervals import curve_band
from kfaclab.study.cells import build_cells
from kfaclab.study.protocol import load_protocol
from kfaclab.study.storage import StorageSpec
from kfaclab.study.sweep import Worker, cell_counts
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

CALLS: list[TrialConfig] = []


def quick_trial(config: TrialConfig) -> TrialResult:
    CALLS.append(config)
    value = abs(math.log10(config.lr) + 1.5)
    return TrialResult(config, "ok", value, 2, 0.0, [2.3, 2.2], [EvalPoint(2, value, value, 0.1)])


def test_complete_study_gives_a_worker_nothing_to_run(tmp_path: Path) -> None:
    p = load_protocol(tiny_protocol(tmp_path))
    spec = StorageSpec(folder=tmp_path / "out")
    assert Worker(p, spec, trial_fn=quick_trial).run() == 1  # n_trials = 1
    CALLS.clear()
    assert Worker(p, spec, trial_fn=quick_trial).run() == 0
    assert CALLS == []


def test_starting_a_trial_on_a_full_cell_returns_nothing(tmp_path: Path) -> None:
    p = load_protocol(tiny_protocol(tmp_path))
    spec = StorageSpec(folder=tmp_path / "out")
    worker = Worker(p, spec, trial_fn=quick_trial)
    worker.run()
    cell = build_cells(p)[0]
    before = cell_counts(worker.studies[cell.name])
    assert before == (1, 0, 0)
    assert worker._start(cell) is None
    assert cell_counts(worker.studies[cell.name]) == before  # no trial created either
    states = [t.state for t in worker.studies[cell.name].get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE]


@pytest.mark.parametrize(("n", "level"), [(2, 0.95), (5, 0.95), (30, 0.9), (8, 0.99)])
def test_curve_band_is_t_times_sd_over_root_n(n: int, level: float) -> None:
    rng = np.random.default_rng(n)
    curves = rng.lognormal(size=(n, 7))
    mean, low, high = curve_band(curves, level)
    sd = np.array([np.std(curves[:, j], ddof=1) for j in range(7)])
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    assert np.allclose(mean, curves.sum(axis=0) / n, rtol=1e-12)
    assert np.allclose(high - mean, half, rtol=1e-9)
    assert np.allclose(mean - low, half, rtol=1e-9)


def test_curve_band_of_one_curve_has_no_band() -> None:
    mean, low, high = curve_band(np.array([[1.0, 2.0, 3.0]]))
    assert mean.tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(low).all() and np.isnan(high).all()
