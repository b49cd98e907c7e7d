"""Adaptive damping rules against the best fixed λ, with seeds of replications as units.

The paper's open question asked fairly (issue 26, point 5): does a rule, tuned with one cell's
budget, deliver what the best λ of a grid does? Every cell's top configurations reran on new
seeds shared by every cell of a replication (paired); replications are the protocol's search
seeds. So:

- the **reference** is the fixed λ whose reruns have the lowest mean capped loss over all units.
  It is chosen on the reruns it is then compared on, which favours it: a rule called better
  beat the luckiest fixed λ; a rule called worse may be worse by a little less;
- each rule (and SGD) is compared with it by the paired difference of capped final loss (a
  diverged rerun scores chance level: divergence is an outcome), *established* as the verdicts
  establish a difference: the 95% interval over units excludes 0 and every replication's mean
  difference has the same sign;
- **better** / **worse**: established on that side; **tied**: the whole interval lies within
  ± ``tie_margin`` × the reference's loss (an equivalence test, as C1's); otherwise
  **undecided**;
- binding is directional: a rule called worse whose own search range binds its optimum, or one
  called better where the reference's range binds, is **inconclusive** (a better optimum of the
  losing side may lie outside its range);
- each cell's divergence on new seeds with Wilson's interval, and its learning speed (area under
  the learning curve) against the reference, beside it;
- what each cost to tune: a rule one cell's trials, the fixed λ the whole grid's
  (``[report] fixed_grid_cells`` × trials a cell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.replication import units as U
from kfaclab.analysis.replication.paired import positive_mean, proportion
from kfaclab.analysis.replication.verdicts import (
    Thresholds,
    _pd,
    area,
    binding_of,
    capped,
    compare,
    tied_within,
)

BETTER, WORSE, TIED, UNDECIDED, INCONCLUSIVE = (
    "better",
    "worse",
    "tied",
    "undecided",
    "inconclusive",
)
REFERENCE = "reference"
SGD_CELL = "sgd"


@dataclass
class RuleRow:
    label: str
    kind: str  # "rule", "fixed" or "sgd"
    capped_loss: dict[str, float]  # geometric mean over units with its log-scale 95% interval
    diverged: list[float]  # [k, n, Wilson lo, Wilson hi]
    verdict: str  # against the reference: better / worse / tied / undecided / inconclusive
    minus_reference: dict[str, Any] | None = None  # paired capped-loss difference (verdicts._pd)
    area_minus_reference: dict[str, Any] | None = None  # the same for the learning-curve area
    binding: list[str] = field(default_factory=list)
    tuning_trials: int = 0


@dataclass
class RuleComparison:
    replications: list[str]
    n_units: int
    reference: str  # the best fixed λ's label ("" when no fixed λ has reruns)
    rows: list[RuleRow]
    tie_margin: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, label: str) -> RuleRow:
        return next(r for r in self.rows if r.label == label)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuleComparison:
        """Back from ``to_dict`` (verdicts.json's "rules"): FINDINGS.md reads it from there."""
        return cls(**{**d, "rows": [RuleRow(**r) for r in d["rows"]]})


def kinds(reps: Sequence[U.Replication]) -> dict[str, str]:
    """Cell label -> "fixed" (a λ), "sgd" or "rule" (a damping strategy), from the reruns."""
    out: dict[str, str] = {}
    for r in reps:
        for o in r.outcomes:
            if o.lam is not None:
                out[o.label] = "fixed"
            else:
                out[o.label] = "sgd" if o.cell == SGD_CELL else "rule"
    return out


def has_rules(reps: Sequence[U.Replication]) -> bool:
    return "rule" in kinds(reps).values()


def compare_rules(reps: Sequence[U.Replication], th: Thresholds | None = None) -> RuleComparison:
    """Every rule and SGD against the best fixed λ (module docstring)."""
    th = th or Thresholds()
    kind = kinds(reps)
    at = U.units(reps)
    labels = U.labels(reps)
    fixed = [x for x in labels if kind[x] == "fixed"]
    names = [r.name for r in reps]
    if not fixed:
        rows = [_row(reps, x, kind[x], at, UNDECIDED) for x in labels]
        return RuleComparison(names, len(at), "", rows, th.tie_margin, "no fixed λ has reruns")
    means = {x: float(np.nanmean(U.per_unit(reps, x, capped, at))) for x in fixed}
    ref = min(fixed, key=lambda x: means[x])
    rows = []
    for x in labels:
        if x == ref:
            rows.append(_row(reps, x, "fixed", at, REFERENCE))
            continue
        row = _row(reps, x, kind[x], at, UNDECIDED)
        p, per_rep, est = compare(reps, x, ref, capped, th.level)
        row.minus_reference = _pd(p, per_rep, est)
        pa, per_a, est_a = compare(reps, x, ref, area, th.level)
        row.area_minus_reference = _pd(pa, per_a, est_a)
        row.verdict = _verdict(row.minus_reference, means[ref], th)
        row.verdict = _unless_bound(row, reps, ref)
        rows.append(row)
    return RuleComparison(names, len(at), ref, rows, th.tie_margin)


def _verdict(diff: dict[str, Any], ref_loss: float, th: Thresholds) -> str:
    if diff["established"] < 0:
        return BETTER
    if diff["established"] > 0:
        return WORSE
    return TIED if tied_within(diff, ref_loss, th) else UNDECIDED


def _unless_bound(row: RuleRow, reps: Sequence[U.Replication], ref: str) -> str:
    """Directional binding: only the losing side's range could hide an optimum that flips it."""
    loser = row.label if row.verdict == WORSE else ref if row.verdict == BETTER else None
    if loser is None:
        return row.verdict
    bound = binding_of(reps, loser)
    if not bound:
        return row.verdict
    row.binding = bound
    return INCONCLUSIVE


def _row(
    reps: Sequence[U.Replication], label: str, kind: str, at: Sequence[U.Unit], verdict: str
) -> RuleRow:
    k, n = U.divergence_counts(reps, label)
    p = proportion(k, n)
    cap = positive_mean(U.per_unit(reps, label, capped, at))
    return RuleRow(
        label=label,
        kind=kind,
        capped_loss={"estimate": cap.estimate, "lo": cap.lo, "hi": cap.hi, "n": cap.n},
        diverged=[k, n, p.lo, p.hi],
        verdict=verdict,
        binding=binding_of(reps, label) if verdict == REFERENCE else [],
        tuning_trials=_tuning_trials(reps, kind),
    )


def _tuning_trials(reps: Sequence[U.Replication], kind: str) -> int:
    """Trials one replication paid for this row's result: one cell's budget, or for a fixed λ
    the whole grid's (``[report] fixed_grid_cells``, default the λ cells of this protocol)."""
    proto = reps[0].protocol if reps else {}
    search = proto.get("search", {})
    n_trials = int(search.get("n_trials", 0)) if isinstance(search, dict) else 0
    if kind != "fixed":
        return n_trials
    report = proto.get("report", {})
    cells = proto.get("cells", {})
    own = len(cells.get("lambdas", [])) if isinstance(cells, dict) else 0
    grid = report.get("fixed_grid_cells", own) if isinstance(report, dict) else own
    return n_trials * int(grid or own or 1)


WORDS = {
    BETTER: "better than",
    WORSE: "worse than",
    TIED: "tied with",
    UNDECIDED: "not separable from",
    INCONCLUSIVE: "inconclusive against (a search range binds)",
}


def rules_answer(c: RuleComparison) -> str:
    """One sentence: each rule's verdict against the reference, grouped."""
    if not c.reference:
        return f"No rule can be compared: {c.note}."
    groups: dict[str, list[str]] = {}
    for r in c.rows:
        if r.kind == "rule":
            groups.setdefault(r.verdict, []).append(r.label)
    if not groups:
        return f"No adaptive rule has reruns; the best fixed λ is {c.reference}."
    parts = [f"{WORDS[v]} it: {', '.join(groups[v])}" for v in WORDS if v in groups]
    return (
        f"Against the best fixed λ on new seeds ({c.reference}, {c.n_units} paired seeds over "
        f"{len(c.replications)} search seed(s)), each rule tuned with one cell's budget is "
        + "; ".join(parts)
        + "."
    )


def _g(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def _diff(d: dict[str, Any] | None) -> str:
    if d is None or not math.isfinite(d["estimate"]):
        return "—"
    per = ", ".join(f"{m:+.3g}" for m in d["per_replication"])
    return (
        f"{d['estimate']:+.3g} [{_g(d['lo'])}, {_g(d['hi'])}] "
        f"({d['n_positive']}/{d['n']} positive; replications {per})"
    )


TABLE_HEADER = [
    "cell",
    "final loss on new seeds (geometric mean, 95% CI)",
    "− reference (paired)",
    "learning-curve area − reference",
    "diverged (Wilson 95%)",
    "verdict",
    "tuning trials",
]


def table_rows(c: RuleComparison) -> list[list[str]]:
    rows = []
    for r in c.rows:
        k, n, lo, hi = r.diverged
        cl = r.capped_loss
        verdict = r.verdict + (f" ({'; '.join(r.binding)})" if r.binding else "")
        rows.append(
            [
                f"{r.label} ({r.kind})",
                f"{_g(cl['estimate'])} [{_g(cl['lo'])}, {_g(cl['hi'])}]",
                _diff(r.minus_reference),
                _diff(r.area_minus_reference),
                f"{int(k)}/{int(n)} [{lo:.0%}, {hi:.0%}]",
                verdict,
                str(r.tuning_trials),
            ]
        )
    return rows


def caption(c: RuleComparison) -> str:
    return (
        "Better or worse: the paired difference's 95% interval over seeds excludes 0 and every "
        f"search seed agrees in sign; tied: the whole interval within ±{c.tie_margin:g} × the "
        "reference's loss; otherwise not separable. The reference is the fixed λ with the lowest "
        "mean on these same reruns, which favours it. Each row is its own 95% test, not adjusted "
        "for the number of rows. A diverged rerun counts as chance level "
        "(ln 10). Tuning trials: what one search seed paid for the row (a fixed λ: its whole "
        "grid)."
    )


def rules_lines(c: RuleComparison) -> list[str]:
    """The answer sentence and the table, as Markdown lines."""
    lines = [
        rules_answer(c),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(c)]
    return [*lines, "", caption(c)]
