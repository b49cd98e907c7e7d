"""The paper's five claims as data: from a study's summary, each claim's verdict and its evidence.

A verdict is one of ``reproduced``, ``not reproduced`` or ``inconclusive``; an inconclusive one
says why (the search range binds a cell it depends on, too few trials, the reruns disagree with
the top-k). The thresholds are named constants below, each saying why it has its value, so a
reader can disagree with a number rather than with a hidden rule.

C1 and the headline compare cells by their top-k mean final loss with Welch's interval. Every
trial of a cell trains on the same seed and TPE's top-k are correlated, so that interval
understates the real uncertainty; C1 must therefore also hold on the reruns of each cell's best
configuration over new seeds (reruns.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kfaclab.analysis.claims.gradient_order import gradient_claim
from kfaclab.analysis.claims.types import (
    BINDS,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
)
from kfaclab.analysis.report.numbers import num
from kfaclab.analysis.statistics.intervals import Difference, welch
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.reruns import RerunSummary
from kfaclab.analysis.summary.summaries import StudySummary

PAPER_BEST_LAMBDA = 1.0
"""The λ the paper reports best, in the units of its own grid (compared with the grid value the
protocol wrote, so the B²-scaled reading compares its own 1e0)."""

DIVERGENCE_EXCESS = 0.10
"""C2: the smallest λ is unstable if its divergence rate exceeds the best cell's by at least this
much. TPE learns to avoid diverging regions, so rates are lower than a random search's; ten points
more over a few hundred trials is beyond their binomial noise (sd ≈ 3 points at n = 300)."""

FULL_SCALE_TRIALS = 300
"""The paper's budget per cell. Below it, overlapping neighbours call for a bigger preset; at it,
more trials of the same search would not help (the top-k is already correlated), so the warning
points at the reruns and a replication instead."""

UNSTABLE_LOSS_RATIO = 1.5
"""C2: or if its surviving top-k end at ≥ 1.5× the best cell's mean loss (and the intervals
separate): a λ that trains but ends half again as high has not trained stably. A smaller gap is
ordinary "worse", which every non-best λ is."""


@dataclass
class Headline:
    best: str | None  # label of the best fixed λ
    best_mean: float
    best_lo: float
    best_hi: float
    tied: list[str]  # labels statistically tied with the best (itself excluded)
    sgd_mean: float
    sgd_lo: float
    sgd_hi: float
    separation_warning: str  # "" unless neighbouring λ cannot be told apart


@dataclass
class ClaimSet:
    protocol: str
    headline: Headline
    claims: list[Claim]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_value(c: CellSummary) -> float | None:
    """λ as the protocol wrote it ("λ=1e+00 (B²-scaled)" → 1.0), else the cell's own λ."""
    try:
        return float(c.label.removeprefix("λ=").split()[0])
    except (ValueError, IndexError):
        return c.lam


def tied_with(best: CellSummary, cells: Sequence[CellSummary]) -> list[CellSummary]:
    """Cells whose top-k mean is not significantly above the best's (Welch, 95%)."""
    out = []
    for c in cells:
        if c is best or c.final_loss.n == 0:
            continue
        d = welch(c.final_loss, best.final_loss)
        if math.isnan(d.lo) or d.lo <= 0:
            out.append(c)
    return out


def _binds(s: StudySummary, cells: Sequence[CellSummary]) -> list[str]:
    return [b.sentence() for c in cells for b in s.bindings.get(c.label, [])]


def _diff(d: Difference) -> dict[str, float]:
    return {"diff": d.diff, "lo": d.lo, "hi": d.hi}


