"""The data behind the study figures, checked against independent counts: the share of
(∂L/∂θ)² below the histogram range (exact zeros) per layer and λ, the histograms' x-range, the λ
palette, and the lr/λ panel of the hyperparameter figure."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kfaclab.analysis.figures import draw as figures
from kfaclab.analysis.figures import more as figures_more
from kfaclab.analysis.figures.draw import occupied_range
from kfaclab.analysis.figures.more import LR_OVER_LAMBDA, hyper_panels
from kfaclab.analysis.figures.style import LAM_PALETTE, style_context
from kfaclab.analysis.summary.gradients import GradientHistograms
from kfaclab.analysis.summary.summaries import StudySummary, summarize
from kfaclab.train.observe import GradHistogram
from kfaclab.trial_types import HistogramBins, TrialConfig, TrialResult
from report_fakes import PROTOCOL, FakeCell, FakeStudySet, FakeTrial, make_study

# The zero shares built into each λ's gradients (layer fc1, layer fc2): whole parameters of 64,
# all different, none on a half per cent (the figure rounds to whole per cents).
ZERO_SHARE = {1e-4: (16 / 64, 32 / 64), 1.0: (9 / 64, 48 / 64)}
STEPS = (60, 120)


def _layers(rng: torch.Generator, zero_share: tuple[float, ...]) -> dict[str, nn.Linear]:
    """Linear layers (64 parameters each) whose gradients are exactly zero on the given share of
    entries (dead units), the rest with |g| in [1e-6, 1e-2] (g² inside the bins)."""
    layers = {}
    for i, share in enumerate(zero_share):
        layer = nn.Linear(7, 8)  # 56 weights + 8 biases
        flat = 10 ** (-6 + 4 * torch.rand(64, generator=rng, dtype=torch.float64))
        flat[torch.randperm(64, generator=rng)[: round(share * 64)]] = 0.0
        layer.weight.grad = flat[:56].reshape(8, 7).float()
        layer.bias.grad = flat[56:].float()
        layers[f"fc{i + 1}"] = layer
    return layers


def _independent_share(layers: list[nn.Linear]) -> float:
    """The share of exact zeros among all the layers' gradients, counted directly."""
    grads = [torch.cat([x.weight.grad.reshape(-1), x.bias.grad]) for x in layers]  # type: ignore[union-attr]
    return float((torch.cat(grads) == 0).double().mean())


@pytest.fixture(scope="module")
def zero_study() -> tuple[FakeStudySet, dict[tuple[float, int, int], float]]:
    """Two λ cells, two trials each; every recorded histogram counts real gradients through the
    trainer's GradHistogram. Returns the study and the expected zero share per (λ, step, layer)."""
    rng = torch.Generator().manual_seed(0)
    bins = HistogramBins()
    study = FakeStudySet({**PROTOCOL, "report": {"histogram_lambdas": [1e-4, 1.0]}}, [])
    expected: dict[tuple[float, int, int], float] = {}
    for lam, shares in ZERO_SHARE.items():
        name = f"kfac-lam{lam:.0e}"
        study.cells.append(FakeCell(name, "kfac", lam, f"{lam:.0e}", 2, 2))
        per_trial: dict[tuple[int, int], list[nn.Linear]] = {}
        for k in range(2):
            hists = {}
            for j, step in enumerate(STEPS):
                layers = _layers(rng, shares)
                hists[str(step)] = GradHistogram(dict(layers), bins)()
                for i, layer in enumerate(layers.values()):
                    per_trial.setdefault((j, i), []).append(layer)
            cfg = TrialConfig(damping=lam, lr=0.1 * (k + 1), seed=k, histogram_steps=STEPS)
            rec = TrialResult(
                config=cfg,
                status="ok",
                value=0.5 + k,
                steps_done=200,
                seconds=1.0,
                step_losses=[2.0, 1.0] * 100,
                evals=[],
                histograms=hists,
            )
            params = {"lr": cfg.lr, "momentum": 0.5, "lr_decay": 0.5}
            study.trials.append(FakeTrial(name, k, "COMPLETE", "ok", rec.value, params, 1.0, rec))
        for (j, i), layers_ in per_trial.items():
            expected[(lam, STEPS[j], i)] = _independent_share(layers_)
    return study, expected


def test_zero_shares_equal_a_direct_count(
    zero_study: tuple[FakeStudySet, dict[tuple[float, int, int], float]],
) -> None:
    study, expected = zero_study
    h = summarize(study).histograms
    assert h is not None and h.layers == ["fc1", "fc2"] and h.steps == list(STEPS)
    for (lam, step, layer), share in expected.items():
        assert h.underflow[f"λ={lam:.0e}"][h.steps.index(step)][layer] == pytest.approx(share)
    assert h.underflow["λ=1e+00"][0][1] == pytest.approx(48 / 64)  # as built in


