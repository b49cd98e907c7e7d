"""One-paragraph readings of each figure, generated from the summary's numbers (never canned
claims): which λ was best, where training diverged, how gradients changed early to late."""

from __future__ import annotations

import math

from kfaclab.analysis.report.numbers import num
from kfaclab.analysis.statistics.intervals import LOWER, TIED, compare_means
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.summaries import StudySummary


def fmt(x: float, digits: int = 3) -> str:
    """Every number of a reading in the report's one format (numbers.num: three significant
    digits); ``digits`` is kept for callers but no longer changes the format."""
    del digits
    return num(x)


def loss_pm(c: CellSummary) -> str:
    f = c.final_loss
    if f.n == 0:
        return "no surviving trial"
    sd = f" ± {fmt(f.sd)}" if f.n > 1 else ""
    return f"{fmt(f.mean)}{sd} (n={f.n})"


def learning_curves(s: StudySummary) -> str:
    best, sgd = s.best_fixed, s.sgd
    if best is None:
        return "No K-FAC cell has a finished, non-diverged trial yet, so no λ can be called best."
    parts = [
        f"The lowest top-k mean final training loss among fixed λ is {loss_pm(best)} at "
        f"{best.label}."
    ]
    ranked = sorted((c for c in s.fixed if c.final_loss.n), key=lambda c: c.final_loss.mean)
    if len(ranked) > 1:
        parts.append("Order from best to worst: " + ", ".join(c.label for c in ranked) + ".")
    if sgd is not None and sgd.final_loss.n:
        better = [c.label for c in ranked if c.final_loss.mean < sgd.final_loss.mean]
        parts.append(
            f"SGD reaches {loss_pm(sgd)}; K-FAC is lower at "
            + (", ".join(better) if better else "no λ")
            + "."
        )
        overlap = [
            c.label
            for c in ranked
            if c.final_loss.n > 1
            and sgd.final_loss.n > 1
            and c.final_loss.lo <= sgd.final_loss.hi
            and sgd.final_loss.lo <= c.final_loss.hi
        ]
        if overlap:
            parts.append("The 95% intervals of " + ", ".join(overlap) + " overlap SGD's.")
    empty = [c.label for c in s.fixed if c.final_loss.n == 0]
    if empty:
        parts.append("No curve is drawn for " + ", ".join(empty) + " (no surviving trial).")
    return " ".join(parts)


def isolation(s: StudySummary) -> str:
    fixed = [c for c in s.fixed if c.n_ok + c.n_diverged]
    if not fixed:
        return "No finished K-FAC trial yet."
    all_div = [c.label for c in fixed if c.n_ok == 0]
    some = [f"{c.label} ({c.divergence_rate:.0%})" for c in fixed if c.n_diverged > 0 and c.n_ok]
    parts = []
    if all_div:
        parts.append("Every finished trial diverged at " + ", ".join(all_div) + ".")
    if some:
        parts.append("Some trials diverged at " + ", ".join(some) + ".")
    if not all_div and not some:
        parts.append("No K-FAC trial diverged.")
    sgd = s.sgd
    if sgd is not None and sgd.n_ok + sgd.n_diverged:
        parts.append(f"SGD diverged in {sgd.divergence_rate:.0%} of its trials.")
    parts.append(
        "Divergence counts the search's own proposals, so a high rate partly reflects "
        "how much of the search space is unstable at that λ, not only the best settings."
    )
    return " ".join(parts)


def zero_gradient_causes(s: StudySummary) -> str:
    """Why gradients are exactly zero, for the study's activation: weights fed by an input that is
    zero in every example (MNIST's blank border pixels) always; units whose ReLU is inactive on
    every example only where there is a ReLU."""
    model = s.protocol.get("model", {})
    activation = model.get("activation", "relu") if isinstance(model, dict) else "relu"
    blank = "weights of input pixels that are blank in every example"
    if activation == "relu":
        return f"{blank}, and dead ReLU units"
    return blank


def histograms(s: StudySummary) -> str:
    h = s.histograms
    if h is None:
        return "No gradient histograms were recorded."
    parts = []
    for label in h.labels:
        med = h.median_log10[label]
        first, last = med[0], med[-1]
        if math.isfinite(first) and math.isfinite(last):
            change = last - first
            trend = "smaller" if change < 0 else "larger"
            parts.append(
                f"At {label} the median (∂L/∂θ)² over all layers goes from 1e{first:.1f} at "
                f"iteration {h.steps[0]} to 1e{last:.1f} at iteration {h.steps[-1]} "
                f"({abs(change):.1f} decades {trend})."
            )
        uf = [x for x in h.underflow[label][-1] if math.isfinite(x)]
        if uf and max(uf) > 0.01:
            parts.append(
                f"At {label}, up to {max(uf):.0%} of a layer's gradients are zero or below "
                f"1e{h.edges[0]:g} at the last iteration ({zero_gradient_causes(s)}); the "
                "fractions plotted exclude them."
            )
    parts.extend(h.notes)
    return " ".join(parts) or "Histograms recorded, but no finite gradients to describe."


def curvature(s: StudySummary) -> str:
    cs = s.curvature
    if cs is None or len(cs.lambdas) < 1:
        return "No curvature diagnostics were recorded."
    last = len(cs.steps) - 1
    parts = [f"At iteration {cs.steps[last]}, across {len(cs.layers)} layers:"]
    for metric, name in (
        ("frac_below_damping", "the fraction of eigenvalues below λ"),
        ("condition_number", "the damped condition number (median over layers)"),
        ("effective_dim", "the effective dimension"),
    ):
        if metric not in cs.values:
            continue
        vals = [_nanmedian(cs.values[metric][k][last]) for k in range(len(cs.lambdas))]
        if all(math.isnan(v) for v in vals):
            continue
        sentence = f"{name} is {fmt(vals[0])} at {cs.labels[0]} and {fmt(vals[-1])} at "
        parts.append(_capital(sentence + f"{cs.labels[-1]}."))
    return " ".join(parts) if len(parts) > 1 else "No curvature metric was recorded."


