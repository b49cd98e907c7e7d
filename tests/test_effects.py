"""Effects estimation on synthetic responses with known effects: the estimates recover them
within their intervals, equal the textbook contrasts, and the intervals are the replicates'
t-intervals computed independently; the half-normal plot's data; the λ-response helpers."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats

from kfaclab.analysis.effects.halfnormal import draw_half_normal, half_normal
from kfaclab.analysis.effects.model import Observation, fit_effects, lenth_pse
from kfaclab.analysis.effects.report import RunValues, cost_line, level_means, plain_words
from kfaclab.analysis.effects.responses import (
    RunData,
    kfac_trial_seconds,
    log10_best_lambda,
    loss_gap_at_one,
    parabola_vertex,
    smallest_lambda_divergence,
    smallest_lambda_rerun_divergence,
    wall_minutes,
)
from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.study.cells import CellInfo
from kfaclab.study.design_schema import Design, parse_design
from kfaclab.study.reader import StoredTrial, StudySet
from test_design_schema import base


def screen(seeds: list[int]) -> Design:
    """A 2^(7−3)_IV design over seven real protocol keys (responses here are synthetic)."""
    raw = base()
    pool = [
        ("model.activation", "relu", "tanh"),
        ("model.init", "torch", "he"),
        ("training.fisher", "empirical", "mc"),
        ("training.factor_every", 1, 10),
        ("training.eigen_floor", 0.0, 1e-10),
        ("training.inverse_every", 10, 100),
        ("search.lr_scale", "none", "lambda"),
    ]
    raw["design"] = {
        "kind": "fraction",
        "generators": ["E = ABC", "F = BCD", "G = ACD"],
        "seeds": seeds,
        "factors": [
            {"name": name, "levels": [{key: lo}, {key: hi}]}
            for name, (key, lo, hi) in zip("abcdefg", pool, strict=True)
        ],
    }
    return parse_design(raw)


TRUE = {"A": 0.8, "D": -0.5, "AB=CE=FG": 0.3}  # effects: mean at + minus mean at −


def synthetic(design: Design, sigma: float, rng: np.random.Generator) -> list[Observation]:
    out = []
    for run in design.runs:
        x = [1.0 if level else -1.0 for level in run.levels]
        # y = μ + ½·effect·x for each active term (effect = 2 × coefficient), a seed shift, noise
        y = 2.0 + 0.4 * x[0] - 0.25 * x[3] + 0.15 * x[0] * x[1] + 0.1 * run.seed
        out.append(Observation(run.levels, run.seed, y + sigma * rng.standard_normal()))
    return out


def test_effects_recover_known_effects_within_their_intervals() -> None:
    design = screen([0, 1])
    exact = fit_effects(design, synthetic(design, 0.0, np.random.default_rng(0)), "y")
    for e in exact.effects:  # noise-free: exact, up to rounding
        assert e.estimate == pytest.approx(TRUE.get(e.term, 0.0), abs=1e-12), e
    table = fit_effects(design, synthetic(design, 0.05, np.random.default_rng(0)), "y")
    assert table.n_obs == 32 and table.df_resid == 16 and len(table.effects) == 14
    by_term = {e.term: e for e in table.effects}
    for term, e in by_term.items():
        # within two half-widths (~4 standard errors) of the truth, and clear of 0 iff real
        assert abs(e.estimate - TRUE.get(term, 0.0)) < e.ci_high - e.ci_low, (term, e)
        assert e.clear_of_zero == (term in TRUE)
    assert by_term["AB=CE=FG"].names == "a×b = c×e = f×g"


def test_intervals_cover_the_true_effects_95_percent_of_the_time() -> None:
    design = screen([0, 1])
    hits = [
        e.ci_low <= TRUE.get(e.term, 0.0) <= e.ci_high
        for rep in range(100)
        for e in fit_effects(
            design, synthetic(design, 0.05, np.random.default_rng(rep)), "y"
        ).effects
    ]
    # 1400 intervals: the coverage's standard error is 0.006
    assert 0.93 <= np.mean(hits) <= 0.97


def test_estimates_and_intervals_match_an_independent_computation() -> None:
    design = screen([0, 1])
    obs = synthetic(design, 0.2, np.random.default_rng(1))
    table = fit_effects(design, obs, "y")
    y = np.array([o.value for o in obs])
    coded = np.array([[1.0 if v else -1.0 for v in o.levels] for o in obs])
    # The textbook contrast: mean at + minus mean at − (the design is orthogonal and balanced).
    for i, e in enumerate(table.effects[:7]):
        contrast = y[coded[:, i] > 0].mean() - y[coded[:, i] < 0].mean()
        assert e.estimate == pytest.approx(contrast, abs=1e-12)
    ab = coded[:, 0] * coded[:, 1]
    assert table.effects[7].estimate == pytest.approx(y[ab > 0].mean() - y[ab < 0].mean())
    # σ² from the residuals of the same model fitted by numpy, the interval from scipy's t.
    cols = [np.ones(32), *coded.T]
    for chain in design.two_level.estimable()[7:]:  # type: ignore[union-attr]
        w = chain[0]
        cols.append(np.prod([coded[:, i] for i in range(7) if w >> i & 1], axis=0))
    cols.append(np.array([1.0 if o.seed == 1 else 0.0 for o in obs]))
    X = np.stack(cols, axis=1)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    df = 32 - X.shape[1]
    half = stats.t.ppf(0.975, df) * 2 * math.sqrt(resid @ resid / df / 32)  # Var(effect)=4σ²/N
    for e in table.effects:
        assert e.ci_high - e.estimate == pytest.approx(half, rel=1e-9)


def test_no_replicates_no_intervals_and_says_so() -> None:
    from test_design_schema import half_fraction

    design = parse_design(half_fraction(seeds=[0]))  # 4 runs, 1 + 3 parameters: saturated
    obs = [Observation(r.levels, r.seed, 1.0 + 0.5 * r.levels[0]) for r in design.runs]
    table = fit_effects(design, obs, "y")
    assert table.df_resid == 0 and table.effects[0].estimate == pytest.approx(0.5)
    assert all(math.isnan(e.ci_low) for e in table.effects)
    assert "no residual degrees of freedom (no replicates): no intervals" in table.notes
    assert table.interval == "none"


def test_lenth_pseudo_standard_error_by_hand() -> None:
    # |c| = 0.1…1.2 and one real 10: s0 = 1.5 × 0.6 = 0.9; |c| < 2.25 keeps the twelve small
    # ones, whose median is 0.65; PSE = 1.5 × 0.65 = 0.975.
    c = [10.0, -0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8, -0.9, 1.0, -1.1, 1.2]
    assert lenth_pse(c) == pytest.approx(0.975)
    assert lenth_pse([0.0] * 8) == 0.0


def test_one_seed_gets_lenth_intervals_that_find_the_real_effects() -> None:
    one_seed = screen([0])  # 16 runs, 15 parameters: OLS would have 1 df (the 3FI class)
    hits = false = 0
    for rep in range(20):
        table = fit_effects(one_seed, synthetic(one_seed, 0.05, np.random.default_rng(rep)), "y")
        assert table.interval == "lenth" and table.df_resid == 1
        est = [e.estimate for e in table.effects]
        pse = lenth_pse(est)
        half = stats.t.ppf(0.975, 14 / 3) * pse
        for e in table.effects:
            assert e.ci_high - e.estimate == pytest.approx(half, rel=1e-9)
        real = {e.term for e in table.effects if e.clear_of_zero}
        assert {"A", "D"} <= real  # 0.8 and -0.5 against σ_effect = 0.025
        hits += "AB=CE=FG" in real
        false += len(real - set(TRUE))
    assert hits >= 18
    assert false / (20 * 11) <= 0.10  # Lenth's test is near its 5% level on the 11 null effects


def test_a_seed_with_no_finished_run_changes_nothing() -> None:
    # A two-seed design whose second seed has not run yet: its runs are NaN and its block must not
    # enter the model (an all-zero column made every effect "not estimable").
    two = screen([0, 1])
    obs = synthetic(two, 0.05, np.random.default_rng(4))
    half = [o if o.seed == 0 else Observation(o.levels, o.seed, math.nan) for o in obs]
    table = fit_effects(two, half, "y")
    alone = fit_effects(screen([0]), [o for o in obs if o.seed == 0], "y")
    assert len(table.effects) == 14 and table.interval == "lenth"
    assert [e.estimate for e in table.effects] == pytest.approx([e.estimate for e in alone.effects])
    assert table.notes[0] == "16 of 32 runs have no value"
    # Two of seed 1's runs finished: 2 residual df, fewer than Lenth's 14/3, so still Lenth's.
    first_two = [o for o in obs if o.seed == 1][:2]
    partial = fit_effects(two, [*[o for o in obs if o.seed == 0], *first_two], "y")
    assert partial.df_resid == 2 and partial.interval == "lenth"
    full = fit_effects(two, obs, "y")
    assert full.df_resid == 16 and full.interval == "replicates"


def test_missing_runs_fall_back_to_main_effects() -> None:
    design = screen([0])
    obs = synthetic(design, 0.05, np.random.default_rng(3))
    for i in (5, 9):  # 14 runs left for 1 + 14 parameters
        obs[i] = Observation(obs[i].levels, obs[i].seed, math.nan)
    table = fit_effects(design, obs, "y")
    assert [e.term for e in table.effects] == list("ABCDEFG")
    assert table.notes[:2] == [
        "2 of 16 runs have no value",
        "missing runs leave the interactions inestimable: main effects only",
    ]
    assert table.effects[0].estimate == pytest.approx(0.8, abs=0.1)


def test_three_level_factor_effects_are_level_differences() -> None:
    raw = base()
    raw["design"] = {
        "kind": "full",
        "seeds": [0, 1, 2],
        "factors": [
            {
                "name": "act",
                "levels": [{"model.activation": a} for a in ("relu", "tanh", "identity")],
            }
        ],
    }
    design = parse_design(raw)
    rng = np.random.default_rng(4)
    means = [1.0, 1.5, 0.7]
    obs = [
        Observation(r.levels, r.seed, means[r.levels[0]] + 0.01 * rng.standard_normal())
        for r in design.runs
    ]
    table = fit_effects(design, obs, "y")
    assert [e.names for e in table.effects] == ["act[tanh−relu]", "act[identity−relu]"]
    for e, truth in zip(table.effects, (0.5, -0.3), strict=True):
        assert e.ci_low <= truth <= e.ci_high and e.estimate == pytest.approx(truth, abs=0.03)


def test_plain_words_give_the_level_means_behind_a_clear_main_effect() -> None:
    design = screen([0, 1])
    obs = synthetic(design, 0.05, np.random.default_rng(0))
    runs = [
        RunValues(r.name, r.seed, r.levels, {"y": o.value})
        for r, o in zip(design.runs, obs, strict=True)
    ]
    table = fit_effects(design, obs, "y")
    a = next(e for e in table.effects if e.term == "A")
    (lo, m_lo, n_lo), (_, m_hi, n_hi) = level_means(design, runs, "y", a.names)
    assert (n_lo, n_hi) == (16, 16) and m_hi - m_lo == pytest.approx(a.estimate, abs=1e-12)
    by_hand = np.mean([o.value for o in obs if o.levels[0] == 0])
    assert m_lo == pytest.approx(by_hand, abs=1e-12)
    words = plain_words(table, design, runs)
    assert f"{a.names} {a.estimate:+.3g}" in words and f"({lo} {m_lo:.3g}, 16 runs;" in words
    assert "a×b" in words and "a×b = c×e = f×g +0." in words  # a chain: no level means
    runs[0].values["y"] = math.nan  # a missing run leaves its level with 15
    assert [n for _, _, n in level_means(design, runs, "y", a.names)] == [15, 16]


def test_half_normal_data_and_figure(tmp_path: Any) -> None:
    design = screen([0, 1])
    table = fit_effects(design, synthetic(design, 0.05, np.random.default_rng(0)), "y")
    data = half_normal(table)
    m = len(data.labels)
    expected = [stats.halfnorm.ppf((i - 0.5) / m) for i in range(1, m + 1)]
    assert data.quantiles == pytest.approx(expected, abs=1e-12)
    assert data.abs_effects == sorted(data.abs_effects)
    assert data.labels[-1] == "a" and data.labels[-2] == "d"  # |0.8| > |−0.5| > 0.3
    assert data.terms[-3:] == ["AB=CE=FG", "D", "A"]  # the plot's short labels, same order
    assert data.legend == "A = a, B = b, C = c, D = d, E = e, F = f, G = g"
    assert sum(data.clear_of_zero) == 3 and all(data.clear_of_zero[-3:])
    assert data.interval == "replicates"
    # the noise line's slope is the effects' standard error: σ √(1/16 + 1/16) for a difference of
    # two means of 16 runs each at σ = 0.05, estimated from 16 residual df (±18% a draw), so
    # averaged over 20 draws
    slopes = [
        half_normal(fit_effects(design, synthetic(design, 0.05, np.random.default_rng(r)), "y"))
        for r in range(20)
    ]
    assert np.mean([h.noise_slope for h in slopes]) == pytest.approx(0.05 / math.sqrt(8), rel=0.1)
    png, svg = draw_half_normal(data, tmp_path, "hn")
    assert png.stat().st_size > 1000 and svg.exists()
    one = screen([0])
    lenth = half_normal(fit_effects(one, synthetic(one, 0.05, np.random.default_rng(0)), "y"))
    assert lenth.interval == "lenth" and all(lenth.clear_of_zero[-2:])
    assert lenth.noise_slope == lenth_pse(sorted(lenth.abs_effects))  # |c| is all Lenth reads
    draw_half_normal(lenth, tmp_path, "hn-lenth")  # its title names Lenth's interval


def _run(values: dict[float, list[float]]) -> RunData:
    """A run whose λ cells hold trials with these final losses (inf = diverged)."""
    cells, trials = [], []
    for lam, losses in values.items():
        name = f"kfac-lam={lam:.0e}"
        cells.append(CellInfo(name, "kfac", lam, f"{lam:.0e}", len(losses), 2))
        for k, v in enumerate(losses):
            status = "ok" if math.isfinite(v) else "diverged"
            trials.append(StoredTrial(name, k, "COMPLETE", status, v, {}, 1.0))
    return RunData("run01-seed0", 0, (0,), StudySet({}, cells, trials))


def test_lambda_responses_on_known_curves() -> None:
    # top-2 means follow (log10 λ − 0.3)² + 0.1 at log10 λ = −2, −1, 0, 1: vertex at 0.3.
    f = {e: (e - 0.3) ** 2 + 0.1 for e in (-2, -1, 0, 1)}
    run = _run({10.0**e: [f[e], f[e], f[e] + 5, math.inf] for e in f} | {1e-3: [math.inf] * 4})
    assert parabola_vertex(np.array([-1.0, 0.0, 1.0]), np.array([f[-1], f[0], f[1]])) == (
        pytest.approx(0.3)
    )
    assert log10_best_lambda(run) == pytest.approx(0.3)
    assert loss_gap_at_one(run) == pytest.approx(0.0)  # λ = 1 is the grid's best cell
    assert smallest_lambda_divergence(run) == 1.0  # λ = 1e-3: every trial diverged
    edge = _run({1e-2: [0.1, 0.1], 1e-1: [0.2, 0.2], 1.0: [0.3, 0.4]})
    assert log10_best_lambda(edge) == pytest.approx(-2.0)
    assert loss_gap_at_one(edge) == pytest.approx(0.25)
    assert "clamped to the grid's smallest λ" in edge.notes[0]


def _rerun(cell: str, seed: int, value: float) -> RerunOutcome:
    lam = float(cell.split("=")[1])
    diverged_at = None if math.isfinite(value) else 7
    return RerunOutcome(cell, cell, lam, 0, 0, seed, "k", value, diverged_at, 1.0, [2.3])


def test_smallest_lambda_rerun_divergence_counts_every_rerun_of_that_cell() -> None:
    # 3 of the search's 4 trials at λ = 1e-3 diverged (TPE's proposals), but of its top
    # configurations rerun on new seeds 2 of 5 diverge; the reruns of λ = 1e-2 do not count.
    run = _run({1e-3: [math.inf, math.inf, 0.5, math.inf], 1e-2: [0.3, 0.2]})
    assert smallest_lambda_divergence(run) == 0.75
    assert math.isnan(smallest_lambda_rerun_divergence(run))
    assert "no paired reruns of kfac-lam=1e-03" in run.notes[-1]
    values = [0.4, math.inf, 0.5, math.inf, 0.45]
    run.reruns = [_rerun("kfac-lam=1e-03", s, v) for s, v in enumerate(values)]
    run.reruns += [_rerun("kfac-lam=1e-02", s, math.inf) for s in range(3)]
    assert smallest_lambda_rerun_divergence(run) == pytest.approx(2 / 5)
    # A cell whose every trial diverged has nothing to rerun: it counts as diverging.
    hopeless = _run({1e-3: [math.inf] * 4, 1e-2: [0.3, 0.2]})
    assert smallest_lambda_rerun_divergence(hopeless) == 1.0
    assert "every trial of kfac-lam=1e-03 diverged" in hopeless.notes[-1]


def test_cost_responses_from_the_trials_start_and_end_times() -> None:
    # Two K-FAC trials of 2 s and 4 s and an SGD trial of 1 s, then a 20-minute pause (a sweep
    # stopped between sessions) and one more 4-s K-FAC trial: the pause is not wall time.
    t0 = datetime(2026, 12, 7, 0, 0, 0)
    spans = [
        ("kfac-lam=1e-01", 0, 2),
        ("kfac-lam=1e+00", 0, 4),
        ("sgd", 4, 5),
        ("kfac-lam=1e+00", 1205, 1209),
    ]
    cells = [
        CellInfo("kfac-lam=1e-01", "kfac", 0.1, "1e-01", 1, 1),
        CellInfo("kfac-lam=1e+00", "kfac", 1.0, "1e+00", 2, 1),
        CellInfo("sgd", "sgd", None, "SGD", 1, 1),
    ]
    trials = [
        StoredTrial(
            cell,
            k,
            "COMPLETE",
            "ok",
            0.1,
            {},
            float(end - start),
            started=t0 + timedelta(seconds=start),
            completed=t0 + timedelta(seconds=end),
        )
        for k, (cell, start, end) in enumerate(spans)
    ]
    run = RunData("run01-seed0", 0, (0,), StudySet({}, cells, trials))
    assert kfac_trial_seconds(run) == pytest.approx((2 + 4 + 4) / 3)
    assert wall_minutes(run) == pytest.approx((5 + 4) / 60)  # 5 s, the pause, then 4 s
    runs = [
        RunValues("a", 0, (0,), {"wall_minutes": 30.0, "kfac_trial_seconds": 2.5}),
        RunValues("b", 0, (1,), {"wall_minutes": 60.0, "kfac_trial_seconds": 1.5}),
        RunValues("c", 1, (0,), {"wall_minutes": math.nan, "kfac_trial_seconds": math.nan}),
    ]
    assert cost_line(runs) == (
        "Cost: 2 finished runs took 1.5 h of active wall time (30–60 min a run); a K-FAC trial "
        "1.50–2.50 s (mean over each run's trials). The effects on `wall_minutes` and "
        "`kfac_trial_seconds` say which choices cost."
    )
