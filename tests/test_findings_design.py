"""FINDINGS.md's "Which unstated choice decides each claim", from an effects.json written by the
effects code itself on synthetic runs with a known answer: one factor moves the best λ by two
decades, nothing moves the other responses."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from kfaclab.analysis.effects.report import RunValues, effects_data, effects_tables
from kfaclab.analysis.findings.design import (
    FactorEffect,
    deciding_words,
    design_section,
    read_design,
)
from test_effects import screen

NAMES = [
    "log10_best_lambda",
    "loss_gap_at_one",
    "smallest_lambda_divergence",
    "smallest_lambda_rerun_divergence",
]


def write_synthetic(folder: Path, seeds: list[int], finished_seed1: int = 16) -> None:
    design = screen(seeds)
    rng = np.random.default_rng(30)  # a draw whose noise responses have no false positive
    reruns = np.random.default_rng(3)  # likewise; only seed 0's runs have reruns
    runs = []
    for i, run in enumerate(design.runs):
        d = 1.0 if run.levels[3] else -1.0  # factor D ("d"): +2 decades of best λ at level 1
        values = {
            "log10_best_lambda": -2.0 + 1.0 * d + 0.1 * rng.standard_normal(),
            "loss_gap_at_one": 0.03 + 0.005 * rng.standard_normal(),
            "smallest_lambda_divergence": 0.2 + 0.05 * rng.standard_normal(),
            "smallest_lambda_rerun_divergence": (
                0.4 + 0.1 * reruns.standard_normal() if run.seed == 0 else math.nan
            ),
        }
        if run.seed == 1 and i - 16 >= finished_seed1:
            values = dict.fromkeys(NAMES, math.nan)
        runs.append(RunValues(run.name, run.seed, run.levels, values))
    tables = effects_tables(design, runs, NAMES)
    data = effects_data(design, runs, tables, {"n_trials": 40, "epochs": 1, "steps": None})
    folder.mkdir(parents=True)
    (folder / "effects.json").write_text(json.dumps(data, default=str))


def test_the_deciding_factor_is_named_with_its_direction_and_the_rest_are_not(
    tmp_path: Path,
) -> None:
    write_synthetic(tmp_path / "screen", [0, 1])
    d = read_design(tmp_path / "screen")
    assert (d.runs_done, d.runs_total, d.seeds_done) == (32, 32, [0, 1])
    by_name = {r.response: r for r in d.responses}
    best = by_name["log10_best_lambda"]
    assert best.claim == "C1" and best.interval == "replicates"
    assert [e.names for e in best.deciding] == ["d"]
    assert best.deciding[0].change == "1 → 10" and 1.8 < best.deciding[0].estimate < 2.2
    assert not by_name["loss_gap_at_one"].deciding  # pure noise: nothing clear of 0 here
    lines = design_section(tmp_path)
    text = "\n".join(lines)
    assert "32 of 32 runs finished (seeds 0, 1)" in text and "40 TPE trials a cell, 1 epoch" in text
    assert "- **C1**: where the best λ lies (decades of λ) moves most with d (1 → 10) +2" in text
    assert "how far λ = 1 ends above the best λ: no factor is clear of 0" in text
    c2 = "| C2 | how often the search's trials at the smallest λ diverge (share of trials) |"
    assert c2 in text
    # seed 1's runs have no reruns: they still count as finished, and the reruns' response has
    # seed 0's 16 runs alone, so Lenth's interval
    reruns = by_name["smallest_lambda_rerun_divergence"]
    assert reruns.claim == "C2" and reruns.n_obs == 16 and reruns.interval == "lenth"
    assert "1 of 56 intervals exclude 0; with no real effect at all about 2.8 would" in text


def test_one_seed_reads_as_lenth_and_says_so(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "screen", [0, 1], finished_seed1=0)
    d = read_design(tmp_path / "screen")
    assert (d.runs_done, d.seeds_done) == (16, [0])
    assert {r.interval for r in d.responses} == {"lenth"}
    assert "Lenth's pseudo standard error" in "\n".join(design_section(tmp_path))


def test_no_design_no_section(tmp_path: Path) -> None:
    assert design_section(tmp_path) == []


def test_many_deciding_effects_are_cut_to_the_largest_three(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "screen", [0, 1])
    d = read_design(tmp_path / "screen")
    best = next(r for r in d.responses if r.response == "log10_best_lambda")
    effects = [
        FactorEffect(f"f{i}", "", 1.0 - 0.1 * i, 0.5 - 0.1 * i, 1.5 - 0.1 * i) for i in range(5)
    ]
    many = dataclasses.replace(best, effects=effects)
    words = deciding_words(many)
    assert words.startswith("f0 +1 [+0.5, +1.5]; f1 +0.9") and "f2 +0.8" in words
    assert "f3" not in words and words.endswith("(and 2 more, in effects.md)")
    assert deciding_words(dataclasses.replace(best, effects=effects[:3])).endswith("+1.3]")
