"""The presets of every reading: what they assume is what their files say, the screening files
differ from their full readings only in budget, and the lr ranges leave the optima the first
full run measured inside the non-binding interior."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kfaclab.analysis.statistics.binding import LOG_OUTER
from kfaclab.errors import UsageError
from kfaclab.study.cells import build_cells, search_space
from kfaclab.study.protocol import load_protocol

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
READINGS = ("paper", "paper-linear", "paper-b2", "paper-popular", "paper-popular-noclip")
NEW_KEYS = ("factor_init", "factor_every", "eigen_floor")  # protocol keys of the cli branch

# Measured in the first full run (docs/results/paper-first-run, lr ≤ 1): SGD's best lr, and
# λ = 1e-5's.
SGD_BEST_LR = 0.315
SMALLEST_LAMBDA_BEST_LR = 3.11e-5
TOP_K_SPREAD_DECADES = 0.5  # the top-100's lr spread around the best, in that run (λ = 1e-3)


def raw(name: str) -> dict[str, Any]:
    return tomllib.loads((CONFIGS / f"{name}.toml").read_text())


def load(name: str) -> Any:
    try:
        return load_protocol(CONFIGS / f"{name}.toml")
    except UsageError as exc:
        if any(k in str(exc) for k in NEW_KEYS):
            pytest.skip(f"{name}: the protocol does not know the new keys yet ({exc})")
        raise


@pytest.mark.parametrize("reading", READINGS)
def test_screening_file_is_its_reading_with_a_smaller_budget(reading: str) -> None:
    full, quick = raw(reading), raw(f"readings-quick-{reading}")
    assert quick["protocol"]["name"] == f"readings-quick-{reading}"
    assert (quick["search"]["n_trials"], quick["search"]["top_k"]) == (40, 10)
    for d in (full, quick):
        del d["protocol"], d["search"]["n_trials"], d["search"]["top_k"]
    assert quick == full
    assert "steps" not in quick["training"] and quick["training"]["epochs"] == 1  # a full epoch


@pytest.mark.parametrize("reading", READINGS)
def test_every_reading_loads(reading: str) -> None:
    p = load(reading)
    assert p.name == reading and p.search.n_trials == 300


def test_popular_presets_are_the_popular_implementation_defaults() -> None:
    pop, noclip = raw("paper-popular")["training"], raw("paper-popular-noclip")["training"]
    expected = {
        "factor_init": "identity",
        "factor_decay": 0.95,
        "factor_every": 10,
        "inverse_every": 100,
        "eigen_floor": 1e-10,
        "damping_form": "exact",
        "fisher": "mc",
    }
    assert {k: pop[k] for k in expected} == expected
    assert pop["kl_clip"] == 1e-3 and "kl_clip" not in noclip
    assert {k: v for k, v in pop.items() if k != "kl_clip"} == noclip
    assert raw("paper-popular")["cells"]["lambda_convention"] == "ours"
    # The clip searched instead of fixed: training is noclip's, the clip a per-trial range that
    # holds the class default (1e-3) and the training script's 1e-2, lr tied to λ under it.
    clipsearch = raw("paper-popular-clipsearch")
    assert clipsearch["training"] == noclip
    search = clipsearch["search"]
    assert search["kl_clip"]["low"] <= 1e-3 and search["kl_clip"]["high"] >= 1e-2
    assert (search["lr_scale"], search["kl_clip_lr"]) == ("lambda", 1.0)
    assert load("paper-popular-clipsearch").search.n_trials == 300
    # Its replication differs in the search seed alone.
    seed1 = raw("paper-popular-noclip-seed1")
    assert seed1["search"]["seed"] == 1 and seed1["training"] == noclip
    assert {k: v for k, v in seed1["search"].items() if k != "seed"} == {
        k: v for k, v in raw("paper-popular-noclip")["search"].items() if k != "seed"
    }


# Measured in the screening runs (docs/results/screening, every non-popular reading): each λ cell's
# best lr / λ (our λ) lay in this band, from λ = 1e-5 to 1e2.
BEST_LR_OVER_LAMBDA = (0.1, 3.0)


def _log_position(x: float, low: float, high: float) -> float:
    return (math.log10(x) - math.log10(low)) / (math.log10(high) - math.log10(low))


@pytest.mark.parametrize("reading", ("paper", "paper-linear", "paper-b2"))
def test_lr_range_leaves_the_expected_optima_inside(reading: str) -> None:
    """Every cell's expected optimum, with the top-k's spread, lies outside the outer 5% that
    binding.py calls binding — in the range the sweep really samples (search_space)."""
    p = load(reading)
    for cell in build_cells(p):
        r = search_space(p, cell)["lr"]
        if cell.damping is None:  # SGD
            expected = [SGD_BEST_LR]
        else:
            assert isinstance(cell.damping, float)
            expected = [ratio * cell.damping for ratio in BEST_LR_OVER_LAMBDA]
            if cell.damping == 1e-5:
                expected.append(SMALLEST_LAMBDA_BEST_LR)
        for x in expected:
            low = _log_position(x / 10**TOP_K_SPREAD_DECADES, r.low, r.high)
            high = _log_position(x * 10**TOP_K_SPREAD_DECADES, r.low, r.high)
            assert low > LOG_OUTER and high < 1 - LOG_OUTER, (cell.name, x, r)


def test_replication_is_paper_with_another_seed() -> None:
    full, again = raw("paper"), raw("paper-seed1")
    assert again["protocol"]["name"] == "paper-seed1" and again["search"]["seed"] == 1
    assert full["search"]["seed"] == 0
    for d in (full, again):
        del d["protocol"], d["search"]["seed"]
    assert again == full
    assert load("paper-seed1").search.n_trials == 300


def test_closest_preset_is_the_screen_point_closest_to_c1_at_full_scale() -> None:
    """paper-closest is screen-design's run10 (chosen from effects.json: best λ nearest 1) with
    the full protocol's budget; its replication differs in the search seed alone."""
    import json

    from kfaclab.analysis.findings.design import closest_to_c1
    from kfaclab.study.design_schema import parse_design

    design = parse_design(raw("screen-design"))
    effects = json.loads(
        (Path(__file__).parents[1] / "docs/results/screen-design/effects.json").read_text()
    )
    by_point: dict[tuple[int, ...], list[float]] = {}
    for r in effects["runs"]:
        by_point.setdefault(tuple(r["levels"]), []).append(r["values"]["log10_best_lambda"])
    nearest = min(by_point, key=lambda p: abs(sum(by_point[p]) / len(by_point[p])))
    point = closest_to_c1(Path(__file__).parents[1] / "docs/results/screen-design")
    assert point is not None and point.levels == nearest and point.n_seeds == 2
    assert "activation=tanh" in point.words and "refresh=identity-10-100" in point.words
    run = next(r for r in design.runs if r.levels == nearest and r.seed == 0)
    closest = raw("paper-closest")
    for table in ("model", "training", "cells"):
        assert closest[table] == run.raw[table], table
    budget = {"n_trials": 300, "top_k": 100, "seed": 0}
    assert closest["search"] == {**run.raw["search"], **budget}
    seed1 = raw("paper-closest-seed1")
    assert seed1["search"] == {**closest["search"], "seed": 1}
    assert {k: v for k, v in seed1.items() if k not in ("search", "protocol")} == {
        k: v for k, v in closest.items() if k not in ("search", "protocol")
    }