def _capital(text: str) -> str:
    """A sentence starts with a capital, whatever the phrase it was built from."""
    return text[:1].upper() + text[1:]


def _nanmedian(xs: list[float]) -> float:
    ok = sorted(x for x in xs if not math.isnan(x))
    return ok[len(ok) // 2] if ok else math.nan


def hyperparameters(s: StudySummary) -> str:
    pts = [
        (c, s.hyperparams[c.label]["lr"])
        for c in s.fixed
        if c.label in s.hyperparams and "lr" in s.hyperparams[c.label]
    ]
    parts = []
    if len(pts) >= 2:
        (c0, p0), (c1, p1) = pts[0], pts[-1]
        parts.append(
            f"The best learning rate is {fmt(p0.best)} at {c0.label} and {fmt(p1.best)} at "
            f"{c1.label}: larger λ shrinks the step (F+λI)⁻¹∇, which the search offsets with "
            "the learning rate where it can."
        )
    if s.edge_warnings:
        parts.append(
            f"{len(s.edge_warnings)} best trials sit at an edge of the search space "
            "(listed under Warnings)."
        )
    else:
        parts.append("No best trial sits at an edge of the search space.")
    return " ".join(parts)


def budget(s: StudySummary) -> str:
    parts = []
    for b in s.budgets:
        n = len(b.running_best)
        final = b.running_best[-1]
        if not math.isfinite(final) or final <= 0 or n < 2:
            continue
        half = n // 2
        reached = next(i + 1 for i, v in enumerate(b.running_best) if v <= final)
        # The median of a random half's best is the overall best itself (half of all halves hold
        # it), so the mean and the 90th percentile are what say how much the second half added.
        parts.append(
            f"{b.label}: best found at trial {reached} of {n}; "
            + _first_half(b.running_best[half - 1], final, half)
            + _random_half(b.subsampled.mean[half - 1], b.subsampled.q90[half - 1], final, half)
        )
    if not parts:
        return "Too few finished trials to judge the budget."
    return (
        "Is the trial budget enough? A curve still falling at the right edge says no. "
        + " ".join(parts)
    )


def _first_half(first: float, final: float, half: int) -> str:
    if not math.isfinite(first):
        return f"every one of the first {half} trials diverged; "
    return f"the best of the first {half} trials was {_percent_above(first, final)} higher; "


def _random_half(mean: float, q90: float, final: float, half: int) -> str:
    """The random-half sentence. Where some random halves hold only diverged trials their best
    is infinite, so the mean is too: say that instead of "infinitely higher"."""
    if not math.isfinite(mean):
        tail = (
            f"the 90th percentile is {_percent_above(q90, final)} higher"
            if math.isfinite(q90)
            else "more than 10% of them hold no surviving trial"
        )
        return (
            f"some random sets of {half} trials hold only diverged trials, so their mean best "
            f"is undefined; {tail}."
        )
    return (
        f"a random {half} of the trials give a best {_percent_above(mean, final)} higher on "
        f"average ({_percent_above(q90, final)} at the 90th percentile)."
    )


def _percent_above(value: float, reference: float) -> str:
    percent = 100 * (value - reference) / reference
    return f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%"


def reruns(s: StudySummary) -> str:
    parts = []
    for r in s.reruns:
        if r.rerun.n:
            ratio = r.rerun.mean / r.best_value if r.best_value > 0 else math.nan
            parts.append(
                f"{r.label}: selected {fmt(r.best_value)}, new seeds {fmt(r.rerun.mean)} "
                f"({fmt(ratio, 2)}×)" + (f", {r.n_diverged} diverged" if r.n_diverged else "")
            )
        else:
            parts.append(f"{r.label}: every rerun diverged")
    if not parts:
        return "No reruns."
    return (
        "The best trial was selected on its own seed; rerunning its configuration on "
        f"{len(s.reruns[0].seeds)} new seeds shows the selection bias. " + "; ".join(parts) + "."
    )


def adaptive(s: StudySummary) -> str:
    sec = s.adaptive
    if sec is None or not sec.rows:
        return ""
    ranked = [r for r in sec.rows if math.isfinite(r.final_loss.mean)]
    if not ranked:
        return "No strategy has a surviving trial yet."
    top = ranked[0]
    parts = [f"Best: {top.label} ({top.kind}) at {fmt(top.final_loss.mean)}."]
    fixed = next((r for r in sec.rows if r.kind == "fixed"), None)
    if fixed is not None and math.isfinite(fixed.final_loss.hi):
        outcome = {
            r.label: compare_means(r.final_loss, fixed.final_loss)[0]
            for r in ranked
            if r.kind == "adaptive"
        }
        better = [label for label, o in outcome.items() if o == LOWER]
        tied = [label for label, o in outcome.items() if o == TIED]
        if better:
            parts.append(
                "Better than the best fixed λ without a λ grid (Welch's 95% interval of the "
                "difference below 0): " + ", ".join(better) + "."
            )
        if tied:
            parts.append("Tied with it (the interval contains 0): " + ", ".join(tied) + ".")
        if not better and not tied:
            parts.append("No adaptive rule reaches the best fixed λ.")
        parts.append(
            f"The fixed λ needed {fixed.trials_total} trials "
            f"({fmt(fixed.seconds_total / 60, 2)} min of trial time) across the grid."
        )
    parts.extend(sec.notes)
    return " ".join(parts)
