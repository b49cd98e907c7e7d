"""Claims as data: constructed studies whose verdict is known by construction, one per verdict
and claim, and the search-range binding rule on ranges built to sit either side of it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from kfaclab.analysis import summarize
from kfaclab.analysis.claims.paper import (
    FULL_SCALE_TRIALS,
    evaluate,
    separation_warning,
    tied_with,
)
from kfaclab.analysis.claims.types import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from kfaclab.analysis.statistics.binding import cell_bindings
from kfaclab.analysis.statistics.intervals import MeanCI, welch
from kfaclab.analysis.statistics.search import Range
from report_fakes import CellSpec, build_study


def vals(mean: float, sd: float, n: int = 20) -> list[float]:
    """n values with exactly this sample mean and sd (a standardised evenly spaced grid)."""
    z = np.linspace(-1, 1, n)
    z = (z - z.mean()) / z.std(ddof=1)
    return [float(x) for x in mean + sd * z]


def grid(**over: CellSpec) -> list[CellSpec]:
    """λ = 1e-4 … 1e2 with λ = 1 best and clearly separated, SGD; reruns agree. ``over``
    replaces cells by name (l4 = 1e-4, l2 = 1e-2, l0 = 1, p1 = 10, p2 = 100)."""
    base = {
        "l4": CellSpec(1e-4, vals(0.40, 0.01), n_diverged=10, reruns=[0.41, 0.42, 0.43]),
        "l2": CellSpec(1e-2, vals(0.20, 0.01), n_diverged=2, reruns=[0.21, 0.22, 0.20]),
        "l0": CellSpec(1.0, vals(0.10, 0.01), n_diverged=1, reruns=[0.11, 0.10, 0.12]),
        "p1": CellSpec(10.0, vals(0.15, 0.01), reruns=[0.16, 0.17, 0.15]),
        "p2": CellSpec(100.0, vals(0.30, 0.01), reruns=[0.31, 0.30, 0.32]),
        "sgd": CellSpec(None, vals(0.25, 0.01), reruns=[0.26, 0.25, 0.27]),
    }
    base.update(over)
    return list(base.values())


def claims(specs: list[CellSpec], with_reruns: bool = True):  # type: ignore[no-untyped-def]
    study, reruns = build_study(specs)
    return {c.key: c for c in evaluate(summarize(study, reruns if with_reruns else None)).claims}


def test_welch_matches_scipy() -> None:
    a, b = np.array(vals(1.0, 0.3, 12)), np.array(vals(1.4, 0.1, 7))
    d = welch(MeanCI(12, a.mean(), a.std(ddof=1), 0, 0), MeanCI(7, b.mean(), b.std(ddof=1), 0, 0))
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    # our df is floored to an integer (conservative): at most a little wider than scipy's
    assert d.lo <= ref.low + 1e-9 and d.hi >= ref.high - 1e-9
    assert d.lo == pytest.approx(ref.low, rel=0.05) and d.hi == pytest.approx(ref.high, rel=0.05)


def test_c1_reproduced_when_paper_lambda_is_best_and_reruns_agree() -> None:
    c1 = claims(grid())["C1"]
    assert c1.verdict == REPRODUCED, c1.verdict_text()
    assert c1.evidence["best"] == "λ=1e+00" and c1.evidence["tied"] == []


def test_c1_reproduced_when_paper_lambda_is_tied_with_the_best() -> None:
    over = {
        "p1": CellSpec(10.0, vals(0.099, 0.01), reruns=[0.11, 0.10, 0.12]),
    }
    c1 = claims(grid(**over))["C1"]
    assert c1.evidence["best"] == "λ=1e+01" and c1.evidence["tied"] == ["λ=1e+00"]
    assert c1.verdict == REPRODUCED, c1.verdict_text()


def test_c1_not_reproduced_when_another_lambda_wins_on_topk_and_reruns() -> None:
    over = {"l2": CellSpec(1e-2, vals(0.05, 0.01), reruns=[0.05, 0.051, 0.052])}
    c1 = claims(grid(**over))["C1"]
    assert c1.verdict == NOT_REPRODUCED, c1.verdict_text()
    assert c1.evidence["topk_paper_minus_best"]["lo"] > 0


def test_c1_inconclusive_when_reruns_cannot_separate_what_topk_separates() -> None:
    # the top-k of λ=1e-2 beat λ=1, but on new seeds its best configuration is no better
    over = {"l2": CellSpec(1e-2, vals(0.05, 0.01), reruns=[0.05, 0.2, 0.12])}
    c1 = claims(grid(**over))["C1"]
    assert c1.verdict == INCONCLUSIVE and "cannot separate" in c1.reason


def test_c1_inconclusive_when_reruns_separate_what_topk_ties() -> None:
    # λ=1 tied with λ=10 on the top-k, but on new seeds λ=10's configuration is clearly better
    over = {"p1": CellSpec(10.0, vals(0.099, 0.01), reruns=[0.05, 0.051, 0.052])}
    c1 = claims(grid(**over))["C1"]
    assert c1.evidence["tied"] == ["λ=1e+00"]
    assert c1.verdict == INCONCLUSIVE and "separate what the top-k did not" in c1.reason


def test_c1_inconclusive_without_reruns_and_when_a_range_binds() -> None:
    assert claims(grid(), with_reruns=False)["C1"].verdict == INCONCLUSIVE
    # λ=100's learning rates crowd the top of lr's range: any cell binding makes C1 inconclusive
    over = {"p2": CellSpec(100.0, vals(0.30, 0.01), lr=[900.0] * 20, reruns=[0.3, 0.3, 0.3])}
    c = claims(grid(**over))
    assert c["C1"].verdict == INCONCLUSIVE and c["C1"].reason == "the search range binds"
    assert c["C2"].verdict == REPRODUCED  # C2 does not depend on λ = 100
    assert c["C3"].verdict == INCONCLUSIVE and c["C3"].evidence["lr_binds"] is True


def test_c2_verdicts() -> None:
    assert claims(grid())["C2"].verdict == REPRODUCED  # 10 of 30 diverged against 1 of 21
    stable = {"l4": CellSpec(1e-4, vals(0.11, 0.01), n_diverged=1)}
    assert claims(grid(**stable))["C2"].verdict == NOT_REPRODUCED
    # 1.6× the best's loss, but over four trials so spread that the intervals overlap
    noisy = {"l4": CellSpec(1e-4, vals(0.16, 0.08, 4), n_diverged=0)}
    c2 = claims(grid(**noisy))["C2"]
    assert c2.verdict == INCONCLUSIVE and "overlaps" in c2.reason


def test_c3_verdicts() -> None:
    assert claims(grid())["C3"].verdict == REPRODUCED
    tied = {"p2": CellSpec(100.0, vals(0.101, 0.01))}
    assert claims(grid(**tied))["C3"].verdict == NOT_REPRODUCED
    bound = {"p2": CellSpec(100.0, vals(0.3, 0.01), lr=[1e-6] + [1.0] * 19)}
    c3 = claims(grid(**bound))["C3"]
    assert c3.verdict == INCONCLUSIVE and c3.reason == "the search range binds"


def hist(early_order: int, late_order: int, noise: float = 0.05) -> dict[str, CellSpec]:
    """Histogram cells λ=1e-4 and λ=10: ±1 puts λ=10's gradients a decade above/below λ=1e-4's
    at iteration 60 (early) or 360 (late); 0 makes them equal."""
    return {
        "l4": CellSpec(1e-4, vals(0.40, 0.01), 10, hist_centre={60: -8, 360: -9}, hist_noise=noise),
        "p1": CellSpec(
            10.0,
            vals(0.15, 0.01),
            hist_centre={60: -8 + early_order, 360: -9 + late_order},
            hist_noise=noise,
        ),
    }


def test_c4_c5_reproduced_not_reproduced_and_inconclusive() -> None:
    c = claims(grid(**hist(+1, -1)))
    assert c["C4"].verdict == REPRODUCED and c["C5"].verdict == REPRODUCED
    assert c["C4"].evidence["step"] == 60 and c["C5"].evidence["step"] == 360
    layer = c["C4"].evidence["layers"]["0"]
    assert layer["diff_decades"] == pytest.approx(1.0, abs=0.2)
    c = claims(grid(**hist(-1, 0)))  # reversed early, no difference late
    assert c["C4"].verdict == NOT_REPRODUCED and c["C4"].reason == "the ordering is reversed"
    assert c["C5"].verdict == NOT_REPRODUCED
    assert all(v["verdict"] == "equal" for v in c["C5"].evidence["layers"].values())
    # trials scattered by ±3 decades: a true half-decade shift cannot be resolved
    c = claims(grid(**hist(0, 0, noise=3.0)))
    assert c["C4"].verdict == INCONCLUSIVE and "too wide" in c["C4"].reason


def test_tied_set_and_separation_warning() -> None:
    study, reruns = build_study(grid(p1=CellSpec(10.0, vals(0.102, 0.03))))
    s = summarize(study, reruns)
    best = s.best_fixed
    assert best is not None and best.label == "λ=1e+00"
    assert [c.label for c in tied_with(best, s.fixed)] == ["λ=1e+01"]
    head = evaluate(s).headline
    assert head.tied == ["λ=1e+01"] and "λ=1e+00/λ=1e+01" in head.separation_warning
    assert "Run a preset with more trials" in head.separation_warning  # 20–30 trials a cell
    assert evaluate(summarize(*build_study(grid()))).headline.separation_warning == ""
    # The same overlap in a study at the paper's budget: more trials are not the advice.
    full = [dataclasses.replace(c, n_target=FULL_SCALE_TRIALS) for c in s.fixed]
    warning = separation_warning(full)
    assert "λ=1e+00/λ=1e+01" in warning and f"Even at {FULL_SCALE_TRIALS} trials" in warning
    assert "more trials" not in warning and "reruns" in warning


@pytest.mark.parametrize(
    ("rng_range", "best", "top", "binds"),
    [
        # log lr in [1e-6, 1e3]: the outer 5% is 0.45 decades, i.e. above 355 or below 2.8e-6
        (Range("lr", 1e-6, 1e3, True), 400.0, [1.0] * 19, True),  # best in the band
        (Range("lr", 1e-6, 1e3, True), 1.0, [1.0] * 16 + [400.0] * 3, True),  # 15% of top-k
        (Range("lr", 1e-6, 1e3, True), 1.0, [1.0] * 18 + [400.0], False),  # 5%: not more than 10%
        (Range("lr", 1e-6, 1e3, True), 300.0, [1.0] * 19, False),  # just inside
        (Range("momentum", 0.0, 0.99, False), 0.985, [0.5] * 19, True),  # the edge of 0.99
        (Range("momentum", 0.0, 0.99, False), 0.0, [0.5] * 19, False),  # 0: no momentum
        (Range("lr_decay", 0.0, 1.0, False), 1.0, [1.0] * 19, False),  # no decay: natural
    ],
)
def test_binding_rule(rng_range: Range, best: float, top: list[float], binds: bool) -> None:
    losses = [0.1, *[0.2 + 0.01 * i for i in range(len(top))]]
    study, _ = build_study([CellSpec(1.0, losses)])
    for t in study.trials:
        t.params[rng_range.name] = best if t.number == 0 else top[t.number - 1]
    s = summarize(study)
    found = cell_bindings(s.fixed[0], study.trials, [rng_range])
    assert bool(found) is binds, found
    if binds:
        assert found[0].edge == "high" and math.isclose(found[0].bound, rng_range.high)


@pytest.mark.parametrize(("lr_scale", "binds"), [("none", True), ("lambda", False)])
def test_binding_checks_the_range_each_cell_was_searched_in(lr_scale: str, binds: bool) -> None:
    """λ = 1e-3 with lr ≈ 2e-6 sits in [1e-6, 1e3]'s low band, but in the middle of the range
    it was searched in under lr_scale = "lambda" (λ·[1e-4, 1e3] = [1e-7, 1])."""
    study, _ = build_study([CellSpec(1e-3, [0.1 + 0.01 * i for i in range(20)], lr=2e-6)])
    study.protocol["search"] = {
        **study.protocol["search"],
        "lr": {"low": 1e-4 if lr_scale == "lambda" else 1e-6, "high": 1e3, "log": True},
        "lr_scale": lr_scale,
    }
    s = summarize(study)
    found = s.bindings.get(s.fixed[0].label, [])
    assert bool([b for b in found if b.param == "lr"]) is binds, found


def test_a_grid_of_one_lambda_decides_neither_end_of_the_grid() -> None:
    """The adaptive protocol has one fixed λ beside its rules: C2 and C3 (the smallest and the
    largest λ against the best) have nothing to compare, so they are inconclusive, not 'not
    reproduced' by comparing the cell with itself."""
    c = claims([CellSpec(1e-3, vals(0.10, 0.01), n_diverged=5), CellSpec(None, vals(0.2, 0.01))])
    for key in ("C2", "C3"):
        assert c[key].verdict == INCONCLUSIVE and c[key].reason == "the grid has one λ", key
