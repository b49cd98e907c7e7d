"""Summaries as data: checked against direct numpy computations from the exported trials."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kfaclab.analysis import summarize
from kfaclab.analysis.statistics.intervals import best_of_m, mean_ci, t_quantile, welch
from kfaclab.analysis.summary.reruns import ensure_reruns, load_reruns
from kfaclab.analysis.summary.summaries import trials_by_cell
from kfaclab.trial_types import TrialConfig, TrialResult
from report_fakes import make_study, smoke_dir


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from kfaclab.study import load_study_set

    return load_study_set(str(smoke_dir(tmp_path_factory.getbasetemp())))


def _direct_top(study, cell):  # type: ignore[no-untyped-def]
    """The top-k by a direct reading of docs/interfaces.md: finished, finite, lowest value first."""
    ok = [
        t
        for t in study.trials
        if t.cell == cell.name
        and t.state == "COMPLETE"
        and t.status == "ok"
        and math.isfinite(t.value)
    ]
    return sorted(ok, key=lambda t: t.value)[: cell.top_k]


@pytest.mark.parametrize("source", ["smoke", "fake"])
def test_cell_numbers_match_direct_computation(source: str, request: pytest.FixtureRequest) -> None:
    study = request.getfixturevalue("smoke") if source == "smoke" else make_study()
    summary = summarize(study)
    by_name = {c.name: c for c in summary.cells}
    assert set(by_name) == {c.name for c in study.cells}
    for cell in study.cells:
        s = by_name[cell.name]
        top = _direct_top(study, cell)
        assert s.top_numbers == [t.number for t in top]
        done = [t for t in study.trials if t.cell == cell.name and t.state == "COMPLETE"]
        n_div = sum(t.status == "diverged" for t in done)
        assert s.n_diverged == n_div
        if done:
            assert s.divergence_rate == pytest.approx(n_div / len(done))
        if not top:
            assert s.final_loss.n == 0 and s.curve is None and s.best is None
            continue
        values = np.array([t.value for t in top])
        assert s.final_loss.mean == pytest.approx(values.mean())
        if len(top) > 1:
            assert s.final_loss.sd == pytest.approx(values.std(ddof=1))
        acc = np.array([t.record.evals[-1].test_accuracy for t in top])
        assert s.test_accuracy.mean == pytest.approx(acc.mean())
        curves = [t.record.step_losses for t in top]
        n = min(map(len, curves))
        direct = np.array([c[:n] for c in curves]).mean(axis=0)
        assert s.curve is not None
        np.testing.assert_allclose(s.curve.mean, direct, rtol=1e-12)
        assert s.best is not None and s.best.number == top[0].number
        assert s.best.params == dict(top[0].params)


def test_smoke_has_the_expected_cells(smoke) -> None:  # type: ignore[no-untyped-def]
    summary = summarize(smoke)
    assert summary.sgd is not None
    assert [c.lam for c in summary.fixed] == sorted(c.lam for c in summary.fixed)
    assert summary.complete


def test_diverged_and_running_cells_are_reported() -> None:
    s = summarize(make_study())
    dead = next(c for c in s.cells if c.lam == 100.0)
    assert dead.n_ok == 0 and dead.divergence_rate == 1.0
    assert any("every finished trial diverged" in n for n in dead.notes)
    running = next(c for c in s.cells if c.strategy is not None)
    assert not running.finished and running.n_running == 4
    assert any("still running" in n for n in running.notes)
    assert not s.complete


def test_histograms_are_summed_and_normalised() -> None:
    study = make_study()
    s = summarize(study)
    h = s.histograms
    assert h is not None and h.labels == ["λ=1e-04", "λ=1e+00", "λ=1e+01"]
    cell = next(c for c in s.cells if c.label == "λ=1e+00")
    tops = [t for t in study.trials if t.cell == cell.name and t.number in cell.top_numbers]
    j, i = 2, 3  # iteration 180, layer 4
    direct = sum(np.array(t.record.histograms["180"][h.layers[i]], dtype=float) for t in tops)
    direct /= direct.sum()
    np.testing.assert_allclose(h.fractions["λ=1e+00"][j][i], direct[1:-1])
    assert h.underflow["λ=1e+00"][j][i] == pytest.approx(direct[0])


def test_curvature_is_the_median_over_the_top_k() -> None:
    study = make_study()
    s = summarize(study)
    cs = s.curvature
    assert cs is not None and "eig_A_hist" not in cs.metrics  # non-scalar entries skipped
    k = cs.labels.index("λ=1e+01")
    cell = next(c for c in s.cells if c.label == "λ=1e+01")
    tops = [t for t in study.trials if t.cell == cell.name and t.number in cell.top_numbers]
    direct = np.median([t.record.curvature["360"]["4"]["condition_number"] for t in tops])
    assert cs.values["condition_number"][k][cs.steps.index(360)][cs.layers.index("4")] == direct


def test_edge_warning_and_adaptive_section() -> None:
    s = summarize(make_study())
    assert any(w.param == "lr" and w.edge == "high" for w in s.edge_warnings)
    sec = s.adaptive
    assert sec is not None
    means = [r.final_loss.mean for r in sec.rows]
    assert means == sorted(means)
    fixed = next(r for r in sec.rows if r.kind == "fixed")
    grid = [c for c in s.cells if c.lam is not None]
    assert fixed.trials_total == sum(c.n_complete for c in grid)  # the whole grid is paid for
    assert {r.kind for r in sec.rows} == {"adaptive", "fixed", "sgd"}


def test_t_quantile_matches_the_textbook_table() -> None:
    # t₀.₉₇₅ with df degrees of freedom, as printed in every table (3 decimals)
    for df, printed in ((1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042), (299, 1.968)):
        assert t_quantile(0.975, df) == pytest.approx(printed, abs=5e-4)
    ci = mean_ci([1.0, 2.0, 4.0])
    half = 4.303 * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert (ci.lo, ci.hi) == pytest.approx((7 / 3 - half, 7 / 3 + half), rel=1e-3)


def test_welch_interval_is_scipys_unequal_variance_t_test_with_whole_df() -> None:
    """From the summaries alone, scipy's Welch test on the raw values — its difference, standard
    error and Satterthwaite df — with the df floored to a whole number (the documented choice)."""
    stats = pytest.importorskip("scipy.stats")
    a = np.array([0.31, 0.35, 0.29, 0.4, 0.33])
    b = np.array([0.5, 0.2, 0.45, 0.38])
    d = welch(mean_ci(a), mean_ci(b))
    ref = stats.ttest_ind(a, b, equal_var=False)
    diff = a.mean() - b.mean()
    half = stats.t.ppf(0.975, math.floor(ref.df)) * diff / ref.statistic
    assert (d.lo, d.hi) == pytest.approx((diff - abs(half), diff + abs(half)), rel=1e-9)
    fractional = ref.confidence_interval(0.95)
    assert d.lo < fractional.low and d.hi > fractional.high  # wider: the conservative side


def test_best_of_m_matches_enumeration() -> None:
    values = [0.5, 0.2, math.inf, 0.9, 0.3, 0.2]
    b = best_of_m(values)
    for m in range(1, len(values) + 1):
        mins = [min(c) for c in itertools.combinations(values, m)]
        expected = float(np.mean(mins))
        assert (
            b.mean[m - 1] == pytest.approx(expected)
            if math.isfinite(expected)
            else math.isinf(b.mean[m - 1])
        )
        assert b.median[m - 1] == pytest.approx(
            float(np.quantile(mins, 0.5, method="inverted_cdf"))
        )


def test_budget_reading_quotes_the_half_budget_against_enumerated_halves() -> None:
    """The budget paragraph's numbers, recomputed here by enumerating every half of the trials."""
    from kfaclab.analysis.report import narrative

    s = summarize(make_study())
    text = narrative.budget(s)
    cell = next(c for c in s.cells if c.label == "SGD")
    values = cell.values_in_order
    n, best = len(values), min(values)
    half = n // 2
    halves = [min(c) for c in itertools.combinations(values, half)]
    mean_gain = 100 * (float(np.mean(halves)) - best) / best
    q90_gain = 100 * (float(np.quantile(halves, 0.9, method="inverted_cdf")) - best) / best
    first_gain = 100 * (min(values[:half]) - best) / best

    def pct(x: float) -> str:
        return f"{x:.0f}%" if x >= 10 else f"{x:.2g}%"

    expected = (
        f"SGD: best found at trial {values.index(best) + 1} of {n}; the best of the first {half} "
        f"trials was {pct(first_gain)} higher; a random {half} of the trials give a best "
        f"{pct(mean_gain)} higher on average ({pct(q90_gain)} at the 90th percentile)."
    )
    assert expected in text
    assert mean_gain > 0  # the old median-based sentence said 0% for any cell with n ≥ 2


