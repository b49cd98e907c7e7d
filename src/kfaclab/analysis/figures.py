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
from kfaclab.analysis.style import RC, DrawnFigure, cell_style, finish, lam_colors, new_figure
from kfaclab.analysis.summaries import StudySummary


def learning_curves(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Paper figure (a): mean minibatch loss of the top-k trials, one line per λ and SGD."""
    cells = [c for c in summary.cells if c.curve is not None and c.strategy is None]
    if not cells:
        return None
    style = cell_style(summary)
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    for c in cells:
        assert c.curve is not None
        x, y = np.asarray(c.curve.steps), np.asarray(c.curve.mean)
        st = style(c)
        ax.plot(x, y, label=f"{c.label} (n={c.curve.n})", **st)  # type: ignore[arg-type]
        if c.curve.n > 1:
            lo = np.clip(np.asarray(c.curve.lo), 1e-12, None)  # log axis: keep the band positive
            ax.fill_between(x, lo, np.asarray(c.curve.hi), color=st["color"], alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (minibatch, cross-entropy)")
    ax.set_title("Mean learning curve of the top-k trials (band: 95% t-interval of the mean)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return finish(fig, out_dir, "learning_curves", "Learning curves (paper figure a)")


def gradient_histograms(summary: StudySummary, out_dir: Path) -> DrawnFigure | None:
    """Paper figure (b): (∂L/∂θ)² histograms, layers as rows and iterations as columns."""
    h = summary.histograms
    if h is None:
        return None
    colors = lam_colors([c.lam for c in summary.fixed if c.lam is not None])
    lam_of = {c.label: c.lam for c in summary.fixed}
    edges = np.asarray(h.edges)
    nrows, ncols = len(h.layers), len(h.steps)
    fig = new_figure(1.45 * ncols + 1.0, 1.05 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for i, layer in enumerate(h.layers):
        for j, step in enumerate(h.steps):
            ax: Axes = axes[i][j]
            for label in h.labels:
                frac = np.asarray(h.fractions[label][j][i])
                if np.isnan(frac).all():
                    continue
                lam = lam_of.get(label)
                color = colors.get(lam, "grey") if lam is not None else "grey"
                ax.stairs(frac, edges, color=color, lw=1.1, label=f"{label} (n={h.n_trials[label]})")
            ax.grid(True, alpha=0.2)
            if i == 0:
                ax.set_title(f"iteration {step}")
            if j == 0:
                ax.set_ylabel(f"layer {i + 1}\nfraction")
            if i == nrows - 1:
                ax.set_xlabel("log₁₀ (∂L/∂θ)²")
    _trim_x(axes, h.fractions, edges)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    fig.suptitle("Squared-gradient histograms, summed over the top-k trials", fontsize=9, y=1.04)
    return finish(fig, out_dir, "gradient_histograms", "(∂L/∂θ)² histograms (paper figure b)")


def _trim_x(axes: np.ndarray, fractions: dict[str, list[list[list[float]]]], edges: np.ndarray) -> None:
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
        learning_curves, gradient_histograms, figures_more.isolation, figures_more.curvature,
        figures_more.hyperparameters, figures_more.budget, figures_more.reruns,
        figures_more.adaptive_ranking, figures_more.damping_traces,
    )
    out = []
    with plt.rc_context(RC):
        for draw in drawers:
            fig = draw(summary, out_dir)
            if fig is not None:
                out.append(fig)
    return out
