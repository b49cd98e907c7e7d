"""The answer first: the headline of a report (best λ, the λ tied with it, SGD, the claims table)
as report blocks, and the same as plain text for the terminal (``kfaclab reproduce`` ends with it).
"""

from __future__ import annotations

import math

from kfaclab.analysis.claims.paper import ClaimSet, Headline
from kfaclab.analysis.report.blocks import Block, Bullets, Heading, Para, Table
from kfaclab.analysis.report.numbers import num


def _ci(mean: float, lo: float, hi: float) -> str:
    if math.isnan(mean):
        return "no surviving trial"
    if math.isnan(lo):
        return f"{num(mean)} (one trial: no interval)"
    return f"{num(mean)} (95% CI [{num(lo)}, {num(hi)}])"


def sentence(h: Headline) -> str:
    """One paragraph: the best λ with its interval, the λ tied with it, SGD."""
    if h.best is None:
        return "No K-FAC cell has a finished, non-diverged trial yet: no λ can be called best."
    tied = ", ".join(h.tied) if h.tied else "none"
    return (
        f"Best fixed λ: {h.best}, top-k mean final training loss "
        f"{_ci(h.best_mean, h.best_lo, h.best_hi)}. Statistically tied with it (Welch 95% "
        f"interval of the difference includes 0): {tied}. SGD: "
        f"{_ci(h.sgd_mean, h.sgd_lo, h.sgd_hi)}."
    )


def claims_table(cs: ClaimSet) -> Table:
    rows = [[f"{c.key} {c.title}", c.paper, c.finding, c.verdict_text()] for c in cs.claims]
    return Table(
        ["claim", "paper says", "this study finds", "verdict"],
        rows,
        "Verdicts are computed from this study's numbers (kfaclab.analysis.claims, thresholds "
        "named there). Inconclusive: the evidence cannot decide, and the verdict says why; "
        "'the search range binds' means a cell the claim depends on has its optimum at the edge "
        "of a search range (listed below), so the answer may be an artefact of the range.",
    )


NO_CLAIMS = (
    "This protocol tests no claims of the paper ([claims] paper = false): the numbers below "
    "describe the study; its own questions are the reader's."
)


def headline_blocks(cs: ClaimSet, bindings: list[str]) -> list[Block]:
    out: list[Block] = [Heading("Answer"), Para(sentence(cs.headline))]
    if cs.headline.separation_warning:
        out.append(Para(cs.headline.separation_warning, "warning"))
    if not cs.claims:
        out.append(Para(NO_CLAIMS, "note"))
    else:
        out.append(claims_table(cs))
    if bindings:
        out.append(Para("Search ranges that bind a cell's optimum:", "warning"))
        out.append(Bullets(bindings, "warning"))
    return out


def headline_text(cs: ClaimSet) -> str:
    """The headline for a terminal: plain text, one claim per line."""
    lines = [f"== {cs.protocol}: the answer ==", sentence(cs.headline)]
    if cs.headline.separation_warning:
        lines.append("WARNING: " + cs.headline.separation_warning)
    if not cs.claims:
        return "\n".join([*lines, NO_CLAIMS]) + "\n"
    width = max(len(f"{c.key} {c.title}") for c in cs.claims)
    for c in cs.claims:
        lines.append(f"{c.key + ' ' + c.title:<{width}}  {c.verdict_text()}")
        lines.append(f"{'':<{width}}  paper: {c.paper}; here: {c.finding}")
    return "\n".join(lines) + "\n"
