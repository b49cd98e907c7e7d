"""The [design] table: strict reading (one-line errors naming the key, the rule and the value),
levels as bundles of protocol keys, runs expanded into ordinary protocols, the shipped designs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kfaclab.errors import UsageError
from kfaclab.study.design_schema import parse_design, run_protocol
from kfaclab.study.protocol import parse_protocol, read_toml

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "kfaclab" / "configs"


def base() -> dict[str, Any]:
    return {
        "protocol": {"name": "d", "description": "base"},
        "data": {"dataset": "mnist"},
        "model": {"depth": 2, "width": 4},
        "training": {"batch_size": 8, "steps": 3},
        "cells": {"lambdas": [1e-2, 1.0]},
        "search": {
            "n_trials": 2,
            "lr": {"low": 0.01, "high": 0.1, "log": True},
            "lr_decay": {"low": 0.0, "high": 1.0},
            "momentum": {"low": 0.0, "high": 0.5},
        },
    }


def half_fraction(**design: Any) -> dict[str, Any]:
    raw = base()
    raw["design"] = {
        "kind": "fraction",
        "generators": ["C = AB"],
        "seeds": [3, 4],
        "factors": [
            {"name": "act", "levels": [{"model.activation": "relu"}, {"model.activation": "tanh"}]},
            # TOML's nested-table spelling of a dotted key
            {"name": "init", "levels": [{"model": {"init": "torch"}}, {"model": {"init": "he"}}]},
            {
                "name": "refresh",
                "labels": ["fast", "slow"],
                "levels": [
                    {"training.factor_every": 1, "training.inverse_every": 10},
                    {"training.factor_every": 5, "training.inverse_every": 20},
                ],
            },
        ],
        **design,
    }
    return raw


def test_runs_are_ordinary_protocols_with_the_levels_applied() -> None:
    d = parse_design(half_fraction(resolution="III"))
    assert d.describe() == "2^(3-1) with C = AB, resolution III"
    assert [r.name for r in d.runs] == [
        f"run0{i}-seed{s}" for s in (3, 4) for i in (1, 2, 3, 4)
    ]  # seed-major: a partial design holds whole replicates
    assert [f.labels for f in d.factors] == [("relu", "tanh"), ("torch", "he"), ("fast", "slow")]
    for run in d.runs:
        p = run_protocol(run)
        act, init, refresh = run.levels
        assert refresh == act ^ init ^ 1  # C = AB in ±1 coding: level 1 iff A and B agree
        assert p.name == f"d-{run.name}" and p.search.seed == run.seed
        assert p.model.activation == ("relu", "tanh")[act]
        assert p.model.init == ("torch", "he")[init]
        assert (p.training.factor_every, p.training.inverse_every) == ((1, 10), (5, 20))[refresh]
        assert p.cells.lambdas == (1e-2, 1.0)  # untouched keys are the base's
    assert d.manifest()["defining_relation"] == ["ABC"]


def test_full_factorial_with_three_levels_and_default_seed() -> None:
    raw = base()
    raw["search"]["seed"] = 9
    lrs = [{"search.lr": {"low": 10.0**e, "high": 10.0 ** (e + 3), "log": True}} for e in (-4, -3)]
    raw["design"] = {
        "kind": "full",
        "factors": [
            {"name": "lr", "levels": [*lrs, {"search.lr": {"low": 0.01, "high": 10.0}}]},
            {
                "name": "form",
                "levels": [{"training.damping_form": f} for f in ("exact", "factored")],
            },
        ],
    }
    d = parse_design(raw)
    assert d.two_level is None and len(d.runs) == 6 and {r.seed for r in d.runs} == {9}
    assert d.factors[0].labels == ("0", "1", "2")  # table values: named by position
    assert d.factors[1].labels == ("exact", "factored")
    assert run_protocol(d.runs[5]).search.lr.high == 10.0


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(UsageError) as err:
        parse_design(raw)
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_unknown_design_key() -> None:
    assert "unknown key 'design.generator'" in _error(half_fraction(generator=["C = AB"]))


def test_a_level_that_sets_an_unknown_protocol_key_names_the_factor() -> None:
    raw = half_fraction()
    raw["design"]["factors"][2]["levels"][1]["training.inverse_evry"] = 3
    text = _error(raw)
    assert text.startswith("design.factors[2] (refresh) level 'slow': ")
    assert "unknown key 'training.inverse_evry'" in text and "did you mean 'inverse_every'" in text


def test_a_level_with_a_bad_value_or_table() -> None:
    raw = half_fraction()
    raw["design"]["factors"][0]["levels"][1]["model.activation"] = "gelu"
    assert "level 'gelu': model.activation must be one of relu, tanh, identity" in _error(raw)
    raw = half_fraction()
    raw["design"]["factors"][0]["levels"][1] = {"protocol.name": "x"}
    assert "sets 'protocol.name'; a level may set keys of data, model" in _error(raw)
    raw = half_fraction()
    raw["design"]["factors"][0]["levels"][1] = {"search.seed": 5}
    assert "sets 'search.seed', which is design.seeds's" in _error(raw)


def test_generator_naming_an_unknown_factor() -> None:
    text = _error(half_fraction(generators=["C = AD"]))
    assert text.startswith("design.generators[0] names an unknown factor 'D'")
    assert "factors: A=act, B=init, C=refresh" in text


def test_stated_resolution_is_checked() -> None:
    text = _error(half_fraction(resolution=4))
    assert "design.resolution is 4, but 2^(3-1) with C = AB has resolution III" in text
    assert "(shortest defining word ABC)" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["design"].update(kind="half"), "design.kind must be one of full, fraction"),
        (lambda r: r["design"].pop("generators"), "design.generators must list the fraction's"),
        (
            lambda r: r["design"]["factors"][1]["levels"].append({"model.init": "glorot"}),
            "a fraction needs 2 levels per factor, got 3 for 'init'",
        ),
        (
            lambda r: r["design"]["factors"][1]["levels"][1].update({"model.activation": "tanh"}),
            "design.factors[1] (init) sets model.activation, which act also sets",
        ),
        (
            lambda r: r["design"]["factors"][1].update(name="act"),
            "design.factors[1].name must be unique, got 'act' twice",
        ),
        (
            lambda r: r["design"]["factors"][1].update(levels=[{"model.init": "he"}] * 2),
            "design.factors[1].levels must differ from each other",
        ),
        (lambda r: r["design"].update(seeds=[1, 1]), "design.seeds must not repeat a value"),
        (
            lambda r: r["design"]["factors"][2].update(labels=["a"]),
            "design.factors[2].labels must be 2 different non-empty strings, got ['a']",
        ),
    ],
)
def test_other_design_errors_are_one_line(change: Any, message: str) -> None:
    raw = half_fraction()
    change(raw)
    assert message in _error(raw)


def test_a_combination_only_a_run_has_is_refused_with_the_run_named() -> None:
    raw = half_fraction()
    # Each level alone is fine; together (run 4: act=tanh, init=he) they set kl_clip twice.
    raw["design"]["factors"][0]["levels"][1]["training.kl_clip"] = 1e-2
    raw["design"]["factors"][1]["levels"][1]["search.kl_clip"] = {"low": 1e-4, "high": 1.0}
    raw["design"]["factors"][1]["levels"][1]["search.kl_clip_lr"] = 1.0
    text = _error(raw)
    # two-key levels are named by position unless the factor gives labels
    assert text.startswith("design run run04-seed3 (act=1, init=1, refresh=slow): ")
    assert "search.kl_clip (a searched clip) and training.kl_clip (a fixed one)" in text


def test_a_protocol_reader_refuses_a_design_file() -> None:
    with pytest.raises(UsageError, match=r"a file with \[design\] is a design: `kfaclab sweep`"):
        parse_protocol(half_fraction())


def test_shipped_designs_read_and_cover_the_issue() -> None:
    path = CONFIGS / "screen-design.toml"
    d = parse_design(read_toml(path), path.parent)
    assert d.describe() == "2^(7-3) with E = ABC, F = BCD, G = ACD, resolution IV"
    assert len(d.runs) == 32 and d.seeds == (0, 1)
    assert [f.name for f in d.factors] == [
        "activation", "init", "fisher", "refresh", "kl_clip", "damping", "lr_search"
    ]  # fmt: skip
    slow = run_protocol(next(r for r in d.runs if r.levels[3] == 1 and r.levels[4] == 1))
    assert slow.training.factor_init == "identity" and slow.training.inverse_every == 100
    assert slow.search.kl_clip is not None and slow.search.kl_clip_lr == 1.0
    base_run = run_protocol(d.runs[0])  # every factor at level 0: the paper reading
    assert base_run.search.lr_scale == "lambda" and base_run.model.init == "torch"
    raw = copy.deepcopy(read_toml(CONFIGS / "screen-absolute-lr.toml"))
    family = parse_design(raw, CONFIGS)
    ranges = [run_protocol(r).search.lr for r in family.runs[:3]]
    assert [(r.low, r.high) for r in ranges] == [(1e-4, 1e-1), (1e-3, 1.0), (1e-2, 10.0)]
    assert all(run_protocol(r).search.lr_scale == "none" for r in family.runs)
