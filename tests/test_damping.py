"""Damping strategies: arithmetic on hand-made inputs, resume, and specs."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from kfaclab.damping import (
    Constant,
    Damping,
    ExponentialDecay,
    LayerSpectrum,
    LevenbergMarquardt,
    LinearDecay,
    LossTrend,
    Schedule,
    SpectrumRelative,
    StepOutcome,
    build_damping,
)
from kfaclab.errors import UsageError

OMEGA5 = 0.95**5  # (19/20)**T for T = 5, written independently of the code's (19 / 20) ** 5


def lm_step(lm: LevenbergMarquardt, step: int, rho: float, before: float = 2.0) -> None:
    """Observe a same-batch step whose reduction ratio is ``rho`` (predicted reduction −0.5)."""
    predicted = -0.5
    lm.observe(StepOutcome(step, before, before + rho * predicted, predicted))


# --- Constant -------------------------------------------------------------------------------


def test_constant_value_and_error_message() -> None:
    assert Constant(1e-3).value() == 1e-3
    assert Constant(1e-3).layer_values([LayerSpectrum("a", 2.0)] * 3) == [1e-3] * 3
    with pytest.raises(UsageError, match=r"^damping must be > 0, got -1\.0$"):
        Constant(-1.0)
    with pytest.raises(UsageError, match="damping must be finite"):
        Constant(math.inf)


# --- Schedules ------------------------------------------------------------------------------


def run_schedule(s: Damping, n: int) -> list[float]:
    values = []
    for t in range(n):
        values.append(s.value())
        s.observe(StepOutcome(t))
    return values


def test_schedule_uses_steps_observed() -> None:
    s = Schedule(lambda t: 1.0 / (t + 1))
    assert run_schedule(s, 3) == [1.0, 0.5, 1.0 / 3]
    with pytest.raises(NotImplementedError):
        s.describe()


def test_schedule_rejects_nonpositive_value() -> None:
    with pytest.raises(UsageError, match="schedule value at step 0 must be > 0"):
        Schedule(lambda t: 0.0).value()


def test_exponential_decay_hits_both_endpoints_and_holds() -> None:
    s = ExponentialDecay(start=10.0, end=1e-3, steps=4)
    values = run_schedule(s, 7)
    assert values[0] == 10.0
    assert values[4:] == [1e-3, 1e-3, 1e-3]
    # Geometric: each step multiplies by (1e-3/10)**(1/4) = 0.1.
    assert values[1:4] == pytest.approx([1.0, 0.1, 0.01], rel=1e-12)


def test_linear_decay_hits_both_endpoints() -> None:
    values = run_schedule(LinearDecay(start=1.0, end=0.2, steps=4), 6)
    assert values[0] == 1.0 and values[4:] == [0.2, 0.2]
    assert values[1:4] == pytest.approx([0.8, 0.6, 0.4], rel=1e-12)


# --- Levenberg–Marquardt --------------------------------------------------------------------


def test_lm_defaults_and_instance_flag() -> None:
    lm = LevenbergMarquardt()
    assert lm.value() == 1.0 and lm.every == 5
    assert lm.omega == OMEGA5
    assert isinstance(lm.needs_loss_after_step, bool) and lm.needs_loss_after_step
    nb = LevenbergMarquardt(source="next_batch")
    assert isinstance(nb.needs_loss_after_step, bool) and not nb.needs_loss_after_step


@pytest.mark.parametrize(
    ("rho", "factor"),
    [(0.9, OMEGA5), (0.76, OMEGA5), (0.1, 1 / OMEGA5), (-2.0, 1 / OMEGA5), (0.5, 1.0)],
)
def test_lm_ratio_thresholds(rho: float, factor: float) -> None:
    lm = LevenbergMarquardt(initial=1.0, every=5)
    lm_step(lm, 4, rho)  # step 4 closes the first window of T = 5 steps
    assert lm.value() == factor  # exactly: 1.0·ω or 1.0/ω


def test_lm_exact_factor_by_omega() -> None:
    lm = LevenbergMarquardt(initial=0.3, every=1, omega=0.5)
    lm_step(lm, 0, 1.0)  # ρ = 1 > 3/4: λ·ω, exactly
    assert lm.value() == 0.15
    lm_step(lm, 1, 0.0)  # ρ = 0 < 1/4: λ/ω, exactly
    assert lm.value() == 0.3
    lm_step(lm, 2, 0.25)  # on the thresholds themselves: kept
    lm_step(lm, 3, 0.75)
    assert lm.value() == 0.3


def test_lm_updates_only_every_t_steps() -> None:
    lm = LevenbergMarquardt(initial=1.0, every=5)
    wants = [lm.wants_model_reduction(t) for t in range(10)]
    assert wants == [False] * 4 + [True] + [False] * 4 + [True]
    for t in range(4):  # ρ would lower λ, but these are not update steps
        lm.observe(StepOutcome(t, 2.0, 1.0, None))
    assert lm.value() == 1.0
    lm_step(lm, 4, 0.9)
    assert lm.value() == pytest.approx(OMEGA5, rel=1e-14)


def test_lm_clipping_bounds_hold() -> None:
    lm = LevenbergMarquardt(initial=1.0, every=1, omega=0.1, min_value=1e-2, max_value=10.0)
    for t in range(5):
        lm_step(lm, t, 1.0)
    assert lm.value() == 1e-2
    for t in range(5, 12):
        lm_step(lm, t, 0.0)
    assert lm.value() == 10.0


def test_lm_bad_steps_raise_lambda() -> None:
    lm = LevenbergMarquardt(initial=1.0, every=1, omega=0.5)
    lm.observe(StepOutcome(0, 2.0, 1.0, 0.3))  # model predicts an ascent: bad step
    assert lm.value() == 2.0
    lm.observe(StepOutcome(1, 2.0, math.nan, -0.5))  # non-finite loss after
    assert lm.value() == 4.0
    with pytest.warns(RuntimeWarning, match="no loss"):
        lm.observe(StepOutcome(2, None, 1.0, -0.5))  # missing loss
    assert lm.value() == 8.0
    assert lm.state_dict()["invalid"] == 2 and lm.state_dict()["updates"] == 3


def test_lm_next_batch_uses_next_steps_loss_before() -> None:
    lm = LevenbergMarquardt(initial=1.0, every=2, omega=0.5, source="next_batch")
    lm.observe(StepOutcome(0, 5.0))
    # Update step: loss_after (same batch) must be ignored in favour of step 2's loss_before.
    lm.observe(StepOutcome(1, 2.0, loss_after=0.0, predicted_reduction=-1.0))
    assert lm.value() == 1.0  # pending until the next loss arrives
    lm.observe(StepOutcome(2, 1.9))  # ρ = (1.9 − 2.0)/(−1.0) = 0.1 < 1/4: raise
    assert lm.value() == 2.0
    lm.observe(StepOutcome(3, 1.5, None, -0.4))
    lm.observe(StepOutcome(4, 1.1))  # ρ = (1.1 − 1.5)/(−0.4) = 1.0 > 3/4: lower
    assert lm.value() == 1.0


def test_lm_next_batch_every_step() -> None:
    # every = 1: each observe settles the previous step, then opens its own.
    lm = LevenbergMarquardt(initial=1.0, every=1, omega=0.5, source="next_batch")
    lm.observe(StepOutcome(0, 2.0, None, -1.0))
    lm.observe(StepOutcome(1, 1.0, None, -1.0))  # settles step 0: ρ = 1 → 0.5
    lm.observe(StepOutcome(2, 1.0, None, -1.0))  # settles step 1: ρ = 0 → 1.0
    assert lm.value() == 1.0


# --- Spectrum-relative ----------------------------------------------------------------------


def random_spd(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
    return x @ x.T / (n + 3) + 1e-3 * torch.eye(n, dtype=torch.float64)


def test_spectrum_relative_matches_dense_kronecker() -> None:
    gen = torch.Generator().manual_seed(0)
    c = 0.03
    rule = SpectrumRelative(c)
    assert rule.value() == c  # before any spectrum
    spectra, expected = [], []
    for name, (da, dg) in {"fc1": (5, 3), "fc2": (4, 6), "fc3": (7, 2)}.items():
        A, G = random_spd(da, gen), random_spd(dg, gen)
        dense = torch.linalg.eigvalsh(torch.kron(G, A))  # (dg·da,)
        expected.append(c * dense.mean().item())
        m = (torch.linalg.eigvalsh(A).mean() * torch.linalg.eigvalsh(G).mean()).item()
        spectra.append(LayerSpectrum(name, m))
    got = rule.layer_values(spectra)
    assert got == pytest.approx(expected, rel=1e-10)
    assert rule.value() == pytest.approx(sum(expected) / 3, rel=1e-10)


def test_spectrum_relative_fallbacks_and_floor() -> None:
    rule = SpectrumRelative(0.5, min_value=1e-6)
    assert rule.layer_values([LayerSpectrum("a", None)]) == [0.5]  # never seen: c
    assert rule.layer_values([LayerSpectrum("a", 4.0), LayerSpectrum("b", 0.0)]) == [2.0, 1e-6]
    # None: keep the layer's last value; a new layer falls back to c.
    assert rule.layer_values([LayerSpectrum("a", None), LayerSpectrum("c", None)]) == [2.0, 0.5]
    assert rule.value() == 1.25


# --- LossTrend (our rule) -------------------------------------------------------------------


def feed(rule: LossTrend, losses: list[float], start: int = 0) -> None:
    for i, loss in enumerate(losses):
        rule.observe(StepOutcome(start + i, loss))


def test_loss_trend_lowers_on_clear_decrease() -> None:
    rule = LossTrend(initial=1.0, every=2, omega=0.5)
    feed(rule, [3.0, 3.2])  # first window: nothing to compare with
    assert rule.value() == 1.0
    # means 3.1 → 2.1, s² = 0.02 in both: z = 1.0 / sqrt(0.02) ≈ 7.07 ≥ 2
    feed(rule, [2.0, 2.2], start=2)
    assert rule.value() == 0.5


def test_loss_trend_raises_on_plateau_or_rise_and_keeps_when_unsure() -> None:
    rule = LossTrend(initial=1.0, every=2, omega=0.5)
    feed(rule, [1.0, 1.2, 1.1, 1.3])  # means 1.1 → 1.2: z < 0, a rise
    assert rule.value() == 2.0
    # means 1.2 → 1.1, s² = 0.02 in both: z = 0.1/sqrt(0.02) ≈ 0.71, in (0, 2): keep
    feed(rule, [1.0, 1.2], start=4)
    assert rule.value() == 2.0
    feed(rule, [1.0, 1.2], start=6)  # equal means: z = 0, a plateau
    assert rule.value() == 4.0


def test_loss_trend_nonfinite_and_missing_losses() -> None:
    rule = LossTrend(initial=1.0, every=2, omega=0.5, max_value=3.0)
    feed(rule, [2.0, math.inf])
    assert rule.value() == 2.0
    feed(rule, [math.nan])
    assert rule.value() == 3.0  # clipped
    with pytest.warns(RuntimeWarning, match="no loss_before"):
        rule.observe(StepOutcome(3, None))
    assert rule.state_dict()["current_window"] == [0, 0.0, 0.0]


# --- Resume and specs -----------------------------------------------------------------------


def drive(d: Damping, steps: range) -> list[float]:
    """A deterministic, varied stream of outcomes; returns the traced λ per step."""
    trace = []
    for t in steps:
        spectra = [LayerSpectrum("fc1", 1.0 + 0.1 * t), LayerSpectrum("fc2", None)]
        d.layer_values(spectra)
        before = 2.0 / (1 + t) + 0.05 * math.sin(3 * t)
        after = before - 0.1 * (1 + math.cos(t)) if d.needs_loss_after_step else None
        predicted = -0.1 * (1.5 + math.sin(t)) if d.wants_model_reduction(t) else None
        d.observe(StepOutcome(t, before, after, predicted))
        trace.append(d.value())
    return trace


ALL_SPECS: list[dict[str, Any]] = [
    {"kind": "constant", "value": 0.1},
    {"kind": "exponential_decay", "start": 1.0, "end": 1e-3, "steps": 20},
    {"kind": "linear_decay", "start": 1.0, "end": 1e-3, "steps": 20},
    {"kind": "levenberg_marquardt", "every": 2},
    {"kind": "levenberg_marquardt", "every": 3, "source": "next_batch"},
    {"kind": "spectrum_relative", "c": 0.1},
    {"kind": "loss_trend", "every": 3},
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s['kind']}")
def test_state_dict_round_trip_continues_identically(spec: dict[str, Any]) -> None:
    reference = build_damping(spec)
    first = drive(reference, range(13))
    state = json.loads(json.dumps(reference.state_dict()))  # plain numbers only
    resumed = build_damping(spec)
    resumed.load_state_dict(state)
    assert resumed == reference
    assert drive(resumed, range(13, 40)) == drive(reference, range(13, 40))
    assert len(set(first)) > 1 or spec["kind"] == "constant"  # the stream does move λ


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s['kind']}")
def test_describe_builds_an_equal_strategy(spec: dict[str, Any]) -> None:
    strategy = build_damping(spec)
    described = strategy.describe()
    assert json.loads(json.dumps(described)) == described
    rebuilt = build_damping(described)
    assert rebuilt == strategy and type(rebuilt) is type(strategy)
    assert rebuilt.needs_loss_after_step == strategy.needs_loss_after_step


def test_build_damping_numbers_and_constant() -> None:
    assert build_damping(1e-3) == Constant(1e-3)
    assert build_damping(1) == Constant(1.0)
    assert build_damping({"kind": "constant", "value": 0.5}) == Constant(0.5)
    assert build_damping({"kind": "levenberg_marquardt"}) == LevenbergMarquardt()
    assert build_damping({"kind": "loss_trend"}) == LossTrend()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (-1.0, r"damping must be > 0, got -1\.0"),
        (True, "damping must be a number"),
        ("1e-3", "damping must be a number > 0 or a mapping"),
        ({"value": 1.0}, "damping.kind is required"),
        ({"kind": "schedule"}, "damping.kind must be one of constant, exponential_decay"),
        (
            {"kind": "constant", "valu": 1.0},
            "'valu' is not allowed for kind 'constant'; allowed: value",
        ),
        ({"kind": "constant", "value": 0}, "damping must be > 0, got 0"),
        ({"kind": "exponential_decay", "start": 1.0, "end": 0.0, "steps": 3}, "end must be > 0"),
        (
            {"kind": "exponential_decay", "start": 1.0, "end": 0.1, "steps": 0},
            "steps must be an integer >= 1",
        ),
        (
            {"kind": "exponential_decay", "start": 1.0, "end": 0.1},
            "exponential_decay.steps is required",
        ),
        ({"kind": "levenberg_marquardt", "every": 2.5}, "every must be an integer >= 1, got 2.5"),
        ({"kind": "levenberg_marquardt", "omega": 1.5}, r"omega must be in \(0, 1\)"),
        ({"kind": "levenberg_marquardt", "lower": 0.8}, "lower must be <= upper"),
        ({"kind": "levenberg_marquardt", "initial": 1e5}, "initial must be in"),
        ({"kind": "levenberg_marquardt", "min_value": 2e4}, "min_value must be < max_value"),
        ({"kind": "levenberg_marquardt", "source": "other"}, "source must be one of same_batch"),
        ({"kind": "spectrum_relative", "c": -0.1}, r"spectrum_relative.c must be > 0"),
        ({"kind": "loss_trend", "every": 1}, "every must be an integer >= 2"),
        ({"kind": "loss_trend", "increase_z": 3.0}, "increase_z must be < decrease_z"),
        ({"kind": "loss_trend", "decrease_z": math.nan}, "decrease_z must be finite"),
    ],
)
def test_build_damping_errors(spec: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_damping(spec)
