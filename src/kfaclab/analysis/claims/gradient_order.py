"""C4 and C5: how λ orders the squared gradients (∂L/∂θ)² early and late in training.

Per layer, the unit is one trial's median log10 (∂L/∂θ)² over the layer's parameters
(gradients.per_trial_medians); the statistic is the median of those over the top-k trials, and
its uncertainty a percentile bootstrap over trials. The smallest and the largest λ of the
histogram cells are compared: a layer supports the claim when the bootstrap interval of their
difference lies wholly on the claimed side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kfaclab.analysis.claims.types import BINDS, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Claim
from kfaclab.analysis.report.numbers import num
from kfaclab.analysis.statistics.intervals import bootstrap_median, bootstrap_median_diff

if TYPE_CHECKING:
    from kfaclab.analysis.summary.summaries import StudySummary

BOOTSTRAP_SAMPLES = 2000
"""Enough for the 2.5/97.5% percentiles to move by less than a tenth of their own spread."""

BOOTSTRAP_SEED = 12345
"""Fixed: a report rebuilt from the same study gives the same intervals."""

LAYER_MAJORITY = 2 / 3
"""A claim about "the" gradient ordering holds if at least two thirds of the layers show it
(four of six): one or two layers may differ (the last layer's gradients behave differently)."""

EQUAL_DECADES = 0.1
"""A layer whose difference interval lies within ±0.1 decades (±26%) shows no ordering: the
histograms of the paper's figure could not show a smaller shift."""


def _layer_verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "supports"
    if hi < 0:
        return "reverses"
    if lo >= -EQUAL_DECADES and hi <= EQUAL_DECADES:
        return "equal"
    return "undecided"


def gradient_claim(s: StudySummary, *, early: bool) -> Claim:
    key, when = ("C4", "earliest") if early else ("C5", "latest")
    paper = (
        "early in training, larger λ gives larger (∂L/∂θ)²"
        if early
        else "late in training, smaller λ gives larger (∂L/∂θ)²"
    )
    title = f"(∂L/∂θ)² ordering at the {when} histogram"
    claim = Claim(key, title, paper, "", INCONCLUSIVE, "")
    lam = {c.label: c.lam for c in s.fixed if c.lam is not None}
    labels = sorted((x for x in s.trial_medians if x in lam), key=lambda x: lam[x])
    if len(labels) < 2:
        claim.finding = "fewer than two λ have recorded gradient histograms"
        claim.reason = "no data"
        return claim
    small, large = labels[0], labels[-1]
    claim.depends_on = [small, large]
    steps = sorted(set(s.trial_medians[small]) & set(s.trial_medians[large]))
    if not steps:
        claim.finding, claim.reason = "the two λ share no histogram iteration", "no data"
        return claim
    step = steps[0] if early else steps[-1]
    sign = 1.0 if early else -1.0  # C4: large − small > 0; C5: small − large > 0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    per_layer: dict[str, Any] = {}
    counts = {"supports": 0, "reverses": 0, "equal": 0, "undecided": 0}
    a_all, b_all = s.trial_medians[large][step], s.trial_medians[small][step]
    for layer in sorted(set(a_all) & set(b_all), key=_layer_key):
        a, b = np.asarray(a_all[layer]), np.asarray(b_all[layer])
        if a.size < 2 or b.size < 2:
            continue
        d = bootstrap_median_diff(a, b, rng, BOOTSTRAP_SAMPLES)
        lo, hi = sorted((sign * d.lo, sign * d.hi))
        verdict = _layer_verdict(lo, hi)
        counts[verdict] += 1
        per_layer[layer] = {
            "verdict": verdict,
            "diff_decades": sign * d.diff,
            "lo": lo,
            "hi": hi,
            **{
                lab: dict(
                    zip(
                        ("median", "lo", "hi"),
                        bootstrap_median(x, rng, BOOTSTRAP_SAMPLES),
                        strict=True,
                    )
                )
                for lab, x in ((large, a), (small, b))
            },
        }
    n = sum(counts.values())
    claim.evidence = {"step": step, "smaller": small, "larger": large, "layers": per_layer}
    if n == 0:
        claim.finding = f"at iteration {step}, too few top-k trials with histograms per λ"
        claim.reason = "no data"
        return claim
    order = f"{large} > {small}" if early else f"{small} > {large}"
    diffs = [v["diff_decades"] for v in per_layer.values()]
    claim.finding = (
        f"at iteration {step}, {counts['supports']} of {n} layers show {order} "
        f"(95% bootstrap interval over trials), {counts['reverses']} the reverse, "
        f"{counts['equal']} no difference; median shift {num(float(np.median(diffs)))} decades "
        "in the claimed direction"
    )
    bound = [b.sentence() for lab in (small, large) for b in s.bindings.get(lab, [])]
    if bound:
        claim.reason, claim.evidence["binding"] = BINDS, bound
    elif counts["supports"] >= LAYER_MAJORITY * n:
        claim.verdict = REPRODUCED
    elif counts["reverses"] + counts["equal"] > (1 - LAYER_MAJORITY) * n:
        claim.verdict = NOT_REPRODUCED
        if counts["reverses"] > counts["equal"]:
            claim.reason = "the ordering is reversed"
    else:
        claim.reason = "most layers' intervals are too wide to order the two λ"
    return claim


def _layer_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.replace(".", " ").split()]
