"""The figures the paper does not show: what λ does to the final loss, the curvature and the
tuned hyperparameters; whether the search budget sufficed; selection bias; adaptive rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from kfaclab.analysis.figures.style import (
    OKABE_ITO,
    SGD_COLOR,
    DrawnFigure,
    finish,
    log_axis,
    new_figure,
    summary_lam_colors,
)
from kfaclab.analysis.statistics.search import cell_ranges
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.summaries import StudySummary


def _sgd_line(ax: Axes, value: float, label: str = "SGD") -> None:
    if math.isfinite(value):
        ax.axhline(value, color=SGD_COLOR, ls="--", lw=1.0, label=label)


def _lam_axis(ax: Axes) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("damping λ")


def isolation(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Final loss (top-k mean with 95% interval, and the best trial) and divergence rate vs λ."""
    fixed = summary.fixed
    if not fixed:
        return None
    lams = np.asarray([c.lam for c in fixed], dtype=float)
    fig = new_figure(6.4, 3.1)
    ax1, ax2 = fig.subplots(1, 2)
    mean = np.asarray([c.final_loss.mean for c in fixed])
    lo = np.asarray([c.final_loss.lo for c in fixed])
    hi = np.asarray([c.final_loss.hi for c in fixed])
    ok = np.isfinite(mean)
    yerr = np.vstack([mean - lo, hi - mean])[:, ok]
    ax1.errorbar(
        lams[ok],
        mean[ok],
        yerr=np.nan_to_num(yerr),
        fmt="o-",
        color="#0072B2",
        capsize=2,
        label="K-FAC top-k mean ± 95% CI",
    )
    best = np.asarray([c.best.value if c.best else math.nan for c in fixed])
    ax1.plot(
        lams[np.isfinite(best)],
        best[np.isfinite(best)],
        "v",
        color="#D55E00",
        ms=4,
        label="K-FAC best trial",
    )
    sgd = summary.sgd
    if sgd is not None:
        _sgd_line(ax1, sgd.final_loss.mean, "SGD top-k mean")
    log_axis(ax1)
    for lam in lams[~ok]:  # cells with no surviving trial: mark them on the axis, not omit them
        ax1.annotate(
            "all\ndiverged",
            (lam, 0.02),
            xycoords=("data", "axes fraction"),
            ha="center",
            fontsize=7,
            color="#D55E00",
        )
    _lam_axis(ax1)
    ax1.set_xlim(lams.min() / 3, lams.max() * 3)  # room for cells that have no point to draw
    ax1.set_ylabel("final training loss")
    rate = np.asarray([c.divergence_rate for c in fixed])
    ax2.plot(lams, 100 * rate, "s-", color="#009E73", label="K-FAC diverged")
    if sgd is not None and math.isfinite(sgd.divergence_rate):
        ax2.axhline(
            100 * sgd.divergence_rate, color=SGD_COLOR, ls=":", lw=1.0, label="SGD diverged"
        )
    _lam_axis(ax2)
    ax2.set_ylim(-3, 103)
    ax2.set_xlim(lams.min() / 3, lams.max() * 3)
    ax2.set_ylabel("diverged trials (%)")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncols=5, frameon=False)
    return finish(fig, out_dir, "isolation", "Final loss and divergence against λ")


# Rows of the curvature figure: (title, metrics drawn in one panel, log scale?)
_CURV_ROWS = (
    ("eigenvalues of A\n(dotted: min, solid: max)", ("eig_A_min", "eig_A_max"), True),
    ("eigenvalues of G\n(dotted: min, solid: max)", ("eig_G_min", "eig_G_max"), True),
    ("damped condition\nnumber", ("condition_number",), True),
    ("fraction of\neigenvalues below λ", ("frac_below_damping",), False),
    ("effective\ndimension", ("effective_dim",), False),
)


