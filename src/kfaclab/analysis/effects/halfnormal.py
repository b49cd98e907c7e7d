"""The half-normal plot of a response's effects (Daniel 1959): computed here, drawn from the data.

With m effects sorted by |estimate|, the i-th (1-based) is plotted against the half-normal
quantile Φ⁻¹(0.5 + 0.5 (i − 0.5) / m). Effects that are noise fall on a line through the origin;
the ones that matter stand off it to the right. That line is drawn: its slope is the effects'
standard error, the one their intervals use (across seeds: the OLS standard error; Lenth's pseudo
standard error without replicates), since |effect| of pure noise at quantile q is about q · SE.
Each point also says whether its interval (``EffectsTable.interval``) excludes 0, so the plot and
the table never disagree; the title says which interval it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from kfaclab.analysis.effects.model import EffectsTable, lenth_pse
from kfaclab.analysis.statistics.intervals import t_quantile

LABELLED = 3  # the largest effects are named, and every one whose interval excludes 0


@dataclass(frozen=True)
class HalfNormalData:
    response: str
    labels: list[str]  # ascending |effect|: the effects' factor names ("activation×init = …")
    abs_effects: list[float]
    quantiles: list[float]
    clear_of_zero: list[bool]
    interval: str = "replicates"  # EffectsTable.interval
    noise_slope: float | None = None  # the effects' standard error; None without intervals
    terms: list[str] = field(default_factory=list)  # the same in letters: "AB=CE=FG"
    legend: str = ""  # "A = activation, B = init, …": what the letters on the plot mean


def half_normal(table: EffectsTable) -> HalfNormalData:
    ranked = sorted(table.effects, key=lambda e: abs(e.estimate))
    m = len(ranked)
    normal = NormalDist()
    return HalfNormalData(
        response=table.response,
        labels=[e.names for e in ranked],
        abs_effects=[abs(e.estimate) for e in ranked],
        quantiles=[normal.inv_cdf(0.5 + 0.5 * (i - 0.5) / m) for i in range(1, m + 1)],
        clear_of_zero=[e.clear_of_zero for e in ranked],
        interval=table.interval,
        noise_slope=standard_error(table),
        terms=[e.term for e in ranked],
        legend=", ".join(f"{e.term} = {e.names}" for e in table.effects if e.order == 1),
    )


def standard_error(table: EffectsTable) -> float | None:
    """The standard error behind the table's intervals: Lenth's PSE, or (replicates) the
    half-width over t(df_resid), the median over effects (equal in a balanced design)."""
    if table.interval == "lenth":
        return lenth_pse([e.estimate for e in table.effects])
    if table.interval != "replicates" or table.df_resid < 1:
        return None
    t = t_quantile(0.5 + table.level / 2, table.df_resid)
    halves = [(e.ci_high - e.ci_low) / (2 * t) for e in table.effects]
    finite = [h for h in halves if np.isfinite(h)]
    return float(np.median(finite)) if finite else None


INTERVAL_WORDS = {
    "replicates": "95% interval across seeds excludes 0",
    "lenth": "95% interval (Lenth, no replicates) excludes 0",
    "none": "no intervals (no replicates)",
}


def draw_half_normal(data: HalfNormalData, out_dir: Path, name: str) -> tuple[Path, Path]:
    """``name``.png and .svg: |effect| against its half-normal quantile, the largest labelled."""
    from kfaclab.analysis.figures.style import new_figure, save, style_context

    with style_context():
        fig = new_figure(4.8, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        colors = ["#D55E00" if c else "#0072B2" for c in data.clear_of_zero]
        ax.scatter(data.quantiles, data.abs_effects, c=colors, s=18, zorder=3)
        if data.noise_slope is not None and data.quantiles:
            top = max(data.quantiles) * 1.05
            ax.plot(
                [0.0, top],
                [0.0, data.noise_slope * top],
                ls="--",
                lw=0.8,
                color="#777777",
                label=f"noise: slope = SE ({data.noise_slope:.3g})",
            )
            ax.legend(loc="upper left", fontsize=7, frameon=False)
        m = len(data.labels)
        # Letters keep the labels short enough not to collide (the legend says what they mean);
        # without terms (older data) the factor names are used.
        names = data.terms if len(data.terms) == m else data.labels
        for i, (q, e, label, clear) in enumerate(
            zip(data.quantiles, data.abs_effects, names, data.clear_of_zero, strict=True)
        ):
            if clear or i >= m - LABELLED:
                chain = label.replace(" = ", "=").split("=")
                ax.annotate(
                    chain[0] + ("=…" if len(chain) > 1 else ""),
                    (q, e),
                    fontsize=7,
                    xytext=(-3, 3),
                    textcoords="offset points",
                    ha="right",
                )
        if data.legend and names is data.terms:  # below the axis label (saved "tight")
            ax.text(0.5, -0.2, data.legend, transform=ax.transAxes, fontsize=6, ha="center")
        ax.set_xlabel("half-normal quantile")
        ax.set_ylabel(f"|effect| on {data.response}")
        words = INTERVAL_WORDS[data.interval]
        ax.set_title(f"{data.response}\norange: {words}" if data.interval != "none" else words)
        return save(fig, out_dir, name)
