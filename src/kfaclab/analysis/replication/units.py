"""From rerun outcomes to per-unit numbers: one unit is one seed of one replication.

A cell's value at a unit is the mean over its rerun configurations (the top 5 of its search) on
that seed: what the cell delivers on a fresh seed, not what its single luckiest configuration
does. Units are keyed ``(replication, seed)``; seeds differ between replications (pool.py), and
every cell of one replication ran on the same seeds, so two cells' values at one unit are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.replication.outcomes import RerunOutcome

Unit = tuple[str, int]  # (replication name, seed)


@dataclass
class Replication:
    """One run of a protocol: its stored cells' top-k summaries and its paired reruns."""

    name: str
    topk_mean: dict[str, float]  # cell label -> mean final loss of its stored top-k
    topk_ci: dict[str, tuple[float, float, float]]  # cell label -> (mean, lo, hi) of the top-k
    lam: dict[str, float | None]  # cell label -> λ (None: SGD)
    outcomes: list[RerunOutcome] = field(default_factory=list)
    # cell label -> sentences of the search ranges that bind its optimum (analysis.binding)
    bindings: dict[str, list[str]] = field(default_factory=dict)
    # the stored protocol (its [claims] thresholds, [search] budget, [report] grid size)
    protocol: dict[str, Any] = field(default_factory=dict)


def replication_of(
    name: str,
    cells: Sequence[Any],
    outcomes: list[RerunOutcome],
    bindings: dict[str, list[str]] | None = None,
    protocol: dict[str, Any] | None = None,
) -> Replication:
    """A replication from its cells' summaries (analysis.cells.CellSummary) and its reruns.

    Every rerun of one protocol plans the same number of steps; a rerun stored with fewer (one
    that diverged in a protocol given in epochs records 0) gets the longest one seen, so that
    after a divergence it counts as chance level to the end and never escapes the plateau."""
    planned = max((max(o.n_steps, len(o.step_losses)) for o in outcomes), default=0)
    for o in outcomes:
        o.n_steps = max(o.n_steps, planned)
    return Replication(
        name=name,
        topk_mean={c.label: c.final_loss.mean for c in cells if c.final_loss.n},
        topk_ci={
            c.label: (c.final_loss.mean, c.final_loss.lo, c.final_loss.hi)
            for c in cells
            if c.final_loss.n and math.isfinite(c.final_loss.mean)
        },
        lam={c.label: c.lam for c in cells},
        outcomes=outcomes,
        bindings=bindings or {},
        protocol=dict(protocol or {}),
    )


def units(reps: Sequence[Replication]) -> list[Unit]:
    """Every (replication, seed) with at least one rerun, in a stable order."""
    return sorted({(r.name, o.seed) for r in reps for o in r.outcomes})


def labels(reps: Sequence[Replication]) -> list[str]:
    """Cell labels with reruns, fixed λ ascending, SGD last."""
    lam: dict[str, float | None] = {}
    for r in reps:
        for o in r.outcomes:
            lam[o.label] = o.lam
    return sorted(lam, key=lambda x: (lam[x] is None, lam[x] or 0.0, x))


def lambdas(reps: Sequence[Replication]) -> dict[str, float]:
    return {o.label: o.lam for r in reps for o in r.outcomes if o.lam is not None}


def per_unit(
    reps: Sequence[Replication],
    label: str,
    metric: Callable[[RerunOutcome], float],
    at: Sequence[Unit] | None = None,
) -> list[float]:
    """``metric`` averaged over the cell's configurations at each unit (nan where it has none, or
    where the metric is nan for every configuration)."""
    at = list(at) if at is not None else units(reps)
    acc: dict[Unit, list[float]] = {}
    for r in reps:
        for o in r.outcomes:
            if o.label == label:
                v = metric(o)
                if not math.isnan(v):
                    acc.setdefault((r.name, o.seed), []).append(v)
    return [float(np.mean(acc[u])) if u in acc else math.nan for u in at]


def outcomes_of(reps: Iterable[Replication], label: str) -> list[RerunOutcome]:
    return [o for r in reps for o in r.outcomes if o.label == label]


def divergence_counts(reps: Sequence[Replication], label: str) -> tuple[int, int]:
    """(diverged reruns, reruns) of a cell, every configuration and seed counted."""
    outs = outcomes_of(reps, label)
    return sum(o.diverged for o in outs), len(outs)


def grad_metric(step: str, layer: str, which: int) -> Callable[[RerunOutcome], float]:
    """The recorded gradient statistic of one layer at one histogram iteration: ``which`` 0 is the
    median log10 (∂L/∂θ)² above 1e-20, 1 the fraction at or below it (exact zeros)."""

    def get(o: RerunOutcome) -> float:
        row = o.grad.get(step, {}).get(layer)
        return float(row[which]) if row is not None else math.nan

    return get


def grad_steps_and_layers(reps: Sequence[Replication]) -> tuple[list[str], list[str]]:
    steps: set[str] = set()
    layers: set[str] = set()
    for r in reps:
        for o in r.outcomes:
            for s, per in o.grad.items():
                steps.add(s)
                layers.update(per)
    return sorted(steps, key=int), sorted(layers, key=_layer_key)


def _layer_key(name: str) -> list[tuple[int, int | str]]:
    digits = "".join(ch if ch.isdigit() else " " for ch in name).split()
    return [(0, int(d)) for d in digits] + [(1, name)]