def curvature(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Per-layer curvature against λ at an early, a middle and the last recorded iteration."""
    cs = summary.curvature
    if cs is None or len(cs.lambdas) == 0:
        return None
    rows = [r for r in _CURV_ROWS if any(m in cs.metrics for m in r[1])]
    if not rows:
        return None
    cols = sorted({0, len(cs.steps) // 2, len(cs.steps) - 1})
    colors = OKABE_ITO[: len(cs.layers)] if len(cs.layers) <= 7 else None
    # laid out by hand (constrained layout takes seconds on 15 log-scaled panels)
    fig = plt.figure(figsize=(2.3 * len(cols) + 1.9, 1.6 * len(rows) + 0.6))
    fig.subplots_adjust(left=0.14, right=0.84, top=0.95, bottom=0.07, wspace=0.35, hspace=0.3)
    axes = fig.subplots(len(rows), len(cols), sharex=True, squeeze=False)
    for i, (title, metrics, log) in enumerate(rows):
        for j, si in enumerate(cols):
            ax: Axes = axes[i][j]
            for li in range(len(cs.layers)):
                color = colors[li] if colors else None
                for m in metrics:
                    if m not in cs.values:
                        continue
                    y = np.asarray([cs.values[m][k][si][li] for k in range(len(cs.lambdas))])
                    ls = ":" if m.endswith("_min") else "-"
                    lbl = f"layer {li + 1}" if m == metrics[-1] else None
                    ax.plot(cs.lambdas, y, ls, marker=".", color=color, label=lbl)
            _lam_axis(ax)
            if log:
                log_axis(ax)
            if i == 0:
                ax.set_title(f"iteration {cs.steps[si]}")
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
            if i < len(rows) - 1:
                ax.set_xlabel("")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", frameon=False)
    return finish(fig, out_dir, "curvature", "Per-layer curvature against λ over training")


_PARAMS = (
    ("lr", "learning rate η₀", True),
    ("momentum", "momentum", False),
    ("lr_decay", "lr decay (final η / η₀)", False),
)
LR_OVER_LAMBDA = "lr/λ"


@dataclass
class HyperPanel:
    """One panel of the hyperparameter figure, in that panel's units: per fixed-λ cell the best
    trial's value and the top-k quartiles, the cell's search bounds, and SGD's best (if any)."""

    key: str  # a hyperparameter's name, or LR_OVER_LAMBDA
    title: str
    log: bool
    lams: list[float]
    best: list[float]
    q25: list[float]
    median: list[float]
    q75: list[float]
    bounds: list[tuple[float, float, float]]  # (λ, low, high), λ ascending
    sgd_best: float | None = None


def hyper_panels(summary: StudySummary) -> list[HyperPanel]:
    """The panels ``hyperparameters`` draws. Where the protocol searched lr relative to λ
    (search.lr_scale = "lambda", kfaclab.lr_scale) an "lr/λ" panel follows the lr panel: the
    stored lr is absolute (lr/λ times λ), so both are read from it, and lr/λ's bounds are the
    protocol's own [low, high] where lr's are [low·λ, high·λ]."""
    fixed = [c for c in summary.fixed if c.label in summary.hyperparams and c.lam is not None]
    sgd = summary.sgd
    sgd_params = summary.hyperparams.get(sgd.label, {}) if sgd is not None else {}
    out = []
    for name, title, log in _PARAMS:
        cells = [c for c in fixed if name in summary.hyperparams[c.label]]
        if not cells:
            continue
        panel = _panel(summary, cells, name, name, title, log, [1.0] * len(cells))
        panel.sgd_best = sgd_params[name].best if name in sgd_params else None
        out.append(panel)
        if name == "lr" and _lr_scale(summary) == "lambda":
            lams = [c.lam or math.nan for c in cells]  # λ = 0 has no lr/λ: not drawn
            title = "lr / λ (the searched quantity)"
            # no SGD line here: SGD has no λ, and its lr was searched as lr
            out.append(_panel(summary, cells, LR_OVER_LAMBDA, name, title, log, lams))
    return out


def _panel(
    summary: StudySummary,
    cells: list[CellSummary],
    key: str,
    name: str,
    title: str,
    log: bool,
    divisors: list[float],
) -> HyperPanel:
    """Hyperparameter ``name`` of ``cells``, each cell's values and bounds divided by its
    divisor (1, or its λ for lr/λ)."""
    spreads = [summary.hyperparams[c.label][name] for c in cells]
    bounds = sorted(
        (float(c.lam or 0.0), r.low / d, r.high / d)
        for c, d in zip(cells, divisors, strict=True)
        for r in cell_ranges(summary.protocol, c)
        if r.name == name
    )

    def scaled(stat: str) -> list[float]:
        return [getattr(p, stat) / d for p, d in zip(spreads, divisors, strict=True)]

    return HyperPanel(
        key=key,
        title=title,
        log=log,
        lams=[float(c.lam or 0.0) for c in cells],
        best=scaled("best"),
        q25=scaled("q25"),
        median=scaled("median"),
        q75=scaled("q75"),
        bounds=bounds,
    )


def _lr_scale(summary: StudySummary) -> str:
    table = summary.protocol.get("search")
    return str(table.get("lr_scale", "none")) if isinstance(table, Mapping) else "none"


def hyperparameters(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Best trial's hyperparameters (marker) and the top-k interquartile range (bar) against λ,
    one panel per ``hyper_panels`` entry, with the search bounds in that panel's units."""
    panels = hyper_panels(summary)
    if not panels:
        return None
    fig = new_figure(2.3 * len(panels) + 0.6, 3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_hyper_panel(ax, panel)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", lw=0.8, ls=":"))
    labels.append("search-space bounds")
    fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False)
    return finish(fig, out_dir, "hyperparameters", "Tuned hyperparameters against λ")


def _draw_hyper_panel(ax: Axes, p: HyperPanel) -> None:
    med = np.asarray(p.median)
    err = np.vstack([med - np.asarray(p.q25), np.asarray(p.q75) - med])
    ax.errorbar(
        p.lams, med, yerr=err, fmt="o", color="#0072B2", ms=3, capsize=2, label="top-k median, IQR"
    )
    ax.plot(p.lams, p.best, "v", color="#D55E00", ms=5, label="best trial")
    if p.sgd_best is not None:
        _sgd_line(ax, p.sgd_best, "SGD best")
    if p.bounds:
        # a line across λ: a slope in lr when lr/λ was searched, flat in lr/λ
        lams, lows, highs = zip(*p.bounds, strict=True)
        for edge in (lows, highs):
            ax.plot(lams, edge, color="grey", lw=0.8, ls=":")
    if p.log:
        log_axis(ax)
    _lam_axis(ax)
    ax.set_title(p.title)


def budget(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Best final loss against the number of trials: the search as it ran, and random subsets."""
    curves = [b for b in summary.budgets if any(math.isfinite(v) for v in b.running_best)]
    if not curves:
        return None
    ncols = min(4, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig = new_figure(1.9 * ncols + 0.6, 1.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    for ax, b in zip(axes.flat, curves, strict=False):
        m = np.asarray(b.subsampled.m)
        ax.plot(m, _finite(b.running_best), color="#0072B2", label="search, in order")
        ax.plot(
            m, _finite(b.subsampled.median), color="#D55E00", ls="--", label="random subset: median"
        )
        ax.fill_between(
            m,
            _finite(b.subsampled.q10),
            _finite(b.subsampled.q90),
            color="#D55E00",
            alpha=0.15,
            lw=0,
            label="random subset: 10–90%",
        )
        ax.set_title(b.label)
        # Whole trials, and few ticks: a 300-trial axis in a 1.9-inch panel collides at 40 apart.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        log_axis(ax)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("number of trials")
    for ax in axes[:, 0]:
        ax.set_ylabel("best final loss")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    return finish(fig, out_dir, "budget", "Best loss against the number of trials")


def _finite(values: list[float]) -> np.ndarray:
    """inf (all drawn trials diverged) cannot be drawn on a log axis: leave a gap instead."""
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def reruns(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Selected best trial vs. the same configuration on new seeds vs. the top-k mean."""
    rr = summary.reruns
    if not rr:
        return None
    fig = new_figure(max(4.8, 0.75 * len(rr) + 1.5), 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(rr))
    for off, color, marker, label, get in (
        (
            -0.2,
            "#D55E00",
            "v",
            "best trial (selected)",
            lambda r: (r.best_value, math.nan, math.nan),
        ),
        (
            0.0,
            "#009E73",
            "o",
            "best config, new seeds ± 95% CI",
            lambda r: (r.rerun.mean, r.rerun.lo, r.rerun.hi),
        ),
        (
            0.2,
            "#0072B2",
            "s",
            "top-k mean ± 95% CI",
            lambda r: (r.top_k.mean, r.top_k.lo, r.top_k.hi),
        ),
    ):
        vals = np.asarray([get(r) for r in rr], dtype=float)
        err = np.nan_to_num(np.vstack([vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]]))
        ax.errorbar(
            x + off, vals[:, 0], yerr=err, fmt=marker, color=color, capsize=2, ms=4, label=label
        )
    ax.set_xticks(x, [r.label for r in rr], rotation=30, ha="right")
    log_axis(ax)
    ax.set_ylabel("final training loss")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return finish(fig, out_dir, "reruns", "Best configuration rerun on new seeds")


def adaptive_ranking(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Strategies, the best fixed λ and SGD ranked by top-k final loss with 95% intervals."""
    sec = summary.adaptive
    if sec is None:
        return None
    rows = [r for r in sec.rows if math.isfinite(r.final_loss.mean)]
    if not rows:
        return None
    colors = {"adaptive": "#E69F00", "fixed": "#0072B2", "sgd": SGD_COLOR}
    fig = new_figure(5.6, 0.35 * len(rows) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]  # best at the top
    for yi, r in zip(y, rows, strict=True):
        f = r.final_loss
        err = [[f.mean - f.lo], [f.hi - f.mean]] if math.isfinite(f.lo) else None
        ax.errorbar([f.mean], [yi], xerr=err, fmt="o", color=colors[r.kind], capsize=3)
    ax.set_yticks(y, [f"{r.label} ({r.kind}, n={r.final_loss.n})" for r in rows])
    log_axis(ax, "x")
    ax.set_xlabel("final training loss, top-k mean ± 95% CI")
    return finish(fig, out_dir, "adaptive_ranking", "Adaptive damping against fixed λ and SGD")


def damping_traces(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """λ over training for each adaptive rule, beside the fixed λ values of the grid."""
    sec = summary.adaptive
    adaptive = {c.label for c in summary.cells if c.strategy is not None}
    traces = [t for t in sec.traces if t.label in adaptive] if sec else []
    if sec is None or not traces:
        return None
    fig = new_figure(6.4, 3.2)
    ax = fig.add_subplot()
    colors = summary_lam_colors(summary)
    for label, lam in sec.fixed_reference:
        ax.axhline(lam, color=colors.get(lam, "grey"), lw=1.0, ls=":", label=f"fixed {label}")
    for i, t in enumerate(traces):
        c = OKABE_ITO[i % len(OKABE_ITO)]
        ax.plot(t.steps, t.geo_mean, color=c, label=f"{t.label} (n={t.n})")
        ax.fill_between(t.steps, t.q10, t.q90, color=c, alpha=0.2, lw=0)
    log_axis(ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel("damping λ")
    ax.set_title("λ over training (top-k geometric mean; band: 10–90% of trials)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return finish(fig, out_dir, "damping_traces", "λ over training for adaptive rules")
