"""The paper's figure (b): histograms of (∂L/∂θ)² per layer and iteration, overlaying λ values.

Counts of the top-k trials are summed (every trial uses the same ``HistogramBins``), then
normalised to fractions of all parameters of that layer, so λ values with different numbers of
surviving trials compare on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.types import TrialLike
from kfaclab.trial_types import HistogramBins

DEFAULT_HISTOGRAM_LAMBDAS = (1e-4, 1.0, 10.0)


@dataclass
class GradientHistograms:
    edges: list[float]  # log10 bin edges (n_bins + 1); fractions below/above are kept apart
    steps: list[int]
    layers: list[str]
    labels: list[str]  # one per overlaid cell, e.g. "λ=1e-04"
    # fractions[label][step_index][layer_index] -> list of n_bins fractions
    fractions: dict[str, list[list[list[float]]]]
    underflow: dict[str, list[list[float]]]  # fraction below the first edge (exact zeros too)
    # median of log10 (∂L/∂θ)² over all layers' parameters, per label and step (for readings)
    median_log10: dict[str, list[float]]
    n_trials: dict[str, int]
    notes: list[str] = field(default_factory=list)


def choose_cells(
    cells: Sequence[CellSummary], wanted: Sequence[float]
) -> tuple[list[CellSummary], list[str]]:
    """The constant-λ cells matching ``wanted``; falls back to the smallest, middle and largest λ
    present when none match (a small protocol may not have the paper's values)."""
    fixed = sorted(
        (c for c in cells if c.lam is not None and c.top_numbers), key=lambda c: c.lam or 0
    )
    chosen = [
        c
        for w in wanted
        for c in fixed
        if c.lam is not None and math.isclose(c.lam, w, rel_tol=1e-6)
    ]
    notes = []
    missing = [
        w
        for w in wanted
        if not any(c.lam is not None and math.isclose(c.lam, w, rel_tol=1e-6) for c in fixed)
    ]
    if missing:
        notes.append(
            "λ values without finished trials to show: " + ", ".join(f"{w:g}" for w in missing)
        )
    if not chosen and fixed:
        idx = sorted({0, len(fixed) // 2, len(fixed) - 1})
        chosen = [fixed[i] for i in idx]
        notes.append(
            "none of the requested λ values is available; "
            "showing the smallest, middle and largest λ instead"
        )
    return chosen, notes


def gradient_histograms(
    chosen: Sequence[CellSummary], trials_by_cell: Mapping[str, Sequence[TrialLike]]
) -> GradientHistograms | None:
    sums: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    bins: HistogramBins | None = None
    n_trials: dict[str, int] = {}
    for cell in chosen:
        top = set(cell.top_numbers)
        acc: dict[int, dict[str, np.ndarray]] = {}
        n = 0
        for t in trials_by_cell.get(cell.name, []):
            if t.number not in top or t.record is None or not t.record.histograms:
                continue
            n += 1
            bins = bins or t.record.config.histogram_bins
            for step_key, per_layer in t.record.histograms.items():
                for layer, counts in per_layer.items():
                    slot = acc.setdefault(int(step_key), {})
                    c = np.asarray(counts, dtype=float)
                    slot[layer] = slot[layer] + c if layer in slot else c
        if n:
            sums[cell.label] = acc
            n_trials[cell.label] = n
    if bins is None or not sums:
        return None
    steps = sorted({s for acc in sums.values() for s in acc})
    layers = _ordered_layers(
        {layer for acc in sums.values() for slot in acc.values() for layer in slot}
    )
    out = GradientHistograms(
        edges=bins.edges(),
        steps=steps,
        layers=layers,
        labels=list(sums),
        fractions={},
        underflow={},
        median_log10={},
        n_trials=n_trials,
    )
    for label, acc in sums.items():
        fr, uf, med = [], [], []
        for step in steps:
            row, urow = [], []
            total = np.zeros(bins.n_bins + 2)
            for layer in layers:
                found = acc.get(step, {}).get(layer)
                if found is None:
                    row.append([math.nan] * bins.n_bins)
                    urow.append(math.nan)
                    continue
                c = found
                total += c
                s = c.sum() or 1.0
                row.append((c[1:-1] / s).tolist())
                urow.append(float(c[0] / s))
            fr.append(row)
            uf.append(urow)
            med.append(_median_log10(total, out.edges))
        out.fractions[label], out.underflow[label], out.median_log10[label] = fr, uf, med
    return out


def _median_log10(counts: np.ndarray, edges: list[float]) -> float:
    """Median of log10 g² from binned counts (bin centre); -inf if half the mass is below range."""
    if counts.sum() == 0:
        return math.nan
    cdf = np.cumsum(counts) / counts.sum()
    i = int(np.searchsorted(cdf, 0.5))
    if i == 0:
        return -math.inf
    if i >= len(counts) - 1:
        return math.inf
    return 0.5 * (edges[i - 1] + edges[i])


def _ordered_layers(names: set[str]) -> list[str]:
    """Layer names in network order: numeric parts compared as numbers ("2" before "10")."""

    def key(name: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in name.replace(".", " ").split()]

    return sorted(names, key=key)


# per_trial[label][step][layer] -> the median log10 (∂L/∂θ)² of each top-k trial, in trial order
TrialMedians = dict[str, dict[int, dict[str, list[float]]]]


def per_trial_medians(
    chosen: Sequence[CellSummary], trials_by_cell: Mapping[str, Sequence[TrialLike]]
) -> TrialMedians:
    """Each top-k trial's median log10 (∂L/∂θ)² per step and layer: the unit a bootstrap over
    trials resamples (the summed histograms above pool them and hide how much trials differ)."""
    out: TrialMedians = {}
    for cell in chosen:
        top = set(cell.top_numbers)
        acc: dict[int, dict[str, list[float]]] = {}
        for t in sorted(trials_by_cell.get(cell.name, []), key=lambda t: t.number):
            if t.number not in top or t.record is None or not t.record.histograms:
                continue
            edges = t.record.config.histogram_bins.edges()
            for step_key, per_layer in t.record.histograms.items():
                for layer, counts in per_layer.items():
                    m = interpolated_median(np.asarray(counts, dtype=float), edges)
                    if math.isfinite(m):
                        acc.setdefault(int(step_key), {}).setdefault(layer, []).append(m)
        if acc:
            out[cell.label] = acc
    return out


def interpolated_median(counts: np.ndarray, edges: Sequence[float]) -> float:
    """Median log10 g² of the parameters whose g² is in range or above it, interpolated linearly
    within its bin (bin centres alone would quantise it to the bin width, and two λ differing by a
    fraction of a bin would tie). The underflow count (exact zeros: dead ReLU units) is left out:
    the paper's log-scale histograms cannot show a zero either. nan if nothing is left."""
    body = counts[1:]  # bins, then the overflow count (placed at the top edge)
    total = body.sum()
    if total <= 0:
        return math.nan
    cdf = np.cumsum(body) / total
    i = int(np.searchsorted(cdf, 0.5))
    if i >= len(edges) - 1:
        return float(edges[-1])
    below = cdf[i - 1] if i > 0 else 0.0
    share = cdf[i] - below
    frac = (0.5 - below) / share if share > 0 else 0.5
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))
