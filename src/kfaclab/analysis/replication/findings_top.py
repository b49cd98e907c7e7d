"""FINDINGS.md's opening: the answer in five lines, one table of effect sizes, what would change it.

Computed from a stored assessment (``verdicts.json``, written by `kfaclab verdicts` from the
replications' paired reruns), so the page can be rebuilt without the journals. Every number here
is one of the assessment's; this module only words them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

WORD = {"reproduced": "holds", "not reproduced": "does not hold", "inconclusive": "undecided"}


def _iv(d: Mapping[str, Any], digits: int = 3) -> str:
    est, lo, hi = (float(d.get(k, math.nan)) for k in ("estimate", "lo", "hi"))
    if not math.isfinite(lo):
        return f"{est:+.{digits}g} (no interval)"
    return f"{est:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def _claim(a: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return next(c for c in a["claims"] if c["key"] == key)


def _lam(label: str) -> str:
    return label.removeprefix("λ=")


def five_lines(
    a: Mapping[str, Any],
    runs: Sequence[str],
    reading: str,
    screened: bool = False,
    others: str = "",
) -> list[str]:
    """The answer first, in plain words: one line per claim, then how sure and for what."""
    n, reps = a["n_units"], len(a["replications"])
    c1, c2, c3 = _claim(a, "C1"), _claim(a, "C2"), _claim(a, "C3")
    e1 = c1["evidence"]
    band = [_lam(x) for x in e1.get("band", [])]
    rel = e1.get("relative_damping", {})
    rels = [rel[x] for x in e1.get("band", []) if math.isfinite(rel.get(x, math.nan))]
    paper_row = next(
        (v for k, v in e1.get("minus_best", {}).items() if math.isclose(_num(k), 1.0)), None
    )
    line1 = (
        f"1. **λ = 1 is best (C1): {WORD[c1['verdict']]}.** The lowest final loss on new seeds is "
        f"at λ = {_lam(e1.get('best', '?'))}; every λ in [{band[0] if band else '?'}, "
        f"{band[-1] if band else '?'}] is not shown worse"
        + (
            f" (λ over the mean eigenvalue of G⊗A ≈ {min(rels):.2g} to {max(rels):.2g}, a scale "
            "any implementation's λ can be mapped onto)"
            if rels
            else ""
        )
        + (
            f"; λ = 1 ends higher by {_iv(paper_row)} nats ({paper_row['n_positive']} of "
            f"{paper_row['n']} seeds)."
            if paper_row
            else "."
        )
        + _finite_words(e1, c1["verdict"] == "not reproduced")
    )
    e2 = c2["evidence"]
    k, m = e2.get("diverged", [0, 0])[:2]
    kb, mb = e2.get("best_diverged", [0, 0])[:2]
    line2 = (
        f"2. **The smallest λ is unstable (C2): {WORD[c2['verdict']]}.** On new seeds, λ = "
        f"{_lam(e2.get('smallest', '?'))}'s top configurations diverge in {k} of {m} reruns "
        f"against {kb} of {mb} at the best λ (Fisher p = {e2.get('p_fisher', math.nan):.2g})."
    )
    e3 = c3["evidence"]
    sgd = e3.get("area_minus_sgd")
    line3 = (
        f"3. **The largest λ is slow (C3): {WORD[c3['verdict']]}.** Its mean training loss over "
        f"the run exceeds the best λ's by {_iv(e3.get('area_minus_best', {}))} nats"
        + (
            f"; against SGD: {_iv(sgd)}, i.e. λ = {_lam(e3.get('largest', '?'))} is SGD-like"
            if sgd and _contains_zero(sgd)
            else (f"; against SGD: {_iv(sgd)}" if sgd else "")
        )
        + "."
    )
    c4, c5 = _claim(a, "C4"), _claim(a, "C5")
    ev = c4["evidence"]
    line4 = (
        f"4. **Early larger λ, late smaller λ has the larger gradient (C4/C5, one crossing): "
        f"{WORD[a['crossing']]}.** " + _crossing_words(ev, c4["verdict"], c5["verdict"])
    )
    line5 = (
        f"5. **How sure, and for what:** {n} paired seeds ({reps} replications: "
        + ", ".join(f"`{r}`" for r in runs)
        + f") of one reading — {reading}. A difference counts only if its 95% interval over "
        "seeds excludes 0 and every replication agrees in sign. Which of the paper's unstated "
        "choices decides each claim is the question of the factorial screen "
        "(configs/screen-design.toml, docs/designs.md)"
        + (
            ": its answer so far is the section below."
            if screened
            else ", which has not been run yet."
        )
        + others
    )
    return [line1, line2, line3, line4, line5]


def _finite_words(e1: Mapping[str, Any], one_not_best: bool) -> str:
    fb = e1.get("finite_only_best")
    if not fb or fb == e1.get("best"):
        return ""
    m = e1.get("finite_only_mean", {})
    one = next((v for k, v in m.items() if math.isclose(_num(k), 1.0)), math.nan)
    return (
        f" Divergence decides the best λ: counting only reruns that did not diverge, λ = "
        f"{_lam(fb)} is lowest ({m.get(fb, math.nan):.3g} against λ = 1's {one:.3g}) — its best "
        "configurations sit at the edge of stability and some diverge on a new seed. Either "
        "way λ = 1 is not the best."
        if one_not_best and math.isfinite(one) and one > m.get(fb, math.nan)
        else f" Counting only reruns that did not diverge, λ = {_lam(fb)} is lowest."
    )


def _num(label: str) -> float:
    try:
        return float(_lam(label).split()[0])
    except ValueError:
        return math.nan


def _contains_zero(d: Mapping[str, Any]) -> bool:
    return bool(d.get("lo", math.nan) <= 0 <= d.get("hi", math.nan))


def _crossing_words(ev: Mapping[str, Any], v4: str, v5: str) -> str:
    if not ev:
        return "No gradient data on new seeds."
    by = ev["slopes"]["by_step"]
    early, late = by[str(ev["early"])]["mean"], by[str(ev["late"])]["mean"]
    esc = ev["escape"]["slope"]
    return (
        f"Slope of median log10 (∂L/∂θ)² per decade of λ, over every λ: {_iv(early)} at "
        f"iteration {ev['early']} (C4 needs > 0: {WORD[v4]}), {_iv(late)} at {ev['late']} "
        f"(C5 needs < 0: {WORD[v5]}). Plateau escape comes {_iv(esc, 2)} iterations later per "
        'decade of λ (the paper\'s "larger λ escapes the plateau" needs < 0).'
    )


def effects_table(a: Mapping[str, Any]) -> list[str]:
    """Every comparison that decides a verdict: its estimate with the interval over seeds, each
    replication's own estimate, and the noise floor (between-replication SD of the cells)."""
    rows = [
        "| comparison | estimate [95% CI over seeds] | per replication | seeds |",
        "| --- | --- | --- | --- |",
    ]
    c1, c3 = _claim(a, "C1")["evidence"], _claim(a, "C3")["evidence"]
    for lab, row in c1.get("minus_best", {}).items():
        rows.append(_row(f"final loss, {lab} − {c1['best']}", row))
    for key, name in (("area_minus_best", "best λ"), ("area_minus_sgd", "SGD")):
        if key in c3:
            rows.append(_row(f"mean training loss, {c3['largest']} − {name}", c3[key]))
    ev = _claim(a, "C4")["evidence"]
    if ev:
        for step in ev["slopes"]["steps"]:
            m = ev["slopes"]["by_step"][str(step)]["mean"]
            rows.append(
                f"| gradient slope on log10 λ at iteration {step} | {_iv(m)} | | {m['n']} |"
            )
        rows.append(
            f"| crossing: late − early slope | {_iv(ev['interaction'])} | | "
            f"{ev['interaction']['n']} |"
        )
        rows.append(
            f"| plateau-escape iterations per decade of λ | "
            f"{_iv(ev['escape']['slope'], 2)} | | {ev['escape']['slope']['n']} |"
        )
    return rows


