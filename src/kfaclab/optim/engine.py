"""The one K-FAC engine: every piece of K-FAC's mathematics, fed by a capture backend.

A backend captures, per preconditioned layer and step, the layer inputs and the per-example
output gradients (``LayerCapture``) and calls ``KFACEngine.step``. Two backends exist: autograd
hooks on any model (``kfaclab.optim.KFAC``, a torch optimizer) and the hand-written forward and
backward of ``build_mlp``'s chain (``kfaclab.train.fused``, what sweep trials run). Both get the
same factors, inversions, damping strategies, directions, KL clip, weight decay, heavy ball,
deferred rotation, counters, diagnostics and state — written here once.

One step t (0-based):
1. on factor steps (t % factor_every == 0) the running factors take this step's capture;
2. every ``inverse_every`` steps (and while a layer has none) new eigenbases / inverses;
3. λ per layer from the damping strategy (``Damping.layer_values``);
4. directions d (exact or factored damping), weight decay added to ∇ first, KL clip on d;
5. heavy ball v ← μv + d, θ ← θ − ηv (deferred layers stay in A's eigenbasis, see ``deferred``);
6. the strategy observes the outcome (with the model's predicted reduction when it asks).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.diagnostics import layer_diagnostics
from kfaclab.damping.base import Damping, LayerSpectrum, StepOutcome
from kfaclab.errors import UsageError
from kfaclab.optim import functional as fn
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.engine_directions import DirectionSide, ParamState
from kfaclab.optim.engine_factors import FactorSide
from kfaclab.optim.groups import PerItem, apply_per_item
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.options import KFACOptions, Speedups, resolve_speedups

LossClosure = Callable[[], torch.Tensor | float]


class KFACEngine:
    """K-FAC on ``layers`` (and plain gradient steps on ``other_params``).

    ``param_state`` maps a parameter to its state dict (``momentum_buffer``): a torch optimizer's
    ``state``, or the backend's own mapping. ``grads_from_batches``: the backend writes no
    ``.grad``; gradient blocks are computed from the captured batch.
    """

    def __init__(
        self,
        layers: list[LayerState],
        other_params: list[torch.Tensor],
        options: KFACOptions,
        damping: Damping,
        speedups: Speedups,
        param_state: ParamState,
        *,
        weight_decay: float = 0.0,
        grads_from_batches: bool = False,
    ) -> None:
        self.layers = layers
        self.options = options
        self.damping = damping
        self.in_effect = resolve_speedups(
            options, speedups, weight_decay, grads_from_batches=grads_from_batches
        )
        if self.in_effect.not_applied:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.in_effect.not_applied.items())
            warnings.warn(f"K-FAC speed-ups not in effect ({reasons})", stacklevel=3)
        self.factors = FactorSide(layers, options, speedups.input_stream_cache)
        self.directions = DirectionSide(self.factors, other_params, param_state, grads_from_batches)
        self.step_count = 0
        self.counters: dict[str, float] = {
            "kl_clip_binds": 0,
            "kl_clip_last_factor": 1.0,
            "steps_without_capture": 0,
            "factor_updates": 0,
            "inversions": 0,
            "standard_form_steps": 0,  # deferred rotation requested but not possible this step
        }

    @property
    def factor_step(self) -> bool:
        """Whether this step's capture feeds the factors (backends may skip capturing else)."""
        return self.step_count % self.options.factor_every == 0

    # --- the step -------------------------------------------------------------------------------

    def step(
        self,
        batches: list[LayerCapture],
        lr: float,
        momentum: float,
        weight_decay: float = 0.0,
        loss: float | None = None,
        closure: LossClosure | None = None,
        *,
        per_item: PerItem | None = None,
    ) -> None:
        """One K-FAC step from this step's captures (and ``.grad`` where the backend has it).

        ``per_item``: lr, momentum and weight decay of each layer and other parameter, when they
        differ (parameter groups); then ``lr``, ``momentum`` and ``weight_decay`` are unused."""
        t, options = self.step_count, self.options
        factor_step = self.factor_step
        if factor_step:
            updated = self.factors.update(batches)
            self.counters["factor_updates" if updated else "steps_without_capture"] += 1
        if t % options.inverse_every == 0 or any(lay.needs_inverse for lay in self.layers):
            self.directions.materialize()  # pending rotations refer to the bases being replaced
            if self.factors.invert(self.damping):  # counted only if a layer had factors
                self.counters["inversions"] += 1
        lambdas = self.damping.layer_values(self.factors.spectra)
        wants_reduction = self.damping.wants_model_reduction(t)
        decays = weight_decay if per_item is None else per_item.weight_decays
        any_decay = bool(weight_decay) if per_item is None else any(per_item.weight_decays)
        # The shared batch projections exist for the stream's updates, i.e. the factor steps.
        from_batch = self.in_effect.from_batch and not any_decay and factor_step
        # A backend that computes its gradients from the batch defers on every step, projecting
        # the batch itself where the stream has no projection (non-factor steps, no stream).
        own_batches = self.directions.grads_from_batches and not any_decay
        defer = (
            self.in_effect.deferred_rotation and (from_batch or own_batches) and not wants_reduction
        )
        if self.in_effect.deferred_rotation and not defer:
            self.counters["standard_form_steps"] += 1
        grads, directions, deferred, stacked = self.directions.directions(
            batches, lambdas, decays, from_batch, defer, step=t
        )
        if options.kl_clip is not None:
            lrs = lr if per_item is None else per_item.lrs
            # A deferred layer's dᵀ∇ comes from its rotated step (its entries here are empty).
            extra = [(i, one.inner_with_gradient()) for i, one in deferred.items()]
            nu = fn.kl_clip_factor(directions, grads, lrs, options.kl_clip, extra)
            self.counters["kl_clip_last_factor"] = nu
            if nu < 1.0:
                self.counters["kl_clip_binds"] += 1
                directions = [d * nu for d in directions]
                deferred = {i: one.scaled(nu) for i, one in deferred.items()}
                stacked = []  # the stacks' tensors hold the unclipped directions
        fold_now = (t + 1) % options.inverse_every == 0  # the next step inverts
        skip = self.in_effect.skip_weight_grads
        if per_item is None:
            steps = self.directions.apply(directions, lr, momentum, wants_reduction, stacked)
            self.directions.apply_deferred(deferred, lr, momentum, fold_now, skip)
        else:
            lrs, momenta = per_item.lrs, per_item.momenta
            steps = apply_per_item(self.directions, directions, lrs, momenta, wants_reduction)
            for i, one in deferred.items():
                self.directions.apply_deferred({i: one}, lrs[i], momenta[i], fold_now, skip)
        outcome = StepOutcome(step=t, loss_before=loss)
        if wants_reduction:
            outcome = self._with_model_reduction(outcome, batches, steps, lambdas, closure)
        self.damping.observe(outcome)
        self.step_count += 1

    def _with_model_reduction(
        self,
        outcome: StepOutcome,
        batches: list[LayerCapture],
        steps: list[torch.Tensor],
        lambdas: list[float],
        closure: LossClosure | None,
    ) -> StepOutcome:
        """Adds M(δ) − M(0) of the K-FAC quadratic model and, if needed, the loss after the step."""
        linear = curvature = damping_terms = 0.0
        global_lam = self.damping.value()
        n_layers = len(self.layers)
        other = self.directions.other_params
        for i, delta in enumerate(steps):
            if delta.numel() == 0:
                continue
            if i < n_layers:
                layer = self.layers[i]
                block = self.directions.gradient_block(layer, batches[i])
                assert block is not None
                lam = lambdas[i]
                self.factors.streams.settle(layer)
                if layer.factor_a is not None and layer.factor_g is not None:
                    curvature += fn.kronecker_quadratic(delta, layer.factor_a, layer.factor_g)
            else:
                p = other[i - n_layers]
                block = torch.zeros_like(p) if p.grad is None else p.grad
                lam = global_lam
            linear += float((block * delta).sum())
            damping_terms += lam * float(delta.pow(2).sum())
        predicted = fn.model_reduction(linear, curvature, damping_terms)
        loss_after = None
        if self.damping.needs_loss_after_step:
            if closure is None:
                raise ValueError(
                    f"closure is required by damping {type(self.damping).__name__} "
                    "(it needs the minibatch loss after the step), got None"
                )
            loss_after = as_float(closure())
        return StepOutcome(outcome.step, outcome.loss_before, loss_after, predicted)

    # --- read-outs ------------------------------------------------------------------------------

    def all_counters(self) -> dict[str, float]:
        """Decomposition fallbacks, KL-clip binds (and the last ν), factor updates, inversions,
        steps in standard form despite deferral, and steps on a first-inversion fallback."""
        return {
            **self.counters,
            "diagonal_fallback_steps": self.directions.diagonal_fallbacks,
            **self.factors.fallbacks.as_dict(),
        }

    def layer(self, name: str) -> LayerState:
        found = next((lay for lay in self.layers if lay.name == name), None)
        if found is None:
            names = [lay.name for lay in self.layers]
            raise ValueError(f"layer_name must be one of {names}, got {name!r}")
        return found

    def eigenvalues(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.factors.eigenvalues(self.layer(name))

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        """Per layer: see ``kfaclab.curvature.layer_diagnostics``; empty before the first step."""
        out: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            if layer.inverse is None or layer.damping is None:
                continue
            eig_a, eig_g = self.factors.eigenvalues(layer)
            out[layer.name] = layer_diagnostics(eig_a, eig_g, layer.damping)
        return out

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything of the engine's own (momentum lives in ``param_state``).

        Saving folds pending rotations into the weights and ends input-stream sharing for this
        engine: a run restored from the state cannot rejoin the stream, so the saved run takes
        the same (plain) path from here on and the two continue bit for bit."""
        self.directions.materialize()
        self.factors.streams.leave_all(self.layers)
        return {
            "step": self.step_count,
            "layers": [layer.to_state() for layer in self.layers],
            "damping": self.damping.state_dict(),
            "damping_kind": type(self.damping).__name__,
            "counters": dict(self.counters),
            "diagonal_fallback_steps": self.directions.diagonal_fallbacks,
            "spectra": [s.mean_eigenvalue for s in self.factors.spectra],
            "fallbacks": self.factors.fallbacks.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["layers"]) != len(self.layers):
            raise UsageError(
                f"state_dict must have {len(self.layers)} layers, got {len(state['layers'])}"
            )
        for layer, layer_state in zip(self.layers, state["layers"], strict=True):
            layer.check_state(layer_state)
        self._check_damping_state(state)
        for layer, layer_state in zip(self.layers, state["layers"], strict=True):
            layer.load_state(layer_state)
        self.factors.streams.detach_all()
        self.directions.deferred.clear()
        self.factors.restack()
        self.step_count = int(state["step"])
        self.damping.load_state_dict(state["damping"])
        self.counters = dict(state["counters"])
        self.directions.diagonal_fallbacks = int(state.get("diagonal_fallback_steps", 0))
        self.factors.spectra = [
            LayerSpectrum(layer.name, mean)
            for layer, mean in zip(self.layers, state["spectra"], strict=True)
        ]
        fallbacks = state["fallbacks"]
        self.factors.fallbacks = FallbackCounter(
            fallbacks["decomposition_float64_retries"],
            fallbacks["decomposition_jitter_retries"],
            fallbacks["decomposition_failures"],
        )
        self.factors.spectrum_cache.clear()

    def _check_damping_state(self, state: dict[str, Any]) -> None:
        """Refuse another strategy's state in one line, before anything is changed."""
        mine = type(self.damping).__name__
        saved = state.get("damping_kind")
        if saved is not None and saved != mine:
            raise UsageError(
                f"state_dict damping must be the state of this optimizer's {mine} strategy, "
                f"got a {saved} state"
            )
        try:  # states saved before the kind was recorded: try it on a copy
            copy.deepcopy(self.damping).load_state_dict(state["damping"])
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(
                f"state_dict damping must be the state of this optimizer's {mine} strategy, "
                f"got one it cannot read ({type(error).__name__}: {error})"
            ) from None


def as_float(value: torch.Tensor | float | None) -> float | None:
    if value is None:
        return None
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
