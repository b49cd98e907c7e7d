"""The replication-level verdicts as Markdown: the answer first, then the numbers behind it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kfaclab.analysis.figures.style import DrawnFigure
from kfaclab.analysis.replication.assess import Assessment

SYMBOL = {"reproduced": "✓", "not reproduced": "✗", "inconclusive": "?"}


def _n(x: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}g}"


def claims_table(a: Assessment) -> list[str]:
    lines = ["| claim | the paper says | verdict | what the reruns show |", "|---|---|---|---|"]
    for c in a.claims:
        lines.append(
            f"| {c.key} | {c.paper} | {SYMBOL.get(c.verdict, '?')} {c.verdict} | {c.finding} |"
        )
    lines.append(
        f"| C4∧C5 | the crossing: early larger λ, late smaller λ has the larger (∂L/∂θ)² | "
        f"{SYMBOL.get(a.crossing, '?')} {a.crossing} | both halves must hold |"
    )
    return lines


def cells_table(a: Assessment) -> list[str]:
    lines = [
        "| cell | λ / mean eig(G⊗A) | final loss on new seeds (geometric mean, 95% CI) | "
        "diverged (Wilson 95%) | plateau escape (iteration) | SD between replications: "
        "top-k mean / rerun mean |",
        "|---|---|---|---|---|---|",
    ]
    for c in a.cells:
        k, n, lo, hi = c.diverged
        cl = c.capped_loss
        e = c.escape
        lines.append(
            f"| {c.label} | {_n(c.relative_damping, 2)} | {_n(cl['estimate'])} "
            f"[{_n(cl['lo'])}, {_n(cl['hi'])}] | {int(k)}/{int(n)} [{lo:.0%}, {hi:.0%}] | "
            f"{_n(e['estimate'], 3)} [{_n(e['lo'], 3)}, {_n(e['hi'], 3)}] | "
            f"{_n(c.sd_topk, 2)} / {_n(c.sd_rerun, 2)} |"
        )
    return lines


def noise_lines(a: Assessment) -> list[str]:
    pairs = a.noise.pairs
    sep = [p for p in pairs if p["separate_in_first"]]
    kept = [p for p in sep if p["survives"]]
    first = a.replications[0] if a.replications else "?"
    if len(a.replications) < 2:
        return [
            f"Of the {len(pairs)} pairs of fixed λ, {len(sep)} are separated by the top-k 95% "
            f"intervals of `{first}` alone. Whether they survive a rerun of the whole protocol "
            "needs a second replication (another search seed); this reading has one, so its "
            "verdicts rest on its paired seeds alone."
        ]
    return [
        f"Of the {len(pairs)} pairs of fixed λ, {len(sep)} are separated by the top-k 95% "
        f'intervals of `{first}` alone (the rule every earlier "intervals separate" rested on); '
        f"{len(kept)} of those survive the replication-level test (t over the "
        f"{len(a.replications)} replications of the difference of top-k means): "
        + (", ".join(f"{p['a']}/{p['b']}" for p in kept) or "none")
        + ".",
    ]


def render(
    a: Assessment,
    title: str,
    figures: Sequence[DrawnFigure] = (),
    lead: Sequence[str] = (),
    *,
    paper: bool = True,
    sections: Sequence[tuple[str, Sequence[str]]] = (),
) -> str:
    """The page. ``paper``: the protocol's [claims] paper; without it the paper's claims, their
    thresholds and sensitivity are left out (a study of one's own is not judged by them).
    ``sections``: (heading, lines) placed right after the units paragraph, e.g. the adaptive
    rules' comparison (rules.py)."""
    lines = [f"# {title}", ""]
    lines += list(lead)
    lines += [
        f"Units: {a.n_units} seeds ({', '.join(f'`{r}`' for r in a.replications)}; every cell "
        "of one replication reran on the same seeds, so differences are paired). Each cell's "
        "value at a seed is the mean over its top configurations; a diverged rerun counts as "
        f"chance level (ln 10 = {math.log(10):.3f}). A difference decides a verdict only if its "
        "95% interval over seeds excludes 0 and every replication's mean difference has the "
        "same sign.",
        "",
    ]
    if paper:
        lines += [*claims_table(a), ""]
    else:
        lines += [
            "This protocol is not a reproduction of the paper ([claims] paper = false): the "
            "paper's five claims are not tested on it.",
            "",
        ]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    lines += [
        "## Cells",
        "",
        *cells_table(a),
        "",
        "## Noise floor",
        "",
        *noise_lines(a),
        "",
    ]
    if paper:
        lines += [
            f"Thresholds: α = {a.thresholds.alpha}; C2 is not reproduced when the smallest λ's "
            f"divergence share is at most {a.thresholds.divergence_margin:.0%} above the best "
            "λ's at its Wilson upper bound.",
            "",
            *sensitivity_lines(a),
        ]
    for f in figures:
        lines += [f"![{f.title}](figures/{f.png.name})", ""]
    return "\n".join(lines)


def sensitivity_lines(a: Assessment) -> list[str]:
    """The verdicts under other thresholds, one change at a time (* marks a change)."""
    if not a.sensitivity:
        return []
    base = [c.verdict for c in a.claims] + [a.crossing]
    out = [
        "## Sensitivity to the thresholds",
        "",
        "| threshold | C1 | C2 | C3 | C4 | C5 | C4∧C5 |",
        "|---|---|---|---|---|---|---|",
        "| as pre-registered | " + " | ".join(SYMBOL.get(v, "?") for v in base) + " |",
    ]
    for row in a.sensitivity:
        cells = [
            SYMBOL.get(v, "?") + ("*" if v != b else "")
            for v, b in zip(row["verdicts"], base, strict=True)
        ]
        out.append(f"| {row['threshold']} = {row['value']:g} | " + " | ".join(cells) + " |")
    changed = sum(
        v != b for row in a.sensitivity for v, b in zip(row["verdicts"], base, strict=True)
    )
    out += [
        "",
        f"{changed} verdict changes over {len(a.sensitivity)} alternatives (* marks one).",
        "",
    ]
    return out