def claim_best(s: StudySummary) -> Claim:
    paper = f"λ = {PAPER_BEST_LAMBDA:g} gives the lowest training loss"
    claim = Claim("C1", "best λ", paper, "", INCONCLUSIVE, "")
    best = s.best_fixed
    if best is None:
        claim.finding, claim.reason = "no λ has a surviving trial", "no data"
        return claim
    fixed = [c for c in s.fixed if c.final_loss.n]
    tied = tied_with(best, fixed)
    paper_cell = next(
        (c for c in s.fixed if math.isclose(grid_value(c) or 0, PAPER_BEST_LAMBDA)), None
    )
    claim.depends_on = [c.label for c in s.fixed]
    f = best.final_loss
    claim.finding = f"{best.label} is best ({num(f.mean)}, 95% CI [{num(f.lo)}, {num(f.hi)}])" + (
        "; tied with it: " + ", ".join(c.label for c in tied) if tied else "; no λ is tied with it"
    )
    claim.evidence = {"best": best.label, "mean": f.mean, "lo": f.lo, "hi": f.hi}
    claim.evidence["tied"] = [c.label for c in tied]
    if paper_cell is None:
        claim.reason = f"the grid has no λ = {PAPER_BEST_LAMBDA:g}"
        return claim
    topk_holds = paper_cell is best or paper_cell in tied
    claim.evidence["paper_cell"] = paper_cell.label
    claim.evidence["topk_paper_minus_best"] = _diff(welch(paper_cell.final_loss, f))
    reruns = {r.label: r for r in s.reruns}
    ok, why = _rerun_check(
        reruns.get(paper_cell.label),
        reruns.get(best.label),
        [reruns[c.label] for c in s.fixed if c.label in reruns],
        topk_holds,
    )
    claim.evidence["reruns"] = why
    if reruns:
        claim.finding += "; " + why
    bound = _binds(s, s.fixed)
    if bound:
        claim.reason = BINDS
        claim.evidence["binding"] = bound
    elif not ok:
        claim.reason = why
    else:
        claim.verdict = REPRODUCED if topk_holds else NOT_REPRODUCED
        claim.reason = why
    return claim


def _rerun_check(
    paper: RerunSummary | None,
    best: RerunSummary | None,
    others: Sequence[RerunSummary],
    topk_holds: bool,
) -> tuple[bool, str]:
    """Whether the reruns over new seeds agree with the top-k comparison, and a sentence saying
    what they show. Tied or best on the top-k must stay not significantly worse than the best
    rerun mean; significantly worse on the top-k must stay significantly worse than the top-k
    best's reruns."""
    if paper is None or best is None:
        return False, "no reruns over new seeds to confirm the top-k comparison"
    if topk_holds:
        ranked = [r for r in others if r.rerun.n]
        rival = min(ranked, key=lambda r: r.rerun.mean) if ranked else paper
    else:
        rival = best
    if rival.label == paper.label:
        return True, f"on {len(paper.seeds)} new seeds {paper.label} is also best"
    d = welch(paper.rerun, rival.rerun)
    said = (
        f"on {len(paper.seeds)} new seeds {paper.label} has {num(paper.rerun.mean)} against "
        f"{rival.label}'s {num(rival.rerun.mean)} (difference 95% CI [{num(d.lo)}, {num(d.hi)}])"
    )
    if math.isnan(d.lo):
        return False, said + ": too few finite reruns to compare"
    worse = d.lo > 0
    if topk_holds and worse:
        return False, said + ": the reruns separate what the top-k did not"
    if not topk_holds and not worse:
        return False, said + ": the reruns cannot separate them"
    return True, said


def _grid_end_and_best(
    s: StudySummary,
    claim: Claim,
    end: Callable[..., CellSummary],
    usable: Callable[[CellSummary], bool],
    trials: str,
) -> tuple[CellSummary, CellSummary] | None:
    """The usable fixed-λ cell at one end of the grid (``end`` is min or max by λ) and the best
    cell, recorded as what the claim depends on; None, with the claim's finding and reason
    filled in, when there is no usable cell or no best one."""
    fixed = [c for c in s.fixed if usable(c)]
    best = s.best_fixed
    if not fixed or best is None:
        claim.finding, claim.reason = f"no {trials} K-FAC trial", "no data"
        return None
    if len(s.fixed) < 2:  # e.g. the adaptive protocol: one fixed λ beside the rules
        claim.finding = f"the grid has one fixed λ ({best.label}): no end of it to compare"
        claim.reason = "the grid has one λ"
        return None
    edge = end(fixed, key=lambda c: c.lam or 0.0)
    claim.depends_on = sorted({edge.label, best.label})
    return edge, best


def claim_small_unstable(s: StudySummary) -> Claim:
    claim = Claim("C2", "smallest λ unstable", "the smallest λ makes training unstable", "", "", "")
    claim.verdict = INCONCLUSIVE
    ends = _grid_end_and_best(s, claim, min, lambda c: c.n_ok + c.n_diverged > 0, "finished")
    if ends is None:
        return claim
    small, best = ends
    excess = small.divergence_rate - best.divergence_rate
    ratio = small.final_loss.mean / best.final_loss.mean if small.final_loss.n else math.inf
    d = welch(small.final_loss, best.final_loss)
    claim.evidence = {
        "smallest": small.label,
        "divergence": small.divergence_rate,
        "best_divergence": best.divergence_rate,
        "loss_ratio": ratio,
        "smallest_minus_best": _diff(d),
    }
    claim.finding = (
        f"{small.label}: {small.divergence_rate:.0%} of trials diverged "
        f"({best.label}: {best.divergence_rate:.0%}); "
        + (
            f"top-k loss {num(ratio)}× the best's"
            if small.final_loss.n
            else "no trial survived to a final loss"
        )
    )
    unstable_div = excess >= DIVERGENCE_EXCESS
    unstable_loss = ratio >= UNSTABLE_LOSS_RATIO and (small.final_loss.n == 0 or d.lo > 0)
    if _binds(s, [small, best]):
        claim.reason, claim.evidence["binding"] = BINDS, _binds(s, [small, best])
    elif unstable_div or unstable_loss:
        claim.verdict = REPRODUCED
    elif ratio < UNSTABLE_LOSS_RATIO:
        claim.verdict = NOT_REPRODUCED
    else:
        claim.reason = "its loss is high but its interval overlaps the best's"
    return claim


