"""Replication-level statistics and verdicts on synthetic reruns with known answers.

Each test builds replications whose outcomes are drawn from a model with a stated truth (a real
difference or a tie, a crossing or a constant offset, a divergence-heavy cell) and checks that the
verdict finds it; several would fail under the statistics they replace (top-k intervals of one
replication, dropping diverged reruns, comparing only the two extreme λ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kfaclab.analysis.replication import paired as P
from kfaclab.analysis.replication.assess import assess
from kfaclab.analysis.replication.crossing import crossing, crossing_verdict, noise_floor
from kfaclab.analysis.replication.outcomes import (
    CHANCE_LOSS,
    RerunOutcome,
    escape_step,
    mean_capped_curve,
)
from kfaclab.analysis.replication.units import Replication
from kfaclab.analysis.replication.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Thresholds,
    best_band,
    largest_slow,
    smallest_unstable,
)

LAMS = [1e-4, 1e-2, 1.0, 1e2]
LAYERS = ["fc1", "fc2", "fc3"]


def _label(lam: float) -> str:
    return f"λ={lam:.0e}"


def _outcome(label, lam, seed, value, *, rank=0, grad=None, escape=40, steps=100):
    losses = [2.3] * escape + [1.0] * (steps - escape)
    div = None if math.isfinite(value) else steps // 2
    if div is not None:
        losses = losses[: div + 1]
        losses[-1] = math.inf
    return RerunOutcome(
        cell=label,
        label=label,
        lam=lam,
        rank=rank,
        trial_number=rank,
        seed=seed,
        key=f"{label}/{rank}",
        value=value,
        diverged_at=div,
        seconds=1.0,
        step_losses=losses,
        grad=grad or {},
        relative_damping=lam * 10 if lam else math.nan,
        n_steps=steps,
    )


def _reps(loss_of, *, n_rep=3, n_seeds=10, configs=3, grad_of=None, escape_of=None, seed=0):
    """Replications whose cell λ at seed s has final loss loss_of(lam, rng) per configuration."""
    rng = np.random.default_rng(seed)
    reps = []
    for r in range(n_rep):
        outs = []
        for s in range(n_seeds):
            seed_id = 20_000 + 100 * r + s
            shift = rng.normal(0, 0.01)  # a seed's shared luck: pairing removes it
            for lam in LAMS:
                for k in range(configs):
                    v = loss_of(lam, rng)
                    v = v + shift if math.isfinite(v) else v
                    g = grad_of(lam, rng) if grad_of else None
                    e = escape_of(lam, rng) if escape_of else 40
                    outs.append(_outcome(_label(lam), lam, seed_id, v, rank=k, grad=g, escape=e))
        topk = {
            _label(lam): loss_of(lam, rng) if math.isfinite(loss_of(lam, rng)) else 1.0
            for lam in LAMS
        }
        reps.append(
            Replication(
                name=f"rep{r}",
                topk_mean=topk,
                topk_ci={k: (v, v - 0.001, v + 0.001) for k, v in topk.items()},
                lam={_label(lam): lam for lam in LAMS},
                outcomes=outs,
            )
        )
    return reps


# --- the statistics against scipy / direct computation ------------------------------------


def test_t_interval_matches_scipy_and_paired_is_one_sample_on_differences():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 12), rng.normal(0.5, 1, 12)
    iv = P.paired(list(a), list(b)).diff
    ref = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert iv.lo == pytest.approx(ref.low, rel=1e-12) and iv.hi == pytest.approx(
        ref.high, rel=1e-12
    )


def test_wilson_interval_stays_inside_0_1_and_matches_formula():
    p = P.proportion(0, 20)
    assert p.lo == 0.0 and 0 < p.hi < 0.2
    k, n, z = 7, 30, stats.norm.ppf(0.975)
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    q = P.proportion(k, n)
    assert (q.lo, q.hi) == pytest.approx((centre - half, centre + half), rel=1e-9)


def test_positive_mean_interval_never_below_zero():
    iv = P.positive_mean([0.001, 0.5, 0.002, 0.9])
    assert iv.lo > 0 and iv.lo < iv.estimate < iv.hi
    assert P.t_interval([0.001, 0.5, 0.002, 0.9]).lo < 0  # what the old mean interval gave


def test_escape_and_capped_curve():
    # steps 27-31 are the first five whose mean (1.78) is below 2.0
    assert escape_step([2.3] * 30 + [1.0] * 20) == 31
    assert escape_step([2.3] * 50) == math.inf
    # a run diverging at step 5 of 10 counts as chance level for the rest
    assert mean_capped_curve([1.0] * 5 + [math.inf], 5, 10) == pytest.approx(
        (5 * 1.0 + 5 * CHANCE_LOSS) / 10
    )


# --- C1: a tie and a real difference ----------------------------------------------------------


def test_c1_band_includes_a_true_tie_and_excludes_a_real_difference():
    truth = {1e-4: 0.20, 1e-2: 0.10, 1.0: 0.1005, 1e2: 0.30}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02))
    v = best_band(reps, Thresholds())
    band = v.evidence["band"]
    assert set(band) == {_label(1e-2), _label(1.0)}
    assert v.verdict == REPRODUCED


def test_c1_band_with_a_gap_lists_its_lambdas_instead_of_an_interval():
    truth = {1e-4: 0.10, 1e-2: 0.40, 1.0: 0.1005, 1e2: 0.40}
    v = best_band(_reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02)), Thresholds())
    assert v.evidence["band"] == [_label(1e-4), _label(1.0)]
    assert "not established worse: λ ∈ {0.0001, 1}" in v.finding  # 1e-2, worse, is not inside
    contiguous = best_band(_reps(lambda lam, rng: 0.1 if lam < 1e-1 else 0.4), Thresholds())
    assert "not established worse: λ ∈ [0.0001, 0.01]" in contiguous.finding


def test_c1_with_one_lambda_rerun_is_no_finding():
    reps = _reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01))
    for rep in reps:
        rep.outcomes = [o for o in rep.outcomes if o.lam == 1.0]
        rep.lam = {_label(1.0): 1.0}
    v = best_band(reps, Thresholds())
    assert v.verdict == INCONCLUSIVE and v.finding == "fewer than two λ have reruns"


def test_c1_real_difference_not_reproduced_and_needs_every_replication():
    truth = {1e-4: 0.20, 1e-2: 0.10, 1.0: 0.15, 1e2: 0.30}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02))
    assert best_band(reps, Thresholds()).verdict == NOT_REPRODUCED
    # one replication reversing the sign makes the difference not established: λ=1 rejoins
    flipped = _reps(lambda lam, rng: {**truth, 1.0: 0.05}[lam] + rng.normal(0, 0.02), n_rep=1)
    flipped[0].name = "rep-flipped"
    for o in flipped[0].outcomes:
        o.seed += 900  # seeds distinct between replications
    v = best_band([*reps, *flipped], Thresholds())
    assert _label(1.0) in v.evidence["band"]


# --- C2: divergence is an outcome -------------------------------------------------------------


def test_c2_divergence_heavy_smallest_lambda_is_unstable_even_if_survivors_are_good():
    def loss(lam, rng):
        if lam == 1e-4 and rng.random() < 0.5:
            return math.inf
        return 0.1 + rng.normal(0, 0.01)

    reps = _reps(loss)
    v = smallest_unstable(reps, _label(1e-2), Thresholds())
    assert v.verdict == REPRODUCED
    # dropping diverged reruns (the old rule) would see a tie: the survivors match the best
    k, n = v.evidence["diverged"][:2]
    assert 0.3 < k / n < 0.7


def test_c2_stable_smallest_lambda_not_reproduced():
    reps = _reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01))
    assert smallest_unstable(reps, _label(1e-2), Thresholds()).verdict == NOT_REPRODUCED


# --- C3: slower means a larger area under the curve, paired by seed ----------------------------


def test_c3_slow_escape_makes_largest_lambda_slower():
    reps = _reps(lambda lam, rng: 0.1, escape_of=lambda lam, rng: 80 if lam == 1e2 else 20)
    assert largest_slow(reps, _label(1e-2)).verdict == REPRODUCED
    same = _reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01), escape_of=lambda lam, rng: 30)
    v = largest_slow(same, _label(1e-2))
    assert v.verdict != REPRODUCED


# --- C4/C5: a crossing that exists and one that does not --------------------------------------


def _grad(slope_early, slope_late, noise=0.05):
    def make(lam, rng):
        x = math.log10(lam)
        return {
            "60": {lay: [-6 + slope_early * x + rng.normal(0, noise), 0.1] for lay in LAYERS},
            "360": {lay: [-8 + slope_late * x + rng.normal(0, noise), 0.2] for lay in LAYERS},
        }

    return make


def test_crossing_found_when_the_slope_changes_sign():
    reps = _reps(lambda lam, rng: 0.1, grad_of=_grad(+0.2, -0.2))
    c4, c5, ev = crossing(reps)
    assert (c4.verdict, c5.verdict) == (REPRODUCED, REPRODUCED)
    assert crossing_verdict(c4, c5) == REPRODUCED
    assert ev["interaction"]["hi"] < 0
    assert ev["zero_fraction"][_label(1.0)]["60"]["fc1"] == pytest.approx(0.1)


def test_constant_offset_is_no_crossing_even_though_one_end_matches():
    # smaller λ larger gradients at every iteration (the stored `paper` run's pattern): C5's half
    # holds, C4's is reversed, so the crossing is not reproduced. The old test counted C5 as ✓.
    reps = _reps(lambda lam, rng: 0.1, grad_of=_grad(-0.3, -0.3))
    c4, c5, ev = crossing(reps)
    assert c4.verdict == NOT_REPRODUCED and c5.verdict == REPRODUCED
    assert crossing_verdict(c4, c5) == NOT_REPRODUCED
    assert ev["interaction"]["lo"] < 0 < ev["interaction"]["hi"]


def test_crossing_uses_every_lambda_not_only_the_extremes():
    # the two extreme λ are equal; the middle ones carry an early rising trend
    def make(lam, rng):
        bump = {1e-4: 0.0, 1e-2: 0.6, 1.0: 1.2, 1e2: 0.0}[lam]
        return {
            "60": {lay: [-6 + bump + rng.normal(0, 0.05), 0.0] for lay in LAYERS},
            "360": {lay: [-8 - bump + rng.normal(0, 0.05), 0.0] for lay in LAYERS},
        }

    c4, c5, _ = crossing(_reps(lambda lam, rng: 0.1, grad_of=make))
    assert (c4.verdict, c5.verdict) == (REPRODUCED, REPRODUCED)


# --- noise floor and the whole assessment -------------------------------------------------------


def test_noise_floor_rejects_separations_that_replications_do_not_repeat():
    reps = _reps(lambda lam, rng: 0.1)
    for r, shift in zip(reps, (0.0, 0.02, -0.02), strict=True):
        r.topk_mean = {**r.topk_mean, _label(1e-2): 0.10 + shift, _label(1.0): 0.105 - shift}
        r.topk_ci = {k: (v, v - 0.001, v + 0.001) for k, v in r.topk_mean.items()}
    nf = noise_floor(reps)
    pair = next(p for p in nf.pairs if {p["a"], p["b"]} == {_label(1e-2), _label(1.0)})
    assert pair["separate_in_first"] and not pair["survives"]
    assert nf.sd_topk[_label(1e-2)] == pytest.approx(0.02)


def test_assessment_is_complete_and_serialisable():
    reps = _reps(lambda lam, rng: 0.1 + 0.01 * abs(math.log10(lam)), grad_of=_grad(0.1, -0.1))
    a = assess(reps)
    assert [c.key for c in a.claims] == ["C1", "C2", "C3", "C4", "C5"]
    assert a.n_units == 30 and len(a.curves) == len(LAMS)
    assert all(len(c.steps) == 10 for c in a.curves)
    d = a.to_dict()
    assert d["crossing"] in (REPRODUCED, NOT_REPRODUCED, "inconclusive")


def test_outcome_json_round_trip_keeps_infinities():
    o = _outcome("λ=1e-04", 1e-4, 1, math.inf, grad={"60": {"fc1": [math.nan, 0.5]}})
    back = RerunOutcome.from_json(o.to_json())
    assert back.diverged and back.step_losses[-1] == math.inf
    assert math.isnan(back.grad["60"]["fc1"][0]) and back.grad["60"]["fc1"][1] == 0.5


def test_small_study_leaves_c1_inconclusive_instead_of_reproducing_it():
    # two seeds, one replication, a real but noisy gap: λ = 1 is not *shown* worse, yet a tie is
    # not shown either. "Not significantly worse" alone would call this reproduced.
    truth = {1e-4: 0.20, 1e-2: 0.10, 1.0: 0.13, 1e2: 0.30}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.05), n_rep=1, n_seeds=2)
    assert best_band(reps, Thresholds()).verdict == "inconclusive"


def test_figures_draw_from_the_assessment(tmp_path):
    from kfaclab.analysis.replication.figures import draw_all

    reps = _reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01), grad_of=_grad(0.1, -0.1))
    figs = draw_all(assess(reps), tmp_path)
    assert [f.key for f in figs] == [
        "replication-curves",
        "replication-gradients",
        "replication-gradient-medians",
        "replication-reruns",
    ]
    assert all(f.png.stat().st_size > 10_000 for f in figs)


def test_findings_opening_words_the_assessment_numbers():
    import json as _json

    from kfaclab.analysis.replication import findings_top as top

    truth = {1e-4: 0.20, 1e-2: 0.10, 1.0: 0.15, 1e2: 0.30}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02), grad_of=_grad(-0.3, -0.3))
    a = _json.loads(_json.dumps(assess(reps).to_dict(), default=str))
    lines = top.five_lines(a, ["rep0", "rep1", "rep2"], "a synthetic reading")
    assert len(lines) == 5
    assert lines[0].startswith("1. **λ = 1 is best (C1): does not hold.**")
    assert "λ = 1e-02" in lines[0]
    # the crossing is reported as not holding (early slope negative), in the numbers' own words
    assert "does not hold" in lines[3] and "-0.3" in lines[3]
    table = top.effects_table(a)
    row = next(r for r in table if r.startswith("| final loss, λ=1e+00 − λ=1e-02"))
    est = a["claims"][0]["evidence"]["minus_best"]["λ=1e+00"]["estimate"]
    assert f"{est:+.3g}" in row and row.count("|") == 5
    assert any("tie margin" in x for x in top.would_change(a))


def test_binding_is_directional():
    truth = {1e-4: 0.20, 1e-2: 0.10, 1.0: 0.15, 1e2: 0.30}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02))
    # the best cell's range binding cannot flip "λ = 1 is worse": the verdict stands
    reps[0].bindings = {_label(1e-2): ["lr binds at its high end"]}
    assert best_band(reps, Thresholds()).verdict == NOT_REPRODUCED
    # λ = 1's own range binding could: a better λ = 1 may lie outside the range
    reps[0].bindings = {_label(1.0): ["lr binds at its high end"]}
    v = best_band(reps, Thresholds())
    assert v.verdict == "inconclusive"
    assert v.evidence["verdict_if_range_did_not_bind"] == NOT_REPRODUCED


def test_binding_of_a_lambda_shown_worse_undoes_c1_reproduced():
    # λ = 1 best: the verdict rests on every other λ being worse, so a worse λ whose range
    # binds could flip it (paper-popular-clipsearch: momentum at 0.99 for λ <= 1e-2)
    truth = {1e-4: 0.30, 1e-2: 0.20, 1.0: 0.10, 1e2: 0.25}
    reps = _reps(lambda lam, rng: truth[lam] + rng.normal(0, 0.02))
    assert best_band(reps, Thresholds()).verdict == REPRODUCED
    reps[0].bindings = {_label(1.0): ["lr binds at its high end"]}  # the best's own: no flip
    assert best_band(reps, Thresholds()).verdict == REPRODUCED
    reps[0].bindings = {_label(1e-4): ["momentum binds at its high end"]}
    reps[1].bindings = {_label(1e2): ["kl_clip binds at its high end"]}
    v = best_band(reps, Thresholds())
    assert v.verdict == INCONCLUSIVE
    assert v.evidence["verdict_if_range_did_not_bind"] == REPRODUCED
    assert "the search ranges of λ=1e-04, λ=1e+02 bind" in v.finding
    assert len(v.evidence["binding"]) == 2


def test_a_diverged_rerun_counts_as_chance_level_to_the_planned_end():
    from kfaclab.analysis.replication.units import replication_of

    ok = _outcome("λ=1e-04", 1e-4, 1, 0.1, escape=40, steps=100)
    bad = _outcome("λ=1e-04", 1e-4, 2, math.inf, escape=80, steps=100)
    bad.n_steps = 0  # what a run given in epochs stored when it diverged
    rep = replication_of("r", [], [ok, bad])
    assert rep.outcomes[1].n_steps == 100
    # 50 steps at 2.3 before diverging, then chance level: its area is ln 10-ish over 100 steps
    assert bad.mean_step_loss == pytest.approx((50 * 2.3 + 50 * CHANCE_LOSS) / 100)


def test_escape_time_leaves_diverged_reruns_out():
    # half of λ = 1e-4's reruns diverge before escaping; the others escape at 20, later λ at 60:
    # the escape slope must come from the runs that train, not from the divergence rate
    def loss(lam, rng):
        return math.inf if lam == 1e-4 and rng.random() < 0.5 else 0.1

    reps = _reps(loss, escape_of=lambda lam, rng: 20 if lam == 1e-4 else 60)
    from kfaclab.analysis.replication.crossing import escape_slope

    ev = escape_slope(reps)
    # steps 17-21 are the first five whose mean is below 2.0; diverged reruns are left out
    assert ev["mean_step"][_label(1e-4)]["estimate"] == pytest.approx(21.0)


def test_paper_best_is_drawn_only_where_the_paper_claims_apply(tmp_path):
    """λ = 1 is "the paper's best" in a study testing the paper's claims, and nowhere else:
    a study of one's own ([claims] paper = false) has no paper to point at."""
    from kfaclab.analysis.replication.figures import PAPER_BEST, curve_label, draw_all
    from kfaclab.analysis.replication.report_blocks import replication_blocks

    a = assess(_reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01)), with_sensitivity=False)
    assert [curve_label(c, True) for c in a.curves if c.lam == 1.0] == ["λ=1e+00" + PAPER_BEST]
    assert not any(PAPER_BEST in curve_label(c, False) for c in a.curves)

    def curves_svg(folder):
        return (folder / "replication-curves.svg").read_text()

    draw_all(a, tmp_path / "paper", paper=True)
    draw_all(a, tmp_path / "own", paper=False)
    assert "paper's best" in curves_svg(tmp_path / "paper")
    assert "paper's best" not in curves_svg(tmp_path / "own")
    replication_blocks(a, tmp_path / "report", paper=False)  # the report passes it on
    assert "paper's best" not in curves_svg(tmp_path / "report")


