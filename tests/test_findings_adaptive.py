"""adaptive.json and FINDINGS.md's adaptive section: a rule is better or worse than the best
fixed λ only when its top-k mean and its reruns on new seeds both say so."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kfaclab.analysis.findings.adaptive import adaptive_lines, compare, verdict
from kfaclab.analysis.findings.document import findings_markdown
from kfaclab.analysis.statistics.intervals import MeanCI, mean_ci
from kfaclab.analysis.summary.adaptive_store import RankedCell, load_ranking, save_ranking


def ci(mean: float, spread: float = 0.01, n: int = 100) -> MeanCI:
    """A MeanCI of n values spread evenly around ``mean`` (± spread)."""
    return mean_ci([mean + spread * (2 * i / (n - 1) - 1) for i in range(n)])


def cell(label: str, kind: str, top: float, rerun: float | None, n_rerun: int = 3) -> RankedCell:
    again = None if rerun is None else ci(rerun, 0.002, n_rerun)
    return RankedCell(label, kind, ci(top), again, 300, "")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    cells = [
        cell("better", "adaptive", 0.05, 0.05),
        cell("λ=1e-03", "fixed", 0.08, 0.08),
        cell("better-top-k-only", "adaptive", 0.06, 0.0801),  # reruns tie: not better
        cell("no-reruns", "adaptive", 0.07, None),
        cell("tied", "adaptive", 0.0801, 0.0799),
        cell("worse", "adaptive", 0.12, 0.12),
        cell("SGD", "sgd", 0.17, 0.17),
    ]
    (tmp_path / "adaptive").mkdir()
    save_ranking("adaptive", cells, tmp_path / "adaptive" / "adaptive.json")
    return tmp_path


def test_compare_and_verdict_follow_the_intervals() -> None:
    assert compare(ci(0.05), ci(0.08))[0] == "lower"
    assert compare(ci(0.08), ci(0.05))[0] == "higher"
    assert compare(ci(0.0801), ci(0.08))[0] == "tied"
    assert compare(mean_ci([0.1]), ci(0.08))[0] == "unknown"
    assert verdict("lower", "lower") == "better" and verdict("higher", "higher") == "worse"
    assert verdict("lower", "tied") == "tied" and verdict("lower", "higher") == "tied"
    assert verdict("lower", None) == "better (top-k only)"
    assert verdict("tied", None) == "tied"


def test_ranking_round_trips_with_non_finite_numbers(tmp_path: Path) -> None:
    dead = RankedCell("dead", "adaptive", mean_ci([]), None, 300, "every trial diverged")
    save_ranking("adaptive", [dead], tmp_path / "a.json")
    assert "NaN" not in (tmp_path / "a.json").read_text()  # strict JSON
    name, (back,) = load_ranking(tmp_path / "a.json")
    assert name == "adaptive" and back.label == "dead" and back.rerun is None
    assert back.top_k.n == 0 and math.isnan(back.top_k.mean)


def test_adaptive_section_states_each_rule_against_the_best_fixed_lambda(results: Path) -> None:
    text = "\n".join(adaptive_lines(results))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if "|" in line}
    assert rows["better"].endswith("| better | 300 |")
    assert rows["better-top-k-only"].endswith("| tied | 300 |")
    assert rows["no-reruns"].endswith("| better (top-k only) | 300 |")
    assert rows["tied"].endswith("| tied | 300 |")
    assert rows["worse"].endswith("| worse | 300 |")
    assert "| reference |" in rows["λ=1e-03"]
    # the difference column: better − fixed = −0.03 with an interval below 0
    assert "-0.0300 [" in rows["better"]
    assert "better than it: better" in text and "worse than it: worse" in text
    assert "tied with it: better-top-k-only, no-reruns, tied" not in text  # no-reruns is better
    assert "tied with it: better-top-k-only, tied" in text


def test_findings_has_the_section_or_says_the_run_is_awaited(
    results: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert "## Adaptive damping without a grid" in findings_markdown(results)
    assert "| worse |" in findings_markdown(results)
    empty = tmp_path_factory.mktemp("empty")
    assert "has not landed yet" in findings_markdown(empty)


def test_fair_comparison_replaces_the_top_k_one_once_it_lands(results: Path) -> None:
    from kfaclab.analysis.replication.rules import RuleComparison, RuleRow

    row = RuleRow(
        "lm same",
        "rule",
        {"estimate": 0.09, "lo": 0.08, "hi": 0.1, "n": 20},
        [0, 150, 0.0, 0.02],
        "tied",
    )
    ref = RuleRow(
        "λ=1e-01",
        "fixed",
        {"estimate": 0.09, "lo": 0.08, "hi": 0.1, "n": 20},
        [0, 150, 0.0, 0.02],
        "reference",
    )
    fair = RuleComparison(["adaptive-fair", "adaptive-fair-seed1"], 20, "λ=1e-01", [ref, row], 0.1)
    folder = results / "verdicts-adaptive-fair"
    folder.mkdir()
    import json

    (folder / "verdicts.json").write_text(json.dumps({"rules": fair.to_dict()}))
    body = "\n".join(adaptive_lines(results))
    assert "tied with it: lm same" in body and "20 paired seeds over 2 search seed(s)" in body
    assert "better (top-k only)" not in body  # the old comparison's verdicts are gone
    assert "adaptive/README.md" in body
    assert "2 search seed(s): `adaptive-fair`, `adaptive-fair-seed1`" in body
    assert "has not landed yet" not in body
