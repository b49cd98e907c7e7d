"""Per-layer curvature over training against λ, from the optimizer's recorded diagnostics.

Each top-k trial records ``curvature[str(step)][layer] = {metric: number, ...}``; keys are read
defensively (a metric missing or non-numeric in a trial is skipped). The summary is the median
over the top-k trials: eigenvalues and condition numbers span decades, and one trial with a
near-singular factor should not move the line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.gradients import _ordered_layers
from kfaclab.analysis.summary.types import TrialLike

# Metrics drawn, in this order, when present. Eigenvalue ranges come as min/max pairs.
METRICS = (
    "eig_A_min",
    "eig_A_max",
    "eig_G_min",
    "eig_G_max",
    "condition_number",
    "frac_below_damping",
    "effective_dim",
    "relative_damping",
)


@dataclass
class CurvatureSummary:
    lambdas: list[float]
    labels: list[str]
    steps: list[int]
    layers: list[str]
    metrics: list[str]
    # values[metric][lambda_index][step_index][layer_index]: median over the top-k (nan if absent)
    values: dict[str, list[list[list[float]]]]
    notes: list[str] = field(default_factory=list)


def curvature_summary(
    cells: Sequence[CellSummary], trials_by_cell: Mapping[str, Sequence[TrialLike]]
) -> CurvatureSummary | None:
    fixed = sorted(
        (c for c in cells if c.lam is not None and c.top_numbers), key=lambda c: c.lam or 0
    )
    # gathered[label][step][layer][metric] -> list over trials
    gathered: dict[str, dict[int, dict[str, dict[str, list[float]]]]] = {}
    for cell in fixed:
        top = set(cell.top_numbers)
        acc: dict[int, dict[str, dict[str, list[float]]]] = {}
        for t in trials_by_cell.get(cell.name, []):
            if t.number not in top or t.record is None:
                continue
            for step_key, per_layer in (t.record.curvature or {}).items():
                for layer, diag in (per_layer or {}).items():
                    for metric, x in _numeric(diag).items():
                        acc.setdefault(int(step_key), {}).setdefault(layer, {}).setdefault(
                            metric, []
                        ).append(x)
        gathered[cell.label] = acc
    steps = sorted({s for acc in gathered.values() for s in acc})
    if not steps:
        return None
    layers = _ordered_layers({ly for acc in gathered.values() for st in acc.values() for ly in st})
    present = {
        m for acc in gathered.values() for st in acc.values() for d in st.values() for m in d
    }
    metrics = [m for m in METRICS if m in present]
    values: dict[str, list[list[list[float]]]] = {}
    for m in metrics:
        values[m] = [
            [
                [_median(gathered[c.label].get(s, {}).get(ly, {}).get(m, [])) for ly in layers]
                for s in steps
            ]
            for c in fixed
        ]
    return CurvatureSummary(
        lambdas=[float(c.lam) for c in fixed if c.lam is not None],
        labels=[c.label for c in fixed],
        steps=steps,
        layers=layers,
        metrics=metrics,
        values=values,
    )


def _numeric(diag: Any) -> dict[str, float]:
    if not isinstance(diag, Mapping):
        return {}
    out = {}
    for k, v in diag.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else math.nan
