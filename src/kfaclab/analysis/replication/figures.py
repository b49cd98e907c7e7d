"""Figures of the replication-level verdicts, drawn only from an ``Assessment`` (tests check it).

- ``learning_curves``: the paper's Fig. 2 as an overlay: every λ and SGD on one axis, the reruns'
  mean minibatch loss (10-step windows) with seed-level 95% bands; λ = 1 drawn thickest and
  named the paper's best where the paper's claims apply ([claims] paper);
- ``gradient_slopes``: the C4/C5 figure: at every histogram iteration, the slope of median log10
  (∂L/∂θ)² on log10 λ (seed-level interval), and per layer the medians against iteration, one
  line per λ, with the share of exact zeros printed beside;
- ``rerun_dots``: every seed of every replication as a dot (capped final loss), diverged reruns
  marked, and the plateau-escape step against λ.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kfaclab.analysis.figures.style import (
    OKABE_ITO,
    SGD_COLOR,
    DrawnFigure,
    finish,
    lam_colors,
    log_axis,
    new_figure,
    style_context,
)
from kfaclab.analysis.replication.assess import Assessment, Curve


def _colors(a: Assessment) -> dict[str, str]:
    """Colour per cell label: λ from the shared palette (style.lam_colors, the same as the study's
    own figures), strategies Okabe–Ito, SGD black."""
    by_lam = lam_colors([c.lam for c in a.cells if c.lam is not None])
    out = {c.label: by_lam[c.lam] for c in a.cells if c.lam is not None and c.lam in by_lam}
    others = [c.label for c in a.cells if c.lam is None and c.label != "SGD"]
    out.update({x: OKABE_ITO[i % len(OKABE_ITO)] for i, x in enumerate(others)})  # strategies
    out["SGD"] = SGD_COLOR
    return out


PAPER_BEST = " (paper's best)"
"""Legend suffix of λ = 1, the paper's best damping; only where the paper's claims apply."""


def paper_best(c: Curve, paper: bool) -> bool:
    """Whether ``c`` is drawn as the paper's best λ: λ = 1, in a study testing the paper's claims
    (protocol [claims] paper); a study of one's own has no paper to point at."""
    return paper and c.lam is not None and math.isclose(c.lam, 1.0)


def curve_label(c: Curve, paper: bool) -> str:
    return c.label + (PAPER_BEST if paper_best(c, paper) else "")


