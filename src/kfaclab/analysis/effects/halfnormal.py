"""The half-normal plot of a response's effects (Daniel 1959): computed here, drawn from the data.

With m effects sorted by |estimate|, the i-th (1-based) is plotted against the half-normal
quantile Φ⁻¹(0.5 + 0.5 (i − 0.5) / m). Effects that are noise fall on a line through the origin;
the ones that matter stand off it to the right. Each point also says whether its interval (across
seeds, or Lenth's when there are no replicates: ``EffectsTable.interval``) excludes 0, so the plot
and the table never disagree; the title says which interval it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from kfaclab.analysis.effects.model import EffectsTable


@dataclass(frozen=True)
class HalfNormalData:
    response: str
    labels: list[str]  # ascending |effect|
    abs_effects: list[float]
    quantiles: list[float]
    clear_of_zero: list[bool]
    interval: str = "replicates"  # EffectsTable.interval


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
    )


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
        for q, e, label, clear in zip(
            data.quantiles, data.abs_effects, data.labels, data.clear_of_zero, strict=True
        ):
            if clear or e == max(data.abs_effects, default=0.0):
                ax.annotate(
                    label.split(" = ")[0],
                    (q, e),
                    fontsize=7,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.set_xlabel("half-normal quantile")
        ax.set_ylabel(f"|effect| on {data.response}")
        words = INTERVAL_WORDS[data.interval]
        ax.set_title(f"{data.response}\norange: {words}" if data.interval != "none" else words)
        return save(fig, out_dir, name)