def test_reruns_are_cached_and_redone_when_the_best_changes(tmp_path: Path) -> None:
    study = make_study()
    s = summarize(study)
    calls: list[int] = []

    def runner(cfg: TrialConfig) -> TrialResult:
        calls.append(cfg.seed)
        base = next(t.record for t in study.trials if t.record and t.record.config.lr == cfg.lr)
        return dataclasses.replace(base, config=cfg, value=0.5)

    cells = [c for c in s.cells if c.finished and c.best is not None]
    path = tmp_path / "reruns.json"
    ensure_reruns(cells, trials_by_cell(study), [7, 8], path, runner)
    assert len(calls) == 2 * len(cells) and set(calls) == {7, 8}
    ensure_reruns(cells, trials_by_cell(study), [7, 8], path, runner)
    assert len(calls) == 2 * len(cells)  # nothing redone
    stale = dict(load_reruns(path))
    first = cells[0].name
    stale[first] = dataclasses.replace(stale[first], trial_number=-1)
    from kfaclab.analysis.summary.reruns import save_reruns

    save_reruns(path, stale)
    ensure_reruns(cells, trials_by_cell(study), [7, 8], path, runner)
    assert len(calls) == 2 * len(cells) + 2  # only the stale cell reran
    rr = summarize(study, load_reruns(path)).reruns
    assert {r.label for r in rr} == {c.label for c in cells}
    assert all(r.rerun.mean == pytest.approx(0.5) for r in rr)


