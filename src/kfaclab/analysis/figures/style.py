"""One look for every figure: print-size fonts, colour-blind-safe colours, PNG + SVG output.

λ values take ``LAM_PALETTE``, qualitative colours in a fixed order by λ (the one home of λ
colours: the study's figures and the replication figures both call ``lam_colors``); SGD is always
black and dashed; adaptive rules take the Okabe–Ito qualitative colours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib

from kfaclab import atomic

matplotlib.use("Agg")  # files only; never a window, and safe in worker processes

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogFormatterSciNotation,
    LogLocator,
    NullFormatter,
    ScalarFormatter,
)

from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.summaries import StudySummary

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")
SGD_COLOR = "#000000"
RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # text stays text in SVG: searchable, and small
    "figure.dpi": 100,
}


# Distinguishable colours for up to nine λ in λ order (cool to warm), chosen to stay apart on
# white paper and for the common colour-vision deficiencies (Tol's and Okabe–Ito's palettes); a
# continuous map (viridis) made neighbouring λ of an eight-λ grid indistinguishable.
LAM_PALETTE = (
    "#332288",
    "#0072B2",
    "#56B4E9",
    "#009E73",
    "#999933",
    "#E69F00",
    "#D55E00",
    "#CC6677",
    "#882255",
)


def lam_colors(lams: Sequence[float]) -> dict[float, str]:
    """Colours for λ values: ``LAM_PALETTE`` by rank among the distinct λ, so the same grid gives
    every λ the same colour in every figure. A grid longer than the palette falls back to viridis
    by position on a log axis (distinct hues run out; an ordered map at least keeps the order)."""
    distinct = sorted(set(lams))
    if len(distinct) <= len(LAM_PALETTE):
        return {x: LAM_PALETTE[i] for i, x in enumerate(distinct)}
    cmap = plt.get_cmap("viridis")
    logs = [math.log10(x) for x in distinct if x > 0]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    span = (hi - lo) or 1.0
    # 0.8 cap: viridis's yellow end is too light for thin lines on white paper
    return {x: to_hex(cmap(0.8 * (math.log10(x) - lo) / span)) for x in distinct if x > 0}


PLAIN_LOG_RANGE = (1e-3, 1e4)
"""A log axis within these bounds reads as plain numbers (0.001 … 1000); beyond, as 10^k."""


def log_axis(ax: Axes, which: str = "y") -> None:
    """Log scale with plain-number labels (0.2, 0.5, 1) instead of 2×10⁻¹ (powers of ten when the
    axis reaches beyond ``PLAIN_LOG_RANGE``); minor labels only
    while the axis spans under two decades. Data spanning less than a factor of 3 (e.g. losses
    that barely moved) stay linear: a log axis would only add unreadable tick labels."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 3:
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
        return
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    if lo < PLAIN_LOG_RANGE[0] or hi > PLAIN_LOG_RANGE[1]:
        # Many decades: every label as a power of ten, so one axis never mixes 1e-06 and 10000.
        axis.set_major_formatter(LogFormatterSciNotation())
        axis.set_minor_formatter(NullFormatter())
        return
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    if lo > 0 and hi / lo < 100:
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(fmt)
    else:
        axis.set_minor_formatter(NullFormatter())


def style_context() -> AbstractContextManager[None]:
    """The rc settings, active while figures are built (they apply when artists are created)."""
    return plt.rc_context(cast(Any, RC))


def new_figure(width: float, height: float) -> Figure:
    """Call inside ``plt.rc_context(RC)``: rc settings apply when artists are created."""
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out_dir: Path, name: str, tight: bool = True) -> tuple[Path, Path]:
    """Writes name.png (150 dpi, for HTML) and name.svg (vector, for print); closes the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    bbox = "tight" if tight else None  # tight costs a second full draw; grids lay out by hand
    # Each written whole or not at all (kfaclab.atomic): a kill or a full disk keeps the old one.
    with atomic.open_atomic(png, "wb") as handle:
        fig.savefig(handle, format="png", dpi=150, metadata={"Software": None}, bbox_inches=bbox)
    with atomic.open_atomic(svg, "wb") as handle:  # no date: identical inputs, identical files
        fig.savefig(handle, format="svg", metadata={"Date": None}, bbox_inches=bbox)
    plt.close(fig)
    return png, svg


@dataclass
class DrawnFigure:
    key: str
    title: str
    png: Path
    svg: Path


def summary_lam_colors(summary: StudySummary) -> dict[float, str]:
    """λ colours over the study's whole grid, so a λ keeps its colour in every figure."""
    return lam_colors([c.lam for c in summary.fixed if c.lam is not None])


def cell_style(summary: StudySummary) -> Callable[[CellSummary], dict[str, object]]:
    """Line style per cell, the same in every figure."""
    colors = summary_lam_colors(summary)
    strategies = [c.label for c in summary.cells if c.strategy is not None]

    def style(c: CellSummary) -> dict[str, object]:
        if c.optimizer == "sgd":
            return {"color": SGD_COLOR, "linestyle": "--"}
        if c.lam is not None:
            return {"color": colors.get(c.lam, "grey"), "linestyle": "-"}
        i = strategies.index(c.label) if c.label in strategies else 0
        return {"color": OKABE_ITO[i % 7], "linestyle": (0, (4, 1.5, 1, 1.5))}

    return style


def finish(fig: Figure, out_dir: Path, key: str, title: str, tight: bool = True) -> DrawnFigure:
    png, svg = save(fig, out_dir, key, tight)
    return DrawnFigure(key, title, png, svg)