def test_lambda_colours_have_one_home():
    """The replication figures colour λ with the study figures' palette: distinct colours in λ
    order, whatever order the cells come in."""
    from kfaclab.analysis.figures.style import LAM_PALETTE, lam_colors
    from kfaclab.analysis.replication.figures import _colors

    a = assess(_reps(lambda lam, rng: 0.1 + rng.normal(0, 0.01)), with_sensitivity=False)
    colors = _colors(a)
    by_lam = lam_colors(list(reversed(LAMS)))
    assert [colors[_label(lam)] for lam in LAMS] == [by_lam[lam] for lam in LAMS]
    assert [by_lam[lam] for lam in sorted(LAMS)] == list(LAM_PALETTE[: len(LAMS)])
    assert len(set(by_lam.values())) == len(LAMS)


def test_one_replication_says_its_noise_floor_needs_a_second():
    from kfaclab.analysis.replication.markdown import noise_lines

    one = assess(_reps(lambda lam, rng: 0.1 + 0.01 * abs(math.log10(lam)), n_rep=1))
    (line,) = noise_lines(one)
    assert "needs a second replication" in line and "survive the replication-level" not in line
    three = assess(_reps(lambda lam, rng: 0.1 + 0.01 * abs(math.log10(lam))))
    assert "survive the replication-level test (t over the 3 replications" in noise_lines(three)[0]