def learning_curves(a: Assessment, out: Path, paper: bool = True) -> DrawnFigure:
    """``paper``: whether the paper's claims apply ([claims] paper); only then is λ = 1 drawn
    thickest and labelled the paper's best."""
    colors = _colors(a)
    with style_context():
        fig = new_figure(6.4, 3.8)
        ax = fig.add_subplot(1, 1, 1)
        for c in a.curves:
            if not c.steps:
                continue
            ax.plot(
                c.steps,
                c.mean,
                color=colors[c.label],
                lw=2.6 if paper_best(c, paper) else 1.2,
                label=curve_label(c, paper),
                ls="--" if c.label == "SGD" else ("-." if c.lam is None else "-"),
            )
            ax.fill_between(c.steps, c.lo, c.hi, color=colors[c.label], alpha=0.15, lw=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("minibatch training loss\n(10-step mean, geometric mean over seeds)")
        log_axis(ax, "y")
        ax.legend(ncol=2, frameon=False)
        ax.set_title(
            f"Reruns of each cell's top configurations on {a.n_units} new seeds "
            f"({', '.join(a.replications)}); diverged runs count as chance level"
        )
        return finish(fig, out, "replication-curves", "Learning curves on new seeds (Fig. 2)")


def gradient_slopes(a: Assessment, out: Path) -> DrawnFigure | None:
    ev = a.claim("C4").evidence
    if not ev:
        return None
    series = ev["slopes"]
    steps = series["steps"]
    with style_context():
        fig = new_figure(6.4, 3.4)
        ax = fig.add_subplot(1, 2, 1)
        mean = [series["by_step"][str(s)]["mean"] for s in steps]
        ax.errorbar(
            steps,
            [m["estimate"] for m in mean],
            yerr=[[m["estimate"] - m["lo"] for m in mean], [m["hi"] - m["estimate"] for m in mean]],
            color="black",
            marker="o",
            capsize=3,
            label="layer mean",
        )
        for layer in series["layers"]:
            ys = [series["by_step"][str(s)]["layers"][layer]["estimate"] for s in steps]
            ax.plot(steps, ys, lw=0.8, alpha=0.6, label=layer)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("slope of median log10 (∂L/∂θ)²\nper decade of λ")
        ax.set_title("C4 needs > 0 early, C5 < 0 late")
        ax.legend(fontsize=6, frameon=False, ncol=2)
        ax2 = fig.add_subplot(1, 2, 2)
        zeros = ev["zero_fraction"]
        labels = list(zeros)
        lams = [float(x.removeprefix("λ=")) for x in labels]
        for when, marker in ((str(ev["early"]), "o"), (str(ev["late"]), "s")):
            share = [float(np.nanmean(list(zeros[x][when].values()))) for x in labels]
            ax2.plot(lams, share, marker=marker, label=f"iteration {when}")
        ax2.set_xscale("log")
        ax2.set_xlabel("λ")
        ax2.set_ylabel("share of (∂L/∂θ)² ≤ 1e-20\n(layer mean)")
        ax2.set_title("Exact zeros beside the medians")
        ax2.legend(frameon=False)
        return finish(fig, out, "replication-gradients", "(∂L/∂θ)² against λ over training")


def gradient_medians(a: Assessment, out: Path) -> DrawnFigure | None:
    """Per layer: median log10 (∂L/∂θ)² against iteration, one line per λ, seed-level 95%
    intervals; the paper's Fig. 1 read as what C4/C5 claim (a crossing would show the λ lines
    swapping order between early and late)."""
    ev = a.claim("C4").evidence
    if not ev:
        return None
    colors = _colors(a)
    layers = ev["slopes"]["layers"]
    steps = ev["slopes"]["steps"]
    cols = 3
    rows = math.ceil(len(layers) / cols)
    with style_context():
        fig = new_figure(7.2, 2.3 * rows + 0.4)
        for i, layer in enumerate(layers):
            ax = fig.add_subplot(rows, cols, i + 1)
            for lab, per in ev["medians"].items():
                ivs = [per[str(s)][layer] for s in steps]
                ys = [v["estimate"] for v in ivs]
                ax.plot(steps, ys, color=colors.get(lab, "grey"), lw=1.1, label=lab)
                ax.fill_between(
                    steps,
                    [v["lo"] for v in ivs],
                    [v["hi"] for v in ivs],
                    color=colors.get(lab, "grey"),
                    alpha=0.15,
                    lw=0,
                )
            ax.set_title(layer)
            if i % cols == 0:
                ax.set_ylabel("median log10 (∂L/∂θ)²")
            if i >= len(layers) - cols:
                ax.set_xlabel("iteration")
        handles, names = fig.axes[0].get_legend_handles_labels()
        fig.legend(
            handles, names, loc="outside lower center", ncol=min(len(names), 8), frameon=False
        )
        return finish(
            fig,
            out,
            "replication-gradient-medians",
            "Median (∂L/∂θ)² per layer against iteration (Fig. 1 as C4/C5 claim it)",
        )


def rerun_dots(a: Assessment, out: Path) -> DrawnFigure:
    colors = _colors(a)
    with style_context():
        fig = new_figure(6.4, 3.2)
        ax = fig.add_subplot(1, 2, 1)
        for i, c in enumerate(a.cells):
            d = a.dots[c.label]
            ys = np.asarray(d["capped"], dtype=float)
            div = np.asarray(d["diverged_share"], dtype=float)
            xs = i + np.linspace(-0.25, 0.25, ys.size) if ys.size > 1 else np.full(ys.size, i)
            ok = np.isfinite(ys) & (div == 0)
            ax.scatter(xs[ok], ys[ok], s=8, color=colors[c.label])
            bad = np.isfinite(ys) & (div > 0)
            ax.scatter(xs[bad], ys[bad], s=18, marker="x", color="#D55E00")
        ax.set_xticks(
            range(len(a.cells)), [c.label.removeprefix("λ=") for c in a.cells], rotation=60
        )
        ax.set_ylabel("final loss per seed (mean of top configs)")
        ax.set_title("× : a seed where a top configuration diverged")
        log_axis(ax, "y")
        ax2 = fig.add_subplot(1, 2, 2)
        fixed = [c for c in a.cells if c.lam is not None]
        ax2.errorbar(
            [float(c.lam or 0.0) for c in fixed],
            [c.escape["estimate"] for c in fixed],
            yerr=[
                [c.escape["estimate"] - c.escape["lo"] for c in fixed],
                [c.escape["hi"] - c.escape["estimate"] for c in fixed],
            ],
            marker="o",
            color="black",
            capsize=3,
        )
        sgd = next((c for c in a.cells if c.lam is None), None)
        if sgd is not None and math.isfinite(sgd.escape["estimate"]):
            ax2.axhline(sgd.escape["estimate"], color=SGD_COLOR, ls="--", lw=1, label="SGD")
            ax2.legend(frameon=False)
        ax2.set_xscale("log")
        ax2.set_xlabel("λ")
        ax2.set_ylabel("plateau-escape iteration")
        ax2.set_title("Escape: 5-step mean loss < 2.0")
        return finish(fig, out, "replication-reruns", "Reruns per seed, and plateau escape")


def draw_all(a: Assessment, out: Path, paper: bool = True) -> list[DrawnFigure]:
    """``paper``: the protocol's [claims] paper (`kfaclab verdicts` tests the paper's claims)."""
    figs = [
        learning_curves(a, out, paper),
        gradient_slopes(a, out),
        gradient_medians(a, out),
        rerun_dots(a, out),
    ]
    return [f for f in figs if f is not None]