def _row(name: str, r: Mapping[str, Any]) -> str:
    per = ", ".join(f"{x:+.3g}" for x in r.get("per_replication", []))
    return f"| {name} | {_iv(r)} | {per} | {r.get('n', '')} |"


def noise_table(a: Mapping[str, Any]) -> list[str]:
    rows = [
        "| cell | λ / mean eig(G⊗A) | between-replication SD: top-k mean | rerun mean |",
        "| --- | --- | --- | --- |",
    ]
    for c in a["cells"]:
        rd = c["relative_damping"]
        rows.append(
            f"| {c['label']} | {rd:.2g} | {c['sd_topk']:.3g} | {c['sd_rerun']:.3g} |"
            if math.isfinite(rd)
            else f"| {c['label']} | – | {c['sd_topk']:.3g} | {c['sd_rerun']:.3g} |"
        )
    pairs = a["noise"]["pairs"]
    sep = [p for p in pairs if p["separate_in_first"]]
    kept = [p for p in sep if p["survives"]]
    rows += [
        "",
        f'{len(sep)} of {len(pairs)} pairs of λ were "separated" by the top-k intervals of the '
        f"first replication alone; {len(kept)} of them survive a test with replications as units"
        " (t over replications of the difference of top-k means).",
    ]
    return rows


def would_change(a: Mapping[str, Any]) -> list[str]:
    """What each verdict would need, in the assessment's own numbers."""
    out = []
    e1 = _claim(a, "C1")["evidence"]
    margin = e1.get("tie_margin")
    row = next((v for k, v in e1.get("minus_best", {}).items() if math.isclose(_num(k), 1.0)), None)
    if row and margin is not None:
        out.append(
            f'- C1 flips to "holds" if λ = 1\'s deficit ({row["estimate"]:+.3g}) shrank into the '
            f"tie margin ±{margin:.2g} with its whole interval: a reading in which λ = 1 trains "
            "about as well as the best λ (candidates: the choices the factorial screen finds "
            "moving λ = 1's deficit, in the section on unstated choices; absolute lr ranges were "
            "screened and do not: [screen-absolute-lr](screen-absolute-lr/README.md))."
        )
    ev = _claim(a, "C4")["evidence"]
    if ev:
        early = ev["slopes"]["by_step"][str(ev["early"])]["mean"]
        out.append(
            f"- C4 needs the early slope ({early['estimate']:+.3g}) to turn positive: a reading "
            "in which large λ leaves the plateau first (initialisation, activation, refresh "
            "schedule)."
        )
    return out