def claim_large_slow(s: StudySummary) -> Claim:
    paper = "the largest λ trains more slowly than the best λ"
    claim = Claim("C3", "largest λ slower", paper, "", INCONCLUSIVE, "")
    ends = _grid_end_and_best(s, claim, max, lambda c: c.final_loss.n > 0, "surviving")
    if ends is None:
        return claim
    large, best = ends
    lr_binds = any(b.param == "lr" for b in s.bindings.get(large.label, []))
    d = welch(large.final_loss, best.final_loss)
    claim.evidence = {"largest": large.label, "largest_minus_best": _diff(d), "lr_binds": lr_binds}
    claim.finding = (
        f"{large.label} ends at {num(large.final_loss.mean)} against {best.label}'s "
        f"{num(best.final_loss.mean)} (difference 95% CI [{num(d.lo)}, {num(d.hi)}]); "
        f"its learning rate {'binds' if lr_binds else 'does not bind'} the search range"
    )
    bound = _binds(s, [large, best])
    if bound:
        claim.reason, claim.evidence["binding"] = BINDS, bound
    elif large is best:
        claim.verdict, claim.reason = NOT_REPRODUCED, "the largest λ is the best"
    elif math.isnan(d.lo):
        claim.reason = "too few trials for an interval"
    else:
        claim.verdict = REPRODUCED if d.lo > 0 else NOT_REPRODUCED
    return claim


def headline(s: StudySummary) -> Headline:
    best, sgd = s.best_fixed, s.sgd
    nan = math.nan
    sg = sgd.final_loss if sgd is not None and sgd.final_loss.n else None
    h = Headline(None, nan, nan, nan, [], *(sg.mean, sg.lo, sg.hi) if sg else (nan, nan, nan), "")
    if best is not None:
        f = best.final_loss
        h.best, h.best_mean, h.best_lo, h.best_hi = best.label, f.mean, f.lo, f.hi
        h.tied = [c.label for c in tied_with(best, [c for c in s.fixed if c.final_loss.n])]
    h.separation_warning = separation_warning(s.fixed)
    return h


def separation_warning(fixed: Sequence[CellSummary]) -> str:
    """A warning when neighbouring λ of the grid have overlapping 95% intervals (or too few
    trials for one): the study cannot rank them. Its advice depends on the budget: a study
    smaller than the paper's is told to run a bigger preset; a full-scale one, that its order is
    not established at this budget."""
    cells = sorted((c for c in fixed if c.final_loss.n), key=lambda c: c.lam or 0.0)
    pairs = [
        f"{a.label}/{b.label}"
        for a, b in itertools.pairwise(cells)
        if a.final_loss.n < 2
        or b.final_loss.n < 2
        or (a.final_loss.lo <= b.final_loss.hi and b.final_loss.lo <= a.final_loss.hi)
    ]
    if not pairs:
        return ""
    overlap = (
        "the 95% intervals of "
        + ", ".join(pairs)
        + " overlap (or have too few trials), so their order is not established"
    )
    budget = min(c.n_target for c in cells)
    if budget < FULL_SCALE_TRIALS:
        return (
            f"This study is too small to separate neighbouring λ: {overlap}. Run a preset with "
            "more trials per cell (paper) before reading a ranking."
        )
    return (
        f"Even at {budget} trials a cell, {overlap} by this study; the reruns of each cell's "
        "best configuration and a replication with another seed are what can order them."
    )


def evaluate(s: StudySummary) -> ClaimSet:
    name = s.protocol.get("protocol", {})
    proto = str(name.get("name", "study")) if isinstance(name, dict) else "study"
    claims = [
        claim_best(s),
        claim_small_unstable(s),
        claim_large_slow(s),
        gradient_claim(s, early=True),
        gradient_claim(s, early=False),
    ]
    return ClaimSet(proto, headline(s), claims)
