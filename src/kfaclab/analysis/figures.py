"""Figures drawn from a ``StudySummary`` only (never from trials), each saved as PNG and SVG.

``draw_all(summary, out_dir)`` returns the figures it drew, in report order; a figure whose data
is absent (no finished trials, no histograms recorded, no adaptive cells) is skipped, not faked.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from kfaclab.analysis import figures_more
from kfaclab.analysis.style import (
    DrawnFigure,
    cell_style,
    finish,
    log_axis,
    new_figure,
    style_context,
    summary_lam_colors,
)
from kfaclab.analysis.summaries import StudySummary


def learning_curves(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Paper figure (a) as small multiples: one panel per cell (its mean minibatch loss and 95%
    band), every panel on the same log axes with the best fixed λ's mean in grey for reference,
    so nine cells stay readable where one panel of nine overlapping bands was not."""
    cells = [c for c in summary.cells if c.curve is not None and c.strategy is None]
    if not cells:
        return None
    style = cell_style(summary)
    ref = summary.best_fixed
    ncols = min(3, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig = new_figure(2.6 * ncols + 0.4, 2.0 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    lowest, highest = math.inf, 0.0
    for k, c in enumerate(cells):
        assert c.curve is not None
        ax: Axes = axes[k // ncols][k % ncols]
        x, y = np.asarray(c.curve.steps), np.asarray(c.curve.mean)
        st = style(c)
        if ref is not None and ref.curve is not None and ref is not c:
            ax.plot(ref.curve.steps, ref.curve.mean, color="0.55", lw=1.0, ls=":")
        ax.plot(x, y, color=st["color"], lw=1.3)
        if c.curve.n > 1:
            lo = np.clip(np.asarray(c.curve.lo), 1e-12, None)  # log axis: keep the band positive
            ax.fill_between(x, lo, np.asarray(c.curve.hi), color=st["color"], alpha=0.25, lw=0)
        ax.set_title(f"{c.label} (n={c.curve.n})", fontsize=9)
        finite = y[np.isfinite(y) & (y > 0)]
        if finite.size:
            lowest, highest = min(lowest, finite.min()), max(highest, finite.max())
    for k in range(len(cells), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if math.isfinite(lowest):
        # limits from the means: a band whose lower edge crosses zero must not stretch the axis
        axes[0][0].set_ylim(lowest / 1.3, highest * 1.3)
    for row in axes:
        for ax in row:
            log_axis(ax)
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    for row in axes:
        row[0].set_ylabel("minibatch loss")
    fig.suptitle(
        "Mean learning curve of the top-k trials per cell (band: 95% t-interval of the mean; "
        "dotted grey: the best fixed λ)",
        fontsize=9,
    )
    return finish(fig, out_dir, "learning_curves", "Learning curves (paper figure a)")


def gradient_histograms(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Paper figure (b): (∂L/∂θ)² histograms, layers as rows and iterations as columns."""
    h = summary.histograms
    if h is None:
        return None
    colors = summary_lam_colors(summary)
    lam_of = {c.label: c.lam for c in summary.fixed}
    edges = np.asarray(h.edges)
    nrows, ncols = len(h.layers), len(h.steps)
    # A fixed grid instead of constrained layout: 36 panels would take it seconds to solve.
    fig = plt.figure(figsize=(1.45 * ncols + 0.9, 1.0 * nrows + 1.0))
    fig.subplots_adjust(
        left=0.09,
        right=0.99,
        bottom=0.5 / (nrows + 1),
        top=1 - 0.75 / (nrows + 1),
        wspace=0.12,
        hspace=0.18,
    )
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for i in range(nrows):
        for j, step in enumerate(h.steps):
            ax: Axes = axes[i][j]
            for k, label in enumerate(h.labels):
                frac = np.asarray(h.fractions[label][j][i])
                if np.isnan(frac).all():
                    continue
                lam = lam_of.get(label)
                color = colors.get(lam, "grey") if lam is not None else "grey"
                # line styles as well as colours: neighbouring λ differ little in hue
                ax.plot(  # a stepped Line2D: far cheaper to draw than 108 stairs patches
                    edges,
                    np.r_[frac, frac[-1]],
                    drawstyle="steps-post",
                    color=color,
                    lw=1.2,
                    ls=_LINESTYLES[k % 4],
                    label=f"{label} (n={h.n_trials[label]} trials)",
                )
            ax.grid(True, alpha=0.2)
            if i == 0:
                ax.set_title(f"iteration {step}")
            if j == 0:
                ax.set_ylabel(f"layer {i + 1}\nfraction", fontsize=8)
            if i == nrows - 1:
                ax.set_xlabel("log₁₀ (∂L/∂θ)²")
    _trim_x(axes, h.fractions, edges)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncols=len(labels),
        frameon=False,
        title="(∂L/∂θ)² of all parameters per layer, summed over the top-k trials; "
        "y: fraction of the layer's parameters per bin",
    )
    return finish(
        fig, out_dir, "gradient_histograms", "(∂L/∂θ)² histograms (paper figure b)", tight=False
    )


_LINESTYLES = ("-", "--", ":", "-.")


def _trim_x(
    axes: np.ndarray, fractions: dict[str, list[list[list[float]]]], edges: np.ndarray
) -> None:
    """Show only the occupied part of the 22-decade bin range."""
    mass = np.zeros(len(edges) - 1)
    for per_label in fractions.values():
        for row in per_label:
            for frac in row:
                mass += np.nan_to_num(np.asarray(frac))
    used = np.nonzero(mass > 1e-4 * max(mass.max(), 1e-300))[0]
    if used.size:
        axes[0][0].set_xlim(edges[max(used[0] - 1, 0)], edges[min(used[-1] + 2, len(edges) - 1)])


def draw_all(summary: StudySummary, out_dir: Path) -> list[DrawnFigure]:
    drawers = (
        learning_curves,
        gradient_histograms,
        figures_more.isolation,
        figures_more.curvature,
        figures_more.hyperparameters,
        figures_more.budget,
        figures_more.reruns,
        figures_more.adaptive_ranking,
        figures_more.damping_traces,
    )
    out = []
    with style_context():
        for draw in drawers:
            fig = draw(summary, out_dir)
            if fig is not None:
                out.append(fig)
    return out
