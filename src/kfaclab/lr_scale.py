"""Per-cell learning-rate ranges: the search can sample lr relative to a cell's λ.

With damping λ, K-FAC's step in a direction whose curvature is small next to λ is lr/λ times the
gradient; in the paper's MLP most directions are of that kind, and the tuned learning rate tracks
λ over seven decades (docs/results/screening: best lr/λ stays within 0.1–3 from λ = 1e-5 to 1e2).
One absolute lr range therefore puts the small λ's optimum on its low edge and the large λ's on
its high edge, and the range, not λ, decides the comparison. ``lr_scale = "lambda"`` searches
lr/λ in ``[low, high]`` instead, so every fixed-λ cell gets the same room on both sides of its
optimum. λ is kfaclab's (after any convention conversion), since that is the λ the step divides by.
Cells without a constant λ (SGD, adaptive strategies) search lr in ``[low, high]`` itself.

Plain arithmetic, no torch or Optuna import: the sweep (which samples) and the analysis (which
checks whether a range binds) both call it, so they always agree on a cell's range.
"""

from __future__ import annotations

from typing import Literal, get_args

LrScale = Literal["none", "lambda"]
LR_SCALES: tuple[str, ...] = get_args(LrScale)

#: ``search.strategy_lr_scale``: how an adaptive strategy's cell samples its learning rate.
#: "none": lr itself in ``search.lr``; "damping": lr/λ in ``search.lr``, and every step uses it
#: times the strategy's current λ_t (``TrialConfig.lr_per_damping``) — the adaptive analogue of
#: ``lr_scale = "lambda"``, so a rule is compared with fixed λ searched the same way (issue 26).
StrategyLrScale = Literal["none", "damping"]
STRATEGY_LR_SCALES: tuple[str, ...] = get_args(StrategyLrScale)


def cell_lr_bounds(low: float, high: float, lam: float | None, scale: str) -> tuple[float, float]:
    """The lr range a cell samples from: ``[low, high]``, times λ when ``scale == "lambda"`` and
    the cell has a constant λ."""
    if scale not in LR_SCALES:
        raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {scale!r}")
    if scale == "lambda" and lam is not None:
        return low * lam, high * lam
    return low, high
