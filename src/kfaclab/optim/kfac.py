"""``KFAC``: a torch.optim.Optimizer that preconditions nn.Linear and nn.Conv2d layers with
Kronecker factors.

The class is the autograd-hook capture backend of the one engine (``kfaclab.optim.engine``):
hooks capture each layer's inputs and output gradients, ``step`` hands them to the engine, which
does all of K-FAC's mathematics. What λ means is fixed by docs/interfaces.md and the README:

* per layer, the block of [W | b] has curvature G⊗A with A = (1/N)Σ āᵢāᵢᵀ (ā = [a; 1])
  and G = (1/N)Σ gᵢgᵢᵀ, gᵢ = ∂ℓᵢ/∂sᵢ the per-example output gradient (independent of the loss's
  reduction: ``KFACOptions.loss_reduction`` tells how to undo it); an nn.Conv2d's weight is read
  as the matrix (out, in·kh·kw) (``kfaclab.optim.conv``);
* ``damping_form="exact"``: d = (G⊗A + λI)⁻¹∇ in the eigenbases of A and G;
  ``"factored"``: d = (G + √λ/π I)⁻¹ ∇ (A + π√λ I)⁻¹, π from the traces (Martens & Grosse);
* momentum is heavy-ball on the preconditioned direction: v ← μv + d, θ ← θ − ηv;
* every other parameter gets d = ∇ with its group's lr and momentum, and is named once in a
  warning (``unpreconditioned="error"`` refuses them instead): parameters outside nn.Linear and
  nn.Conv2d layers, layers whose weights are tied to another module's, nn.MultiheadAttention's
  ``out_proj`` (its forward never runs), and any layer whose forward hook never saw a batch.

Typical loop (empirical Fisher)::

    opt = KFAC(model, lr=0.05, damping=1e-2, momentum=0.9)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()               # also forgets captures of a batch whose step was skipped
        loss.backward()
        opt.step(loss=loss)           # `loss=` lets damping strategies see the minibatch loss

torch's closure form works too: ``opt.step(closure)`` calls the closure (zero_grad, forward,
backward, return the loss) with gradients enabled and returns its loss.

Parameter groups: ``KFAC(model, lr, params=[{"params": ..., "lr": ...}, ...])`` as torch's
optimizers take them; each group's lr, momentum and weight decay apply to its parameters. A
layer's weight and bias must be in one group. ``add_param_group`` accepts parameters outside the
model's nn.Linear / nn.Conv2d layers (they get the plain gradient) and refuses those layers'.

Monte-Carlo Fisher (``KFACOptions(fisher="mc")``): after the forward pass and before
``loss.backward()`` call ``opt.sample_fisher(logits)``: it samples ŷ ~ p(y|x) once per example and
back-propagates the sampled loss to the layer outputs only (no parameter gradients). A factor step
without it is refused.

Levenberg–Marquardt damping on the same batch needs the loss after the step: pass an *evaluation*
closure as ``loss_closure`` that returns the current minibatch's loss at the current parameters
(no backward; it is called under ``torch.no_grad()``, only on the steps where the strategy
updates λ)::

    opt.step(loss=loss, loss_closure=lambda: F.cross_entropy(model(x), y))

(``opt.step(closure, loss=loss)``, the form before 0.2, reads ``closure`` as that evaluation
closure, with a DeprecationWarning.)
Mixed precision with ``torch.amp.GradScaler``: pass ``grad_scaler=scaler``; the captured output
gradients are then divided by the scaler's scale, as ``scaler.unscale_`` divides ``.grad``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from kfaclab.damping.base import Damping
from kfaclab.errors import UsageError
from kfaclab.optim import groups as pg
from kfaclab.optim import kfac_step as checks
from kfaclab.optim import model_layers as ml
from kfaclab.optim.capture import Capture, LayerCapture
from kfaclab.optim.distributed import gather_captures, process_group_of
from kfaclab.optim.engine import KFACEngine, LossClosure, as_float
from kfaclab.optim.options import (
    KFACOptions,
    Speedups,
    check_lr,
    check_momentum,
    check_weight_decay,
)
from kfaclab.optim.validation import as_damping


class KFAC(Optimizer):
    """K-FAC for the nn.Linear and nn.Conv2d layers of ``model``; see the module docstring.

    Args:
        model: the network (an nn.Module, not its parameters); its trainable nn.Linear and
            nn.Conv2d layers are preconditioned, its other trainable parameters get the gradient.
        lr: learning rate η ≥ 0 (the default of ``param_groups``, so torch's lr schedulers work;
            0 gives a zero step that still accumulates curvature statistics).
        damping: λ > 0, or a ``kfaclab.damping.Damping`` strategy.
        momentum: μ in [0, 1), heavy-ball on the preconditioned direction.
        weight_decay: L2 coefficient added to the gradient before preconditioning (≥ 0).
        params: parameter groups as torch's optimizers take them (an iterable of the model's
            parameters or of dicts with "params" and optional "lr", "momentum", "weight_decay");
            default: one group of every trainable parameter of ``model``. A layer's weight and
            bias must be in one group; a layer with neither in a group is not optimised.
        options: the rest of the mathematics (``KFACOptions``: factor decay and schedule, damping
            form, Fisher type, factor initialisation, eigenvalue floor, KL clip, loss reduction).
        speedups: ways to compute the same step faster (``Speedups``); ``opt.speedups`` says
            which are in effect and why the others are not.
        unpreconditioned: what to do about trainable parameters K-FAC does not precondition
            ("warn" once naming them, "error", or "allow" silently).
        grad_scaler: the ``torch.amp.GradScaler`` scaling this model's loss, if any: its scale
            is taken out of the captured output gradients at every step.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        damping: float | Damping = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        params: Any = None,
        options: KFACOptions | None = None,
        speedups: Speedups | None = None,
        unpreconditioned: ml.Unpreconditioned = "warn",
        grad_scaler: Any = None,
    ) -> None:
        ml.check_model(model)
        check_lr(lr)
        check_momentum(momentum)
        check_weight_decay(weight_decay)
        options = KFACOptions() if options is None else options
        speedups = Speedups() if speedups is None else speedups
        if not isinstance(options, KFACOptions):
            raise UsageError(f"options must be a KFACOptions, got {options!r}")
        if not isinstance(speedups, Speedups):
            raise UsageError(f"speedups must be a Speedups, got {speedups!r}")
        checks.check_grad_scaler(grad_scaler, speedups)
        candidates, reasons = ml.candidate_layers(model)
        if not candidates:
            raise UsageError(
                f"model must contain at least one trainable nn.Linear or nn.Conv2d layer, "
                f"got none in {type(model).__name__}"
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = pg.as_groups(trainable if params is None else params)
        layers, layer_groups = pg.split_layers(candidates, groups)
        if not layers:
            among = ", ".join(repr(layer.name) for layer in candidates)
            raise UsageError(f"params must hold the parameters of a layer among {among}, got none")
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        pg.check_groups(self.param_groups)
        in_layers = {id(p) for lay in layers for p in lay.module.parameters()}
        names = {id(p): n for n, p in model.named_parameters()}
        index = pg.group_of(self.param_groups)
        others = [p for g in self.param_groups for p in g["params"] if id(p) not in in_layers]
        self.unpreconditioned_names = [names.get(id(p), "(not in model)") for p in others]
        ml.report_unpreconditioned(self.unpreconditioned_names, reasons, unpreconditioned)
        self._item_groups = layer_groups + [index[id(p)] for p in others]
        self._layer_params = {
            id(p): name
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.Conv2d)
            for p in m.parameters(recurse=False)
        }
        self.options = options
        self._grad_scaler = grad_scaler
        self._group = process_group_of(model)
        if self._group is not None and speedups.batch_gradients_only:
            raise UsageError(
                "batch_gradients_only cannot apply under DistributedDataParallel (.grad is the "
                "all-reduced gradient, the capture a rank's shard), got batch_gradients_only=True"
            )
        self._capture = Capture(
            [LayerCapture(layer.name, layer.module) for layer in layers],
            keep_outputs=options.fisher == "mc",
        )
        self._engine = KFACEngine(
            layers,
            others,
            options,
            as_damping(damping),
            speedups,
            self.state,
            weight_decay=max(g["weight_decay"] for g in self.param_groups),
        )
        self._captured: set[str] = set()  # layers a capture has ever reached
        self.nonfinite_captures = 0  # layer captures left out of the factors for NaN/inf
        self._capture.attach()
        if self._engine.in_effect.deferred_rotation:  # after the capture hooks: they must see
            for i, layer in enumerate(layers):  # the uncorrected output
                hook = layer.module.register_forward_hook(checks.deferred_forward(self._engine, i))
                self._capture.handles.append(hook)
        # torch users never clean up optimizers: the hooks go when this optimizer is collected
        # (they hold the capture, never the optimizer, so they cannot keep it alive).
        weakref.finalize(self, self._capture.detach)

    # --- public read-outs ----------------------------------------------------------------------

    @property
    def engine(self) -> KFACEngine:
        """The engine doing the mathematics (its layers' factors and inverses, for inspection)."""
        return self._engine

    @property
    def damping(self) -> Damping:
        return self._engine.damping

    @property
    def steps_done(self) -> int:
        return self._engine.step_count

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._engine.layers]

    @property
    def speedups(self) -> dict[str, str]:
        """Requested speed-ups that are not in effect, each with the reason (empty: all apply)."""
        return dict(self._engine.in_effect.not_applied)

    @property
    def counters(self) -> dict[str, float]:
        """Decomposition fallbacks, KL-clip binds (and the last ν), factor updates, inversions
        (counted only when a layer had factors to decompose)."""
        return self._engine.all_counters()

    def current_damping(self) -> float:
        """The damping strategy's global λ (what traces and reports show)."""
        return self._engine.damping.value()

    def eigenvalues(self, layer_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All eigenvalues of A and G (ascending) from the last decomposition of that layer."""
        return self._engine.eigenvalues(layer_name)

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        """Per layer: eigenvalue ranges of A and G, λ relative to the mean eigenvalue of G⊗A, the
        damped condition number, the fraction of eigenvalues below λ, the effective dimension
        (``kfaclab.curvature.layer_diagnostics``); empty before the first step. Parameters K-FAC
        does not precondition appear under the key "(unpreconditioned)"."""
        out = self._engine.diagnostics()
        if self.unpreconditioned_names:
            out["(unpreconditioned)"] = {
                "parameters": list(self.unpreconditioned_names),
                "update": "plain gradient with its group's lr and momentum",
            }
        return out

    # --- Monte-Carlo Fisher ------------------------------------------------------------------

    def sample_fisher(self, logits: torch.Tensor, likelihood: str = "categorical") -> None:
        """fisher="mc": draw ŷ ~ p(y|x) (one per example) and capture gᵢ = ∂ℓ(ŷᵢ)/∂sᵢ.

        Call after the forward pass that produced ``logits`` (N, C), after ``zero_grad()`` (which
        forgets samples too) and before ``loss.backward()``. ``likelihood``: "categorical"
        (softmax cross-entropy) or "gaussian" (unit-variance regression, ŷ = output + ε).
        """
        if self.options.fisher != "mc":
            raise UsageError(f"sample_fisher needs fisher='mc', got fisher={self.options.fisher!r}")
        if not self._capture.enabled:
            return  # not a factor step
        checks.sample(self._capture.layers, logits, likelihood)

    # --- the step ---------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``, which also forgets what the hooks captured since the last step
        (and MC samples): a batch whose step was skipped (a non-finite loss, GradScaler's inf
        check) must not enter the next step's factors."""
        super().zero_grad(set_to_none)
        self._capture.discard()

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        loss: torch.Tensor | float | None = None,
        loss_closure: LossClosure | None = None,
    ) -> Any:
        """One K-FAC step from the gradients in ``.grad`` and this step's capture.

        Args:
            closure: torch's closure (zero_grad, forward, backward, return the loss); called
                once with gradients enabled before the step, its loss returned.
            loss: the minibatch loss whose gradient is in ``.grad``; passed on to the damping
                strategy (``StepOutcome.loss_before``). Strategies that read it require it.
            loss_closure: evaluation closure (no backward) returning the minibatch loss at the
                current parameters; required by ``LevenbergMarquardt(source="same_batch")``.
        Returns ``loss``, or the closure's.
        """
        if closure is not None and loss is not None:  # the form before 0.2
            closure, loss_closure = checks.legacy_closure(closure, loss_closure)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr, momentum, weight_decay, per_item = pg.step_hyperparameters(
            self.param_groups, self._item_groups
        )
        checks.check_requirements(self._engine.damping, loss, loss_closure)
        capture = self._capture
        capture.collect(self.options.loss_reduction, self.options.conv_approx)
        checks.require_gradients(self._engine, capture.layers)
        if capture.enabled and self.options.fisher == "mc":
            checks.require_samples(capture.layers)
        if self._group is not None and capture.enabled:
            mean_loss = self.options.loss_reduction == "mean"
            gather_captures(capture.layers, self._group, mean_loss)
        dropped = capture.drop_non_finite() if capture.enabled else []
        if dropped:
            self.nonfinite_captures += len(dropped)
            checks.warn_dropped(dropped)
        if self._grad_scaler is not None:
            capture.unscale(float(self._grad_scaler.get_scale()))
        if capture.enabled:
            new = checks.mark_uncaptured(self._engine, capture.layers, self._captured, dropped)
            self.unpreconditioned_names += [f"{name} (never captured)" for name in new]
        self._engine.step(
            capture.layers,
            lr,
            momentum,
            weight_decay,
            as_float(loss),
            loss_closure,
            per_item=per_item,
        )
        capture.clear()
        capture.enabled = self._engine.factor_step
        return loss

    def materialize(self) -> None:
        """Write pending rotated updates (``deferred_rotation``) into the weights and momentum
        buffers; a no-op otherwise. Needed before reading weights outside the forward pass."""
        self._engine.directions.materialize()

    # --- parameter groups and state ---------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group`` for parameters outside the model's nn.Linear and nn.Conv2d
        layers (an extra scale, a new head's LayerNorm): they get the plain gradient with the new
        group's lr, momentum and weight decay. A layer's parameters are refused: K-FAC attaches
        its hooks and factors when it is built, so pass them in ``KFAC(model, params=[...])``."""
        if not hasattr(self, "_engine"):  # Optimizer.__init__ adding the constructor's groups
            super().add_param_group(param_group)
            return
        checks.refuse_layer_params(param_group, self._layer_params)
        super().add_param_group(param_group)
        try:
            pg.check_groups(self.param_groups)
        except UsageError:  # torch appended it already
            self.param_groups.pop()
            raise
        g = len(self.param_groups) - 1
        for k, p in enumerate(self.param_groups[g]["params"]):
            self._engine.directions.other_params.append(p)
            self._item_groups.append(g)
            self.unpreconditioned_names.append(f"param_groups[{g}][{k}]")

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (momentum buffers by parameter position, ``param_groups``)
        plus a "kfac" entry: every layer's running factors and decomposition by layer name, the
        damping strategy's state and kind, the step count and counters. Pending rotated updates
        (``deferred_rotation``) are folded into the weights first. Loading it into the same model
        and optimizer configuration continues the run bit for bit."""
        self.materialize()
        state = super().state_dict()
        state["kfac"] = {**self._engine.state_dict(), "nonfinite_captures": self.nonfinite_captures}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``. Layers are matched in order, by name up to the wrappers'
        prefixes (torch.compile's "_orig_mod.", DistributedDataParallel's "module."), so an eager
        model's state loads into its compiled or DDP-wrapped twin. A state from another width or
        depth, another damping strategy, or another optimizer is refused in one line before
        anything changes."""
        state_dict = dict(state_dict)
        kfac = state_dict.pop("kfac", None)
        if kfac is None:
            raise UsageError("state_dict must come from KFAC.state_dict(), got no 'kfac' entry")
        kfac = dict(kfac)
        nonfinite = int(kfac.pop("nonfinite_captures", 0))
        self._engine.load_state_dict(kfac)  # checks layers and damping before changing anything
        super().load_state_dict(state_dict)
        self._engine.directions.param_state = self.state  # torch replaced the state mapping
        self._capture.enabled = self._engine.factor_step
        self.nonfinite_captures = nonfinite

    def restore_weight_grads(self) -> None:
        """``skip_weight_grads``: write the skipped layers' ``.grad`` from this step's captured
        batch (call after backward, before ``step``); a no-op for the other layers."""
        self._capture.collect(self.options.loss_reduction, self.options.conv_approx)
        layers = zip(self._engine.layers, self._capture.layers, strict=True)
        self._engine.directions.deferred.restore_weight_grads(
            {layer.name: batch for layer, batch in layers}
        )

    def remove_hooks(self) -> None:
        """Detach the capture hooks from the model (the optimizer can no longer update factors)
        and give skipped weights (``skip_weight_grads``) their ``requires_grad`` back. Not needed
        before dropping the optimizer: its hooks go when it is garbage-collected."""
        self._capture.detach()
        self._engine.directions.deferred.unskip_all()
