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

from kfaclab.analysis.figures import more as figures_more
from kfaclab.analysis.figures.style import (
    DrawnFigure,
    cell_style,
    finish,
    log_axis,
    new_figure,
    style_context,
    summary_lam_colors,
)
from kfaclab.analysis.summary.gradients import GradientHistograms
from kfaclab.analysis.summary.summaries import StudySummary


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
    """Paper figure (b): (∂L/∂θ)² histograms, layers as rows and iterations as columns, one line
    per λ; each panel prints, per λ, the share of its parameters below the first bin (exact zeros
    included: a log axis cannot show them), and the x-axis shows only the occupied decades."""
    h = summary.histograms
    if h is None:
        return None
    colors = summary_lam_colors(summary)
    lam_of = {c.label: c.lam for c in summary.fixed}
    line_color = {
        label: colors.get(lam, "grey") if (lam := lam_of.get(label)) is not None else "grey"
        for label in h.labels
    }
    edges = np.asarray(h.edges)
    nrows, ncols = len(h.layers), len(h.steps)
    # A fixed grid instead of constrained layout: 36 panels would take it seconds to solve.
    fig = plt.figure(figsize=(1.45 * ncols + 0.9, 1.0 * nrows + 1.2))
    fig.subplots_adjust(
        left=0.09,
        right=0.99,
        bottom=0.5 / (nrows + 1),
        top=1 - 0.95 / (nrows + 1),
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
                # line styles as well as colours, so the λ stay apart in grey print too
                ax.plot(  # a stepped Line2D: far cheaper to draw than 108 stairs patches
                    edges,
                    np.r_[frac, frac[-1]],
                    drawstyle="steps-post",
                    color=line_color[label],
                    lw=1.2,
                    ls=_LINESTYLES[k % 4],
                    label=f"{label} (n={h.n_trials[label]} trials)",
                )
            _below_range_shares(ax, h, j, i, line_color)
            ax.grid(True, alpha=0.2)
            if i == 0:
                ax.set_title(f"iteration {step}")
            if j == 0:
                ax.set_ylabel(f"layer {i + 1}\nfraction", fontsize=8)
            if i == nrows - 1:
                ax.set_xlabel("log₁₀ (∂L/∂θ)²")
    shown = occupied_range(h)
    if shown is not None:
        axes[0][0].set_xlim(*shown)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncols=len(labels),
        frameon=False,
        title="(∂L/∂θ)² of all parameters per layer, summed over the top-k trials; y: fraction of "
        "the layer's parameters per bin\n"
        f"numbers at the left: share below 1e{edges[0]:g}, exact zeros included (not in the bins); "
        f"x: the central {1 - 2 * TAIL_SHARE:.0%} of every panel's binned values",
    )
    return finish(
        fig, out_dir, "gradient_histograms", "(∂L/∂θ)² histograms (paper figure b)", tight=False
    )


_LINESTYLES = ("-", "--", ":", "-.")
TAIL_SHARE = 0.005
"""The x-axis leaves out this share of the binned values on each side: a few parameters in a
far tail would otherwise stretch every panel over twenty decades with nothing visible in them."""


def _below_range_shares(
    ax: Axes, h: GradientHistograms, step_index: int, layer_index: int, colors: dict[str, str]
) -> None:
    """Per λ, the share of the layer's (∂L/∂θ)² below the first edge, in the upper left corner in
    the λ's colour: exact zeros (dead ReLU units) are in it, and no log bin can draw them."""
    header = f"<1e{h.edges[0]:g}"
    ax.text(0.02, 0.97, header, transform=ax.transAxes, fontsize=6, va="top", color="0.35")
    for k, label in enumerate(h.labels):
        share = h.underflow[label][step_index][layer_index]
        if not math.isfinite(share):
            continue
        ax.text(
            0.02,
            0.97 - 0.15 * (k + 1),
            f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.1%}",
            transform=ax.transAxes,
            fontsize=6,
            va="top",
            color=colors[label],
        )


def occupied_range(h: GradientHistograms, tail: float = TAIL_SHARE) -> tuple[float, float] | None:
    """The log10 x-range that holds, in every panel (λ, iteration, layer), all but ``tail`` of its
    binned values on each side, widened to whole decades; None when no bin holds anything.
    Values below the first edge are shown apart (``_below_range_shares``), not here."""
    lows, highs = [], []
    for per_label in h.fractions.values():
        for row in per_label:
            for frac in row:
                mass = np.nan_to_num(np.asarray(frac))
                if mass.sum() <= 0:
                    continue
                cdf = np.cumsum(mass) / mass.sum()
                lows.append(h.edges[int(np.searchsorted(cdf, tail))])  # lower tail ends in this bin
                last = min(int(np.searchsorted(cdf, 1 - tail)), len(mass) - 1)
                highs.append(h.edges[last + 1])
    if not lows:
        return None
    return float(max(math.floor(min(lows)), h.edges[0])), float(
        min(math.ceil(max(highs)), h.edges[-1])
    )


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
