"""The data that crosses the line between the trial runner and everything above it.

``TrialConfig`` fully determines a trial (same config + seed on the same machine ⇒ bitwise-equal
result); ``TrialResult`` is everything a trial records. Both round-trip through plain JSON
(``to_dict`` / ``from_dict``), which is how the study stores them and the report reads them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from kfaclab import choices as ch
from kfaclab.choices import (
    Activation,
    ConvApprox,
    DampingForm,
    DatasetName,
    DtypeName,
    FactorInit,
    FisherType,
    InitName,
    ModelName,
    OptimizerName,
)

Status = Literal["ok", "diverged"]


@dataclass(frozen=True)
class HistogramBins:
    """Fixed log10-spaced bins for (∂L/∂θ)², identical in every trial so histograms can be summed.

    ``counts`` in a recorded histogram has ``n_bins + 2`` entries: [0] counts values below
    10**log10_min (exact zeros included), [1:-1] the bins, [-1] values at or above 10**log10_max.
    """

    log10_min: float = -20.0
    log10_max: float = 2.0
    n_bins: int = 88

    def edges(self) -> list[float]:
        step = (self.log10_max - self.log10_min) / self.n_bins
        return [self.log10_min + i * step for i in range(self.n_bins + 1)]


@dataclass(frozen=True)
class TrialConfig:
    """One training run. ``damping`` is a spec understood by ``kfaclab.damping.build_damping``:
    a float (constant λ) or a mapping like ``{"kind": "levenberg_marquardt", "initial": 1.0}``."""

    optimizer: OptimizerName = "kfac"
    lr: float = 0.05
    lr_decay: float = 1.0  # α: final learning rate as a fraction of lr; η_t = η₀(1 − (1 − α)t/T)
    momentum: float = 0.0
    damping: float | dict[str, Any] = ch.DEFAULT_DAMPING
    damping_form: DampingForm = ch.DEFAULT_DAMPING_FORM
    fisher: FisherType = ch.DEFAULT_FISHER
    factor_decay: float = ch.DEFAULT_FACTOR_DECAY
    factor_every: int = ch.DEFAULT_FACTOR_EVERY
    inverse_every: int = ch.DEFAULT_INVERSE_EVERY
    kl_clip: float | None = None
    # K-FAC: the scheduled lr is lr/λ, and each step uses it times the current λ_t (an adaptive
    # strategy then moves its step size with its damping, as a fixed λ searched as lr/λ does).
    lr_per_damping: bool = False
    factor_init: FactorInit = ch.DEFAULT_FACTOR_INIT
    eigen_floor: float = ch.DEFAULT_EIGEN_FLOOR
    conv_approx: ConvApprox = ch.DEFAULT_CONV_APPROX  # the CNN's Conv2d layers (optim/conv.py)
    # data and model
    dataset: DatasetName = "mnist"
    data_dir: str | None = None
    model: ModelName = "mlp"  # "cnn": models.build_cnn (depth and width then do not apply)
    depth: int = 6  # number of nn.Linear layers
    width: int = 100
    activation: Activation = "relu"
    init: InitName = ch.DEFAULT_INIT  # weight initialisation (models.initialise)
    # length and batches
    batch_size: int = 128
    epochs: int = 1
    steps: int | None = None  # overrides epochs when set
    seed: int = 0
    device: str = "cpu"
    dtype: DtypeName = "float32"
    # observation
    eval_steps: tuple[int, ...] | None = None  # None: a default set, always including the last step
    histogram_steps: tuple[int, ...] = (60, 120, 180, 240, 300, 360)
    histogram_bins: HistogramBins = field(default_factory=HistogramBins)
    divergence_loss: float = 1e3  # a minibatch loss above this (or non-finite) ends the trial

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        data = dict(data)
        if isinstance(data.get("histogram_bins"), dict):
            data["histogram_bins"] = HistogramBins(**data["histogram_bins"])
        for key in ("eval_steps", "histogram_steps"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class EvalPoint:
    step: int  # number of optimizer steps done when evaluated (0 = initialisation)
    train_loss: float  # mean loss over the full training set
    test_loss: float
    test_accuracy: float


@dataclass
class TrialResult:
    """Everything one trial recorded. ``value`` is the objective: the final full-training-set loss
    (``inf`` when the trial diverged, so it ranks last)."""

    config: TrialConfig
    status: Status
    value: float
    steps_done: int
    seconds: float
    step_losses: list[float]  # minibatch loss at every step done
    evals: list[EvalPoint]
    # histograms[str(step)][layer_name] = counts (len n_bins + 2), see HistogramBins
    histograms: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # curvature[str(step)][layer_name] = KFAC diagnostics for that layer (plain numbers / lists)
    curvature: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # λ at every step (global value of the damping strategy); empty for SGD
    damping_trace: list[float] = field(default_factory=list)
    # optimizer counters (decomposition fallbacks, KL-clip binds, …)
    counters: dict[str, float] = field(default_factory=dict)
    diverged_at: int | None = None

    @property
    def final_test_accuracy(self) -> float:
        return self.evals[-1].test_accuracy if self.evals else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["value"] = _encode_float(self.value)
        out["step_losses"] = [_encode_float(x) for x in self.step_losses]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        data = dict(data)
        data["config"] = TrialConfig.from_dict(data["config"])
        data["evals"] = [EvalPoint(**e) for e in data["evals"]]
        data["value"] = _decode_float(data["value"])
        data["step_losses"] = [_decode_float(x) for x in data["step_losses"]]
        return cls(**data)


def _encode_float(x: float) -> float | str:
    """JSON has no inf/nan; store them as strings."""
    return x if math.isfinite(x) else repr(x)


def _decode_float(x: float | str) -> float:
    return float(x)
