"""One rerun's outcome, compact enough to keep thousands beside a report (one JSON line each).

A rerun is a whole training of one stored configuration on one new seed. What the verdicts need
from it is kept; the full ``TrialResult`` (curvature, every histogram bin) is not:

- the final full-training-set loss, or divergence (``value`` = inf, ``diverged_at``);
- the minibatch loss of every step (4 significant digits): learning curves, plateau escape;
- per histogram iteration and layer, the median log10 (∂L/∂θ)² of the parameters whose squared
  gradient is above the histogram's lowest edge (10^-20), and the fraction that is not (exact
  zeros, e.g. dead ReLU units, are in that fraction: the paper's log-scale histograms cannot show
  them either, so both are reported side by side);
- λ relative to the curvature: λ over the mean eigenvalue of G⊗A (the optimizer's
  ``relative_damping`` diagnostic), averaged over layers at each recorded step; convention-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kfaclab.analysis.summary.gradients import interpolated_median
from kfaclab.trial_types import TrialResult

CHANCE_LOSS = math.log(10.0)
"""The cross-entropy of a ten-class model that predicts uniformly: where every run starts (the
plateau) and the cap a diverged run's loss is scored at. A diverged run is worse than this, so
capping at it is conservative against the claim that a cell diverges."""

ESCAPE_LOSS = 2.0
"""A run has escaped the initial plateau at ln 10 ≈ 2.30 when its minibatch loss, averaged over
``ESCAPE_WINDOW`` steps, first falls below 2.0 (0.3 nats below chance: above the minibatch noise of
a model still at chance level, sd ≈ 0.02 at B = 128)."""

ESCAPE_WINDOW = 5


@dataclass
class RerunOutcome:
    cell: str  # the study's cell name ("kfac-lam=1e-03", "sgd")
    label: str  # "λ=1e-03", "SGD"
    lam: float | None
    rank: int  # 0 = the cell's best configuration, 1 = the second best, ...
    trial_number: int
    seed: int
    key: str  # the configuration's identity (study and every field but the seed)
    value: float  # final full-training-set loss; inf when diverged
    diverged_at: int | None
    seconds: float
    step_losses: list[float]
    # grad[str(step)][layer] = [median log10 g² above 1e-20 (nan if none), fraction below 1e-20]
    grad: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    relative_damping: float = math.nan  # λ / mean eigenvalue of G⊗A, mean over layers and steps

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.value)

    @property
    def capped_loss(self) -> float:
        """The final loss with divergence as an outcome: a diverged run scores ``CHANCE_LOSS``, as
        does a finite run that ended above it (it learned nothing either)."""
        return min(self.value, CHANCE_LOSS)  # inf (diverged) included

    @property
    def escape_step(self) -> float:
        """The first step at which the mean minibatch loss of the last ``ESCAPE_WINDOW`` steps
        is below ``ESCAPE_LOSS``; inf if it never is (a run that diverged first never escaped)."""
        return escape_step(self.step_losses)

    @property
    def mean_step_loss(self) -> float:
        """The mean minibatch loss over the whole run, each step capped at ``CHANCE_LOSS`` (a
        diverged run counts as chance level from its divergence to the end): the area under its
        learning curve, i.e. how fast it trained, not only where it ended."""
        return mean_capped_curve(self.step_losses, self.diverged_at, self.n_steps)

    n_steps: int = 0  # the configuration's planned number of steps

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = self.value if math.isfinite(self.value) else repr(self.value)
        d["step_losses"] = [x if math.isfinite(x) else repr(x) for x in self.step_losses]
        d["relative_damping"] = (
            self.relative_damping if math.isfinite(self.relative_damping) else None
        )
        d["grad"] = {
            s: {k: [x if math.isfinite(x) else None for x in v] for k, v in per.items()}
            for s, per in self.grad.items()
        }
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RerunOutcome:
        d = dict(d)
        d["value"] = float(d["value"])
        d["step_losses"] = [float(x) for x in d["step_losses"]]
        rd = d.get("relative_damping")
        d["relative_damping"] = math.nan if rd is None else float(rd)
        d["grad"] = {
            s: {k: [math.nan if x is None else float(x) for x in v] for k, v in per.items()}
            for s, per in d.get("grad", {}).items()
        }
        return cls(**d)


def escape_step(step_losses: list[float]) -> float:
    x = np.asarray(step_losses, dtype=float)
    if x.size < ESCAPE_WINDOW:
        return math.inf
    x = np.where(np.isfinite(x), x, np.inf)
    means = np.convolve(x, np.ones(ESCAPE_WINDOW) / ESCAPE_WINDOW, mode="valid")
    below = np.flatnonzero(means < ESCAPE_LOSS)
    # the window's last step: the first step at which the run is seen to have escaped
    return float(below[0] + ESCAPE_WINDOW - 1) if below.size else math.inf


def mean_capped_curve(step_losses: list[float], diverged_at: int | None, n_steps: int) -> float:
    x = np.asarray(step_losses, dtype=float)
    if diverged_at is not None:
        x = x[:diverged_at]
    x = np.minimum(np.where(np.isfinite(x), x, CHANCE_LOSS), CHANCE_LOSS)
    total = max(n_steps, x.size)
    if total == 0:
        return math.nan
    return float((x.sum() + CHANCE_LOSS * (total - x.size)) / total)


def outcome_from_result(
    result: TrialResult,
    *,
    cell: str,
    label: str,
    lam: float | None,
    rank: int,
    trial_number: int,
    key: str,
    n_steps: int,
) -> RerunOutcome:
    edges = result.config.histogram_bins.edges()
    grad: dict[str, dict[str, list[float]]] = {}
    for step, per_layer in result.histograms.items():
        row: dict[str, list[float]] = {}
        for layer, counts in per_layer.items():
            c = np.asarray(counts, dtype=float)
            total = c.sum()
            zero = float(c[0] / total) if total > 0 else math.nan
            row[layer] = [interpolated_median(c, edges), zero]
        grad[str(step)] = row
    rel = [
        float(d["relative_damping"])
        for per in result.curvature.values()
        for d in per.values()
        if isinstance(d, dict) and isinstance(d.get("relative_damping"), (int, float))
    ]
    rel = [r for r in rel if math.isfinite(r) and r > 0]
    return RerunOutcome(
        cell=cell,
        label=label,
        lam=lam,
        rank=rank,
        trial_number=trial_number,
        seed=int(result.config.seed),
        key=key,
        value=float(result.value),
        diverged_at=result.diverged_at,
        seconds=float(result.seconds),
        step_losses=[float(f"{x:.4g}") if math.isfinite(x) else x for x in result.step_losses],
        grad=grad,
        # geometric mean: the ratio spans decades over layers
        relative_damping=float(np.exp(np.mean(np.log(rel)))) if rel else math.nan,
        n_steps=n_steps,
    )