def test_histogram_figure_prints_the_zero_shares_in_the_lambda_colours(
    zero_study: tuple[FakeStudySet, dict[tuple[float, int, int], float]], tmp_path: Path
) -> None:
    study, expected = zero_study
    summary = summarize(study)
    with style_context():
        drawn = figures.gradient_histograms(summary, tmp_path)
    assert drawn is not None
    svg = drawn.svg.read_text()
    printed = re.findall(r">\s*(\d+(?:\.\d)?)%\s*<", svg)  # the percentages drawn as text
    want = sorted(f"{100 * v:.0f}" for v in expected.values())
    assert sorted(printed) == want
    assert "&lt;1e-20" in svg  # the header says what the numbers count
    # λ = 1e-4 and 1 are the grid's first and second λ: the palette's first two colours
    strokes = set(re.findall(r"stroke: (#[0-9a-f]{6})", svg))
    assert {LAM_PALETTE[0].lower(), LAM_PALETTE[1].lower()} <= strokes


def _histograms(mass_by_bin: dict[int, float], n_bins: int = 88) -> GradientHistograms:
    edges = HistogramBins(n_bins=n_bins).edges()
    frac = [0.0] * n_bins
    for b, m in mass_by_bin.items():
        frac[b] = m
    return GradientHistograms(
        edges=edges,
        steps=[60],
        layers=["fc1"],
        labels=["λ=1e+00"],
        fractions={"λ=1e+00": [[frac]]},
        underflow={"λ=1e+00": [[0.0]]},
        median_log10={"λ=1e+00": [0.0]},
        n_trials={"λ=1e+00": 1},
    )


def test_x_range_is_the_occupied_decades_not_the_whole_bin_range() -> None:
    # bins are a quarter decade from -20: bin 40 starts at -10, bin 67 ends at -3
    body = {b: 1.0 for b in range(40, 68)}
    assert occupied_range(_histograms(body)) == (-10.0, -3.0)
    # a far tail holding under 0.5% of the values does not stretch the axis …
    assert occupied_range(_histograms({**body, 2: 0.1})) == (-10.0, -3.0)
    # … one holding more does
    lo, hi = occupied_range(_histograms({**body, 2: 1.0})) or (math.nan, math.nan)
    assert (lo, hi) == (-20.0, -3.0)
    assert occupied_range(_histograms({})) is None


def test_x_range_covers_the_data_of_every_panel() -> None:
    """Two panels far apart: the range holds both, rounded out to whole decades."""
    h = _histograms({b: 1.0 for b in range(40, 44)})
    h.layers.append("fc2")
    h.fractions["λ=1e+00"][0].append(_histograms({70: 1.0}).fractions["λ=1e+00"][0][0])
    assert occupied_range(h) == (-10.0, -2.0)


def _lr_scaled_summary(scale: str) -> StudySummary:
    study = make_study()
    study.protocol = {**study.protocol, "search": {**study.protocol["search"], "lr_scale": scale}}
    return summarize(study)


def test_lr_over_lambda_panel_is_the_stored_lr_divided_by_lambda() -> None:
    summary = _lr_scaled_summary("lambda")
    panels = {p.key: p for p in hyper_panels(summary)}
    assert list(panels) == ["lr", LR_OVER_LAMBDA, "momentum", "lr_decay"]
    lr, ratio = panels["lr"], panels[LR_OVER_LAMBDA]
    study = make_study()
    cells = {c.lam: c for c in summary.fixed if c.best is not None}
    assert ratio.lams == lr.lams == sorted(cells)
    for i, lam in enumerate(ratio.lams):
        cell = cells[lam]
        assert cell.best is not None
        assert ratio.best[i] == pytest.approx(cell.best.params["lr"] / lam)
        assert lr.best[i] == pytest.approx(cell.best.params["lr"])
        top = [
            t.params["lr"] / lam
            for t in study.trials
            if t.cell == cell.name and t.number in cell.top_numbers
        ]
        assert ratio.median[i] == pytest.approx(float(np.median(top)))
        assert ratio.q25[i] == pytest.approx(float(np.quantile(top, 0.25)))
    # bounds in each panel's units: the protocol's lr range is lr/λ's; lr's is it times λ
    low, high = PROTOCOL["search"]["lr"]["low"], PROTOCOL["search"]["lr"]["high"]
    assert ratio.bounds == [pytest.approx((lam, low, high)) for lam in ratio.lams]
    assert lr.bounds == [pytest.approx((lam, low * lam, high * lam)) for lam in lr.lams]
    assert lr.sgd_best is not None and ratio.sgd_best is None  # SGD has no λ to divide by


def test_absolute_lr_search_has_no_lr_over_lambda_panel(tmp_path: Path) -> None:
    summary = _lr_scaled_summary("none")
    panels = hyper_panels(summary)
    assert [p.key for p in panels] == ["lr", "momentum", "lr_decay"]
    low, high = PROTOCOL["search"]["lr"]["low"], PROTOCOL["search"]["lr"]["high"]
    assert all(b[1:] == (low, high) for b in panels[0].bounds)
    with style_context():
        drawn = figures_more.hyperparameters(summary, tmp_path)
    assert drawn is not None and "lr / λ" not in drawn.svg.read_text()


def test_hyperparameter_figure_shows_lr_over_lambda(tmp_path: Path) -> None:
    with style_context():
        drawn = figures_more.hyperparameters(_lr_scaled_summary("lambda"), tmp_path)
    assert drawn is not None and "lr / λ (the searched quantity)" in drawn.svg.read_text()