def test_reruns_file_is_strict_json_and_keeps_a_diverged_rerun(tmp_path: Path) -> None:
    """A diverged rerun has loss inf and test accuracy NaN: both must survive the round trip,
    and the file must parse under a strict reader (no bare NaN / Infinity literals)."""
    from kfaclab.analysis.summary.reruns import RerunRecord, save_reruns

    path = tmp_path / "reruns.json"
    record = RerunRecord(
        "kfac-lam=1e-03", 4, [7, 8], [0.25, math.inf], [0.97, math.nan], seconds=[1.0, 0.5]
    )
    save_reruns(path, {"kfac-lam=1e-03": record})

    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON literal {token}")

    json.loads(path.read_text(), parse_constant=refuse)
    loaded = load_reruns(path)["kfac-lam=1e-03"]
    assert loaded.values[0] == 0.25 and math.isinf(loaded.values[1])
    assert loaded.test_accuracy[0] == 0.97 and math.isnan(loaded.test_accuracy[1])
    assert (loaded.seeds, loaded.seconds, loaded.trial_number) == ([7, 8], [1.0, 0.5], 4)


def test_adaptive_tuning_cost_counts_a_grid_that_ran_elsewhere() -> None:
    """An adaptive protocol carries only the best λ; [report] fixed_grid_cells scales the fixed
    route's cost to the grid that chose it."""
    study = make_study()
    grid = [c for c in summarize(study).cells if c.lam is not None]
    study.protocol = {**study.protocol, "report": {"fixed_grid_cells": 4 * len(grid)}}
    fixed = next(r for r in summarize(study).adaptive.rows if r.kind == "fixed")  # type: ignore[union-attr]
    assert fixed.trials_total == 4 * sum(c.n_complete for c in grid)
    assert "estimate" in fixed.note
