"""FINDINGS.md's adaptive-damping section, from a run folder's adaptive.json: does a rule, tuned
with one cell's budget, tie the best fixed λ of a grid? (The paper's own open question.)

Each rule is compared with the best fixed λ twice, as C1 is: on the top-k means of the searches
(Welch's 95% interval of the difference) and on the reruns of each best configuration over new
seeds. The top-k trials of a cell share one training seed and one TPE path, so their interval
alone understates the uncertainty; a rule is called better or worse only where both agree."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from kfaclab.analysis.findings.side_by_side import table_row
from kfaclab.analysis.report.numbers import num
from kfaclab.analysis.statistics.intervals import HIGHER, LOWER, UNKNOWN, MeanCI, compare_means
from kfaclab.analysis.summary.adaptive_store import RankedCell, load_ranking


def compare(a: MeanCI, b: MeanCI) -> tuple[str, str]:
    """(a's loss lower / higher / tied with b's / unknown, "difference [lo, hi]")."""
    outcome, d = compare_means(a, b)
    if outcome == UNKNOWN:
        return UNKNOWN, "—"
    return outcome, f"{num(d.diff)} [{num(d.lo)}, {num(d.hi)}]"


def verdict(top_k: str, rerun: str | None) -> str:
    """A rule against the best fixed λ: better or worse only when the top-k comparison and the
    reruns' agree (no reruns: the top-k alone, said so)."""
    if rerun is None or rerun == UNKNOWN:
        return {LOWER: "better (top-k only)", HIGHER: "worse (top-k only)"}.get(top_k, "tied")
    if top_k == rerun == LOWER:
        return "better"
    if top_k == rerun == HIGHER:
        return "worse"
    return "tied"


def _mean(m: MeanCI | None) -> str:
    if m is None or not math.isfinite(m.mean):
        return "—"
    if not (math.isfinite(m.lo) and math.isfinite(m.hi)):
        return num(m.mean)
    return f"{num(m.mean)} [{num(m.lo)}, {num(m.hi)}]"


FAIR_VERDICTS = "verdicts-adaptive-fair"
"""The folder of `kfaclab verdicts` over the adaptive-fair runs (configs/adaptive-fair*.toml):
every cell searching lr / λ, paired reruns of each cell's top 5 on new seeds, two search seeds."""


def fair_lines(results: Path, folder: str = FAIR_VERDICTS) -> list[str] | None:
    """The fair comparison (replication/rules.py) from ``folder``/verdicts.json, or None when it
    has not landed."""
    from kfaclab.analysis.replication.rules import RuleComparison, rules_lines

    path = results / folder / "verdicts.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "rules" not in data:
        return None
    rules = RuleComparison.from_dict(data["rules"])
    runs = ", ".join(f"`{r}`" for r in rules.replications)
    n = len(rules.replications)
    pending = (
        " A second search seed (configs/adaptive-fair-seed1.toml) has not landed yet: until it "
        "does, no verdict here has been checked against another search."
        if n < 2
        else ""
    )
    return [
        "configs/adaptive-fair.toml: each rule of kfaclab.damping as a cell beside the best "
        "fixed λ band (1e-3 … 1e-1) and SGD, every K-FAC cell searching lr / λ (a rule's lr "
        f"scales with its current λ), the same budget per cell; {n} search seed(s): {runs}."
        + pending,
        "",
        *rules_lines(rules),
        "",
        f"Every page: [{folder}/verdicts.md]({folder}/verdicts.md).",
    ]


def adaptive_lines(results: Path, folder: str = "adaptive") -> list[str]:
    """The section's body: the fair comparison on new seeds where it has landed, else the
    first run's top-k comparison (a summary sentence and the table), or why there is none."""
    fair = fair_lines(results) if folder == "adaptive" else None
    if fair is not None:
        return [
            *fair,
            "",
            "This replaces the first `adaptive` run's comparison (one absolute lr range for every "
            "cell, the fixed λ re-searched over it, one search seed, three rerun seeds of the "
            "single best configuration): [adaptive/README.md](adaptive/README.md).",
        ]
    intro = (
        [
            "configs/adaptive.toml: each rule of kfaclab.damping as a cell beside the `paper` "
            "run's best fixed λ and SGD, one absolute lr range for every cell, one search seed. "
            "Its fair successor (configs/adaptive-fair.toml: lr / λ searched everywhere, two "
            f"search seeds, paired reruns) has not landed in {FAIR_VERDICTS}/ yet.",
            "",
        ]
        if folder == "adaptive"
        else []
    )
    path = results / folder / "adaptive.json"
    if not path.is_file():
        return [f"The full-scale `{folder}` run (configs/{folder}.toml) has not landed yet."]
    _, cells = load_ranking(path)
    fixed = next((c for c in cells if c.kind == "fixed"), None)
    if fixed is None:
        return [f"{folder}/adaptive.json has no fixed-λ cell to compare the rules with."]
    return [*intro, *_summary(cells, fixed), "", *_table(cells, fixed)]


def _outcomes(cells: Sequence[RankedCell], fixed: RankedCell) -> list[tuple[RankedCell, str]]:
    out = []
    for c in cells:
        if c.kind != "adaptive":
            continue
        top_k, _ = compare(c.top_k, fixed.top_k)
        rerun = None
        if c.rerun is not None and fixed.rerun is not None:
            rerun, _ = compare(c.rerun, fixed.rerun)
        out.append((c, verdict(top_k, rerun)))
    return out


def _summary(cells: Sequence[RankedCell], fixed: RankedCell) -> list[str]:
    outcomes = _outcomes(cells, fixed)
    groups: dict[str, list[str]] = {}
    for c, v in outcomes:
        groups.setdefault(v, []).append(c.label)
    words = (
        ("better", "better than it"),
        ("better (top-k only)", "better on the top-k alone (too few finite reruns to check)"),
        ("tied", "tied with it"),
        ("worse (top-k only)", "worse on the top-k alone (too few finite reruns to check)"),
        ("worse", "worse than it"),
    )
    parts = [f"{word}: {', '.join(groups[key])}" for key, word in words if key in groups]
    return [
        f"Against the best fixed λ ({fixed.label}, chosen by a grid of {fixed.trials_total} "
        f"trials), each rule searched with one cell's budget is {'; '.join(parts)}. Better or "
        "worse means both the top-k means and the reruns on new seeds say so (95% intervals of "
        "the difference exclude 0); otherwise tied."
    ]


def _table(cells: Sequence[RankedCell], fixed: RankedCell) -> list[str]:
    rows = [
        "| cell | top-k mean [95% CI] | − best fixed λ | on new seeds | − best fixed λ "
        "(new seeds) | verdict | search trials |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    outcomes = dict((c.label, v) for c, v in _outcomes(cells, fixed))
    for c in cells:
        diff = compare(c.top_k, fixed.top_k)[1] if c is not fixed else "—"
        rerun_diff = "—"
        if c is not fixed and c.rerun is not None and fixed.rerun is not None:
            rerun_diff = compare(c.rerun, fixed.rerun)[1]
        v = outcomes.get(c.label, "reference" if c is fixed else "—")
        rows.append(
            table_row(
                [
                    c.label,
                    _mean(c.top_k),
                    diff,
                    _mean(c.rerun),
                    rerun_diff,
                    v,
                    str(c.trials_total),
                ]
            )
        )
    return rows
