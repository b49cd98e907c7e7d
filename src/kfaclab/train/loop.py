"""``run_trial``: one seeded, fully observed training run (no Optuna here; the study calls this).

One step t = 0 … T−1, with θ_t the parameters after t steps (``steps.TrialSteps`` does each;
η_t is the scheduled lr, times K-FAC's current λ_t under ``lr_per_damping``):
    ℓ_t = CE(model(x_t), y_t)
    ℓ_t non-finite or > divergence_loss → stop (status "diverged", diverged_at = t)
    backward [K-FAC, fisher="mc": sampled targets for the factors]
    [t in histogram_steps: histogram of (∂ℓ_t/∂θ_t)²]
    optimizer step with lr η_t (K-FAC gets ℓ_t, and a closure for loss-after-step strategies)
    [t in histogram_steps, K-FAC: diagnostics(), i.e. the curvature as used by step t]
Evaluation at step s (s steps done) runs before step s; the one at T after the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from kfaclab.data import load_dataset
from kfaclab.train.build import (
    DTYPES,
    INPUT_STREAMS,
    build_model,
    build_optimizer,
    linear_layers,
    seeded,
)
from kfaclab.train.fused import FusedKFAC, fusable
from kfaclab.train.fused_sgd import FusedSGD, sgd_fusable
from kfaclab.train.observe import GradHistogram, evaluate
from kfaclab.train.schedule import batch_indices, eval_points, lr_schedule, total_steps
from kfaclab.train.steps import AutogradSteps, TrialSteps
from kfaclab.train.validate import validate_config
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

#: progress(steps_done, total_steps, last_minibatch_loss), called after every step.
Progress = Callable[[int, int, float], None]


def run_trial(
    config: TrialConfig, progress: Progress | None = None, *, fused: bool = True
) -> TrialResult:
    """Train one model as ``config`` says and return everything recorded.

    ``fused``: run a trial of ``build_mlp``'s model by hand — K-FAC through ``FusedKFAC``
    (``fusable``; it agrees with the general ``KFAC`` optimizer up to rounding), SGD through
    ``FusedSGD`` (bitwise torch.optim.SGD's trajectory) — else, or with ``fused=False``,
    through autograd and the torch optimizer.

    Raises ``UsageError`` for an invalid config; never raises for divergence. A minibatch loss that
    is non-finite or above ``divergence_loss`` at step t stops the run before that step:
    ``diverged_at = steps_done = t`` and the offending loss is the last of ``step_losses`` (so it
    holds t + 1 entries); a final full-training-set loss that breaks the same bound gives
    ``diverged_at = steps_done = T``. Either way ``value`` is ``inf``. Same config and
    seed on the same machine (and thread count) ⇒ bitwise-identical result, ``seconds`` aside.
    ``seconds`` is the wall time of building, training and evaluating, not of loading the data
    (``load_dataset`` caches it per process, so a worker pays for that once).
    """
    validate_config(config)
    device = torch.device(config.device)
    data = load_dataset(config.dataset, config.data_dir, device=device, dtype=DTYPES[config.dtype])
    with seeded(config.seed, device):
        return _Trial(config, data, device, fused).run(progress)


class _Trial:
    """The state of one run; ``run`` is the hot loop, kept free of avoidable per-step work."""

    def __init__(self, config: TrialConfig, data: Any, device: torch.device, fused: bool) -> None:
        self.start = time.perf_counter()
        self.config = config
        self.train = (data.train_x, data.train_y)
        self.test = (data.test_x, data.test_y)
        self.total = total_steps(config, len(data.train_y))
        self.model = build_model(config, device)
        self.steps: TrialSteps
        if fused and fusable(config):
            self.steps = FusedKFAC(self.model, config, INPUT_STREAMS)
        elif fused and sgd_fusable(config):
            self.steps = FusedSGD(self.model, config)
        else:
            self.steps = AutogradSteps(config, self.model, build_optimizer(config, self.model))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.device = device
        self.histogram = GradHistogram(linear_layers(self.model), config.histogram_bins)
        self.evals: list[EvalPoint] = []
        self.histograms: dict[str, dict[str, list[int]]] = {}
        self.curvature: dict[str, dict[str, dict[str, Any]]] = {}
        self.losses: list[float] = []
        self.damping_trace: list[float] = []

    def run(self, progress: Progress | None) -> TrialResult:
        config, steps, total = self.config, self.steps, self.total
        X, Y = self.train
        lrs = lr_schedule(config.lr, config.lr_decay, total)
        hist_at = {s for s in config.histogram_steps if s < total}
        evals = eval_points(config.eval_steps, total)
        eval_at = set(evals[:-1])  # the last one (T) runs after the loop
        bound = config.divergence_loss
        per_damping = config.lr_per_damping
        losses, trace = self.losses, self.damping_trace
        diverged_at: int | None = None

        batches = batch_indices(len(Y), config.batch_size, total, self.generator, self.device)
        for t, idx in enumerate(batches):
            if t in eval_at:
                steps.materialize()
                self.evals.append(evaluate(self.model, t, self.train, self.test))
            value = steps.forward(X.index_select(0, idx), Y.index_select(0, idx))
            losses.append(value)
            if not value <= bound:  # also catches NaN, for which every comparison is False
                diverged_at = t
                break
            steps.backward()
            if t in hist_at:
                steps.write_grads()
                self.histograms[str(t)] = self.histogram()
                steps.clear_grads()
            damping = steps.damping()
            if damping is not None:
                trace.append(damping)
            # lr_per_damping: the schedule is of lr/λ, the step's lr follows λ_t
            steps.step(lrs[t] * damping if per_damping and damping is not None else lrs[t])
            if t in hist_at:
                curvature = steps.diagnostics()
                if curvature is not None:
                    self.curvature[str(t)] = curvature
            if progress is not None:
                progress(t + 1, total, value)

        if diverged_at is None:
            steps.materialize()
            self.evals.append(evaluate(self.model, total, self.train, self.test))
            final = self.evals[-1].train_loss
            if not final <= bound:  # the last step itself blew up
                diverged_at = total
        return self._result(diverged_at)

    def _result(self, diverged_at: int | None) -> TrialResult:
        return TrialResult(
            config=self.config,
            status="ok" if diverged_at is None else "diverged",
            value=self.evals[-1].train_loss if diverged_at is None else math.inf,
            steps_done=len(self.losses) if diverged_at is None else diverged_at,
            seconds=time.perf_counter() - self.start,
            step_losses=self.losses,
            evals=self.evals,
            histograms=self.histograms,
            curvature=self.curvature,
            damping_trace=self.damping_trace,
            counters=dict(self.steps.counters),
            diverged_at=diverged_at,
        )
