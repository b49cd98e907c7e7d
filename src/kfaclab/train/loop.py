"""``run_trial``: one seeded, fully observed training run (no Optuna here; the study calls this).

One step t = 0 … T−1, with θ_t the parameters after t steps:
    lr ← η_t;  zero grads;  logits = model(x_t);  ℓ_t = CE(logits, y_t)
    ℓ_t non-finite or > divergence_loss → stop (status "diverged", diverged_at = t)
    [K-FAC, fisher="mc": sample_fisher(logits)];  ℓ_t.backward()
    [t in histogram_steps: histogram of (∂ℓ_t/∂θ_t)²]
    optimizer step (K-FAC gets loss=ℓ_t, and a closure for loss-after-step strategies)
    [t in histogram_steps, K-FAC: diagnostics(), i.e. the curvature as used by step t]
Evaluation at step s (s steps done) runs before step s; the one at T after the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

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
from kfaclab.train.observe import GradHistogram, evaluate, forward_plain
from kfaclab.train.schedule import batch_indices, eval_points, lr_schedule, total_steps
from kfaclab.train.validate import validate_config
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

if TYPE_CHECKING:
    from kfaclab.optim import KFAC

#: progress(steps_done, total_steps, last_minibatch_loss), called after every step.
Progress = Callable[[int, int, float], None]


def run_trial(
    config: TrialConfig, progress: Progress | None = None, *, fused: bool = True
) -> TrialResult:
    """Train one model as ``config`` says and return everything recorded.

    ``fused``: run K-FAC through ``FusedKFAC`` when the config allows it (``fusable``: exact
    damping, constant λ, empirical Fisher — every trial of the reference protocols), else or
    with ``fused=False`` through the general ``KFAC`` optimizer; the two agree up to rounding.

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
        return _Trial(config, data, device, fused and fusable(config)).run(progress)


class _Trial:
    """The state of one run; ``run`` is the hot loop, kept free of avoidable per-step work."""

    def __init__(self, config: TrialConfig, data: Any, device: torch.device, fused: bool) -> None:
        self.start = time.perf_counter()
        self.config = config
        self.train = (data.train_x, data.train_y)
        self.test = (data.test_x, data.test_y)
        self.total = total_steps(config, len(data.train_y))
        self.model = build_model(config, device)
        self.fused = FusedKFAC(self.model, config, INPUT_STREAMS) if fused else None
        self.opt = None if self.fused is not None else build_optimizer(config, self.model)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.device = device
        self.histogram = GradHistogram(linear_layers(self.model), config.histogram_bins)
        self.evals: list[EvalPoint] = []
        self.histograms: dict[str, dict[str, list[int]]] = {}
        self.curvature: dict[str, dict[str, dict[str, Any]]] = {}
        self.losses: list[float] = []
        self.damping_trace: list[float] = []

    def run(self, progress: Progress | None) -> TrialResult:
        if self.fused is not None:
            return self._run_fused(self.fused, progress)
        config, model, opt, total = self.config, self.model, self.opt, self.total
        assert opt is not None
        X, Y = self.train
        groups = opt.param_groups
        lrs = lr_schedule(config.lr, config.lr_decay, total)
        is_kfac = config.optimizer == "kfac"
        kfac = cast("KFAC", opt) if is_kfac else None
        sample_fisher = is_kfac and config.fisher == "mc"
        wants_closure = kfac is not None and kfac.damping.needs_loss_after_step
        hist_at = {s for s in config.histogram_steps if s < total}
        evals = eval_points(config.eval_steps, total)
        eval_at = set(evals[:-1])  # the last one (T) runs after the loop
        bound = config.divergence_loss
        losses, trace = self.losses, self.damping_trace
        diverged_at: int | None = None

        batches = batch_indices(len(Y), config.batch_size, total, self.generator, self.device)
        for t, idx in enumerate(batches):
            if t in eval_at:
                if kfac is not None:
                    kfac.materialize()  # evaluation bypasses the hooks: weights must be current
                self.evals.append(evaluate(model, t, self.train, self.test))
            for group in groups:
                group["lr"] = lrs[t]
            x, y = X.index_select(0, idx), Y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            # One host sync per step: free on the CPU, and K-FAC's damping wants the float anyway.
            value = loss.item()
            losses.append(value)
            if not value <= bound:  # also catches NaN, for which every comparison is False
                diverged_at = t
                break
            if sample_fisher and kfac is not None:
                kfac.sample_fisher(logits)
            loss.backward()
            if t in hist_at:
                if kfac is not None:
                    kfac.restore_weight_grads()  # skipped by backward (skip_weight_grads)
                self.histograms[str(t)] = self.histogram()
            if kfac is not None:
                trace.append(kfac.current_damping())
                closure = _loss_closure(model, x, y) if wants_closure else None
                kfac.step(closure, loss=value)
                if t in hist_at:
                    self.curvature[str(t)] = kfac.diagnostics()
            else:
                opt.step()
            if progress is not None:
                progress(t + 1, total, value)

        if diverged_at is None:
            if kfac is not None:
                kfac.materialize()
            self.evals.append(evaluate(model, total, self.train, self.test))
            final = self.evals[-1].train_loss
            if not final <= bound:  # the last step itself blew up
                diverged_at = total
        return self._result(diverged_at)

    def _run_fused(self, engine: FusedKFAC, progress: Progress | None) -> TrialResult:
        """``run`` for a fusable K-FAC trial: the same steps, observations and divergence rule,
        with forward, backward and step done by ``engine`` (no autograd, no hooks)."""
        config, total = self.config, self.total
        X, Y = self.train
        lrs = lr_schedule(config.lr, config.lr_decay, total)
        hist_at = {s for s in config.histogram_steps if s < total}
        evals = eval_points(config.eval_steps, total)
        eval_at = set(evals[:-1])
        bound, lam = config.divergence_loss, engine.lam
        losses, trace = self.losses, self.damping_trace
        diverged_at: int | None = None
        batches = batch_indices(len(Y), config.batch_size, total, self.generator, self.device)
        for t, idx in enumerate(batches):
            if t in eval_at:
                engine.materialize()
                self.evals.append(evaluate(self.model, t, self.train, self.test))
            value = engine.forward(X.index_select(0, idx), Y.index_select(0, idx))
            losses.append(value)
            if not value <= bound:  # also catches NaN
                diverged_at = t
                break
            engine.backward()
            if t in hist_at:
                engine.write_grads()
                self.histograms[str(t)] = self.histogram()
                engine.clear_grads()
            trace.append(lam)
            engine.step(lrs[t])
            if t in hist_at:
                self.curvature[str(t)] = engine.diagnostics()
            if progress is not None:
                progress(t + 1, total, value)
        if diverged_at is None:
            engine.materialize()
            self.evals.append(evaluate(self.model, total, self.train, self.test))
            if not self.evals[-1].train_loss <= bound:
                diverged_at = total
        return self._result(diverged_at)

    def _result(self, diverged_at: int | None) -> TrialResult:
        source = self.fused if self.fused is not None else self.opt
        counters = getattr(source, "counters", None)
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
            counters=dict(counters) if counters is not None else {},
            diverged_at=diverged_at,
        )


def _loss_closure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """The same minibatch's loss at the current parameters, for strategies such as
    Levenberg–Marquardt that compare it with the loss before the step. No graph, no hooks."""

    def closure() -> float:
        with torch.no_grad():
            return F.cross_entropy(forward_plain(model, x), y).item()

    return closure
