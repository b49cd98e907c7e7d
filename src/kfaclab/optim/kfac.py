"""``KFAC``: a torch.optim.Optimizer that preconditions nn.Linear layers with Kronecker factors.

The class is the autograd-hook capture backend of the one engine (``kfaclab.optim.engine``):
hooks capture each layer's inputs and output gradients, ``step`` hands them to the engine, which
does all of K-FAC's mathematics. What λ means is fixed by docs/interfaces.md and the README:

* per nn.Linear layer, the block of [W | b] has curvature G⊗A with A = (1/N)Σ āᵢāᵢᵀ (ā = [a; 1])
  and G = (1/N)Σ gᵢgᵢᵀ, gᵢ = ∂ℓᵢ/∂sᵢ the per-example output gradient (independent of the loss's
  reduction: ``KFACOptions.loss_reduction`` tells how to undo it);
* ``damping_form="exact"``: d = (G⊗A + λI)⁻¹∇ in the eigenbases of A and G;
  ``"factored"``: d = (G + √λ/π I)⁻¹ ∇ (A + π√λ I)⁻¹, π from the traces (Martens & Grosse);
* momentum is heavy-ball on the preconditioned direction: v ← μv + d, θ ← θ − ηv;
* every other parameter (not in an nn.Linear) gets d = ∇ with the same lr and momentum; they are
  named once in a warning (``unpreconditioned="error"`` refuses them instead).

Typical loop (empirical Fisher)::

    opt = KFAC(model, lr=0.05, damping=1e-2, momentum=0.9)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss)          # `loss=` lets damping strategies see the minibatch loss

Monte-Carlo Fisher (``KFACOptions(fisher="mc")``): after the forward pass and before
``loss.backward()`` call ``opt.sample_fisher(logits)``: it samples ŷ ~ p(y|x) once per example and
back-propagates the sampled loss to the layer outputs only (no parameter gradients).

Levenberg–Marquardt damping on the same batch needs the loss after the step: pass an *evaluation*
closure that returns the current minibatch's loss at the current parameters (no backward; it is
called under ``torch.no_grad()``, only on the steps where the strategy updates λ)::

    opt.step(lambda: F.cross_entropy(model(x), y), loss=loss)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer

from kfaclab.damping.base import Damping
from kfaclab.optim.capture import Capture, LayerCapture
from kfaclab.optim.conv import check_conv
from kfaclab.optim.distributed import gather_captures, process_group_of
from kfaclab.optim.engine import KFACEngine, LossClosure, as_float
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.mc_fisher import sampled_output_grads
from kfaclab.optim.options import (
    KFACOptions,
    Speedups,
    check_lr,
    check_momentum,
    check_weight_decay,
)
from kfaclab.optim.validation import as_damping

Unpreconditioned = Literal["warn", "error", "allow"]


class KFAC(Optimizer):
    """K-FAC for the nn.Linear layers of ``model``; see the module docstring for the math.

    Args:
        model: the network; its trainable nn.Linear layers are preconditioned, all its trainable
            parameters are optimised.
        lr: learning rate η > 0 (``param_groups[0]["lr"]``, so torch's lr schedulers work).
        damping: λ > 0, or a ``kfaclab.damping.Damping`` strategy.
        momentum: μ in [0, 1), heavy-ball on the preconditioned direction.
        weight_decay: L2 coefficient added to the gradient before preconditioning (≥ 0).
        options: the rest of the mathematics (``KFACOptions``: factor decay and schedule, damping
            form, Fisher type, factor initialisation, eigenvalue floor, KL clip, loss reduction).
        speedups: ways to compute the same step faster (``Speedups``); ``opt.speedups`` says
            which are in effect and why the others are not.
        unpreconditioned: what to do about trainable parameters outside nn.Linear layers
            ("warn" once naming them, "error", or "allow" silently).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        damping: float | Damping = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        options: KFACOptions | None = None,
        speedups: Speedups | None = None,
        unpreconditioned: Unpreconditioned = "warn",
    ) -> None:
        check_lr(lr)
        check_momentum(momentum)
        check_weight_decay(weight_decay)
        options = KFACOptions() if options is None else options
        speedups = Speedups() if speedups is None else speedups
        if not isinstance(options, KFACOptions):
            raise ValueError(f"options must be a KFACOptions, got {options!r}")
        if not isinstance(speedups, Speedups):
            raise ValueError(f"speedups must be a Speedups, got {speedups!r}")
        layers, refused = _preconditioned_layers(model)
        if not layers:
            raise ValueError(
                f"model must contain at least one trainable nn.Linear or nn.Conv2d layer, "
                f"got none in {type(model).__name__}"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        in_layers = {id(p) for lay in layers for p in lay.module.parameters()}
        others = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        others = [(n, p) for n, p in others if id(p) not in in_layers]
        self.unpreconditioned_names = [n for n, _ in others]
        _report_unpreconditioned(self.unpreconditioned_names, refused, unpreconditioned)
        self.options = options
        self._group = process_group_of(model)
        if self._group is not None and speedups.batch_gradients_only:
            raise ValueError(
                "batch_gradients_only cannot apply under DistributedDataParallel (.grad is the "
                "all-reduced gradient, the capture a rank's shard), got batch_gradients_only=True"
            )
        self._capture = Capture(
            [LayerCapture(layer.name, layer.module) for layer in layers],
            keep_outputs=options.fisher == "mc",
        )
        self._engine = KFACEngine(
            layers,
            [p for _, p in others],
            options,
            as_damping(damping),
            speedups,
            self.state,
            weight_decay=weight_decay,
        )
        self._capture.attach()
        if self._engine.in_effect.deferred_rotation:  # after the capture hooks: they must see
            for i, layer in enumerate(layers):  # the uncorrected output
                hook = layer.module.register_forward_hook(self._deferred_forward(i))
                self._capture.handles.append(hook)

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
        """Decomposition fallbacks, KL-clip binds (and the last ν), factor updates, inversions."""
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
                "update": "plain gradient with the same lr and momentum",
            }
        return out

    # --- Monte-Carlo Fisher ------------------------------------------------------------------

    def sample_fisher(self, logits: torch.Tensor, likelihood: str = "categorical") -> None:
        """fisher="mc": draw ŷ ~ p(y|x) (one per example) and capture gᵢ = ∂ℓ(ŷᵢ)/∂sᵢ.

        Call after the forward pass that produced ``logits`` (N, C) and before
        ``loss.backward()``. ``likelihood``: "categorical" (softmax cross-entropy) or
        "gaussian" (unit-variance regression, ŷ = output + ε).
        """
        if self.options.fisher != "mc":
            raise ValueError(f"sample_fisher needs fisher='mc', got fisher={self.options.fisher!r}")
        if not self._capture.enabled:
            return  # not a factor step
        outputs = [c.outputs for c in self._capture.layers]
        if any(o is None for o in outputs):
            raise ValueError("sample_fisher must follow a forward pass with gradients enabled")
        grads = sampled_output_grads(logits, outputs, likelihood)  # type: ignore[arg-type]
        for capture, grad in zip(self._capture.layers, grads, strict=True):
            capture.add_sampled(grad)

    # --- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: LossClosure | None = None, *, loss: torch.Tensor | float | None = None
    ) -> torch.Tensor | float | None:
        """One K-FAC step from the gradients in ``.grad`` and this step's capture.

        Args:
            closure: evaluation closure (no backward) returning the minibatch loss at the current
                parameters; needed only by damping strategies with ``needs_loss_after_step``.
            loss: the minibatch loss whose gradient is in ``.grad``; passed on to the damping
                strategy (``StepOutcome.loss_before``).
        Returns ``loss``.
        """
        self._capture.collect(self.options.loss_reduction, self.options.conv_approx)
        self._require_gradients()
        if self._group is not None and self._capture.enabled:
            mean_loss = self.options.loss_reduction == "mean"
            gather_captures(self._capture.layers, self._group, mean_loss)
        group = self.param_groups[0]
        check_lr(group["lr"])
        engine = self._engine
        engine.step(
            self._capture.layers,
            group["lr"],
            group["momentum"],
            group["weight_decay"],
            as_float(loss),
            closure,
        )
        self._capture.clear()
        self._capture.enabled = engine.factor_step
        return loss

    def _require_gradients(self) -> None:
        skipped = self._engine.directions.deferred.skipped
        for layer, batch in zip(self._engine.layers, self._capture.layers, strict=True):
            if layer.weight.grad is not None or layer.name in skipped:
                return
            if batch.output_grads is not None:
                return
        if any(p.grad is not None for p in self._engine.directions.other_params):
            return
        raise ValueError(
            "step() found no gradient in any parameter: call loss.backward() before step()"
        )

    def _deferred_forward(
        self, index: int
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor | None]:
        """Forward hook: the output with the pending rotated update (see ``deferred``)."""
        directions = self._engine.directions
        layer = self._engine.layers[index]

        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            if layer.name not in directions.deferred.pending:
                return None
            x = inputs[0]
            if not torch.is_grad_enabled():  # not a training batch: fold in, then recompute
                directions.materialize()
                return nn.functional.linear(x, layer.weight, layer.bias)
            correct = directions.forward_correction(index, x.detach().reshape(-1, x.shape[-1]))
            assert correct is not None
            return correct(output)

        return hook

    def materialize(self) -> None:
        """Write pending rotated updates (``deferred_rotation``) into the weights and momentum
        buffers; a no-op otherwise. Needed before reading weights outside the forward pass."""
        self._engine.directions.materialize()

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.materialize()
        state = super().state_dict()
        state["kfac"] = self._engine.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        kfac = state_dict.pop("kfac", None)
        if kfac is None:
            raise ValueError("state_dict must come from KFAC.state_dict(), got no 'kfac' entry")
        self._engine.load_state_dict(kfac)  # checks the layers' shapes before changing anything
        super().load_state_dict(state_dict)
        self._engine.directions.param_state = self.state  # torch replaced the state mapping
        self._capture.enabled = self._engine.factor_step

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
        and give skipped weights (``skip_weight_grads``) their ``requires_grad`` back."""
        self._capture.detach()
        self._engine.directions.deferred.unskip_all()


def _preconditioned_layers(model: nn.Module) -> tuple[list[LayerState], list[str]]:
    """The trainable nn.Linear and nn.Conv2d layers K-FAC can precondition, and a reason for
    each Conv2d it cannot (grouped, non-zero padding modes: ``conv.check_conv``)."""
    layers, refused = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d) or not module.weight.requires_grad:
            continue
        if isinstance(module, nn.Conv2d):
            try:
                check_conv(module, name)
            except ValueError as error:
                refused.append(str(error))
                continue
        layers.append(LayerState(name, module))
    return layers, refused


def _report_unpreconditioned(names: list[str], reasons: list[str], policy: str) -> None:
    if policy not in ("warn", "error", "allow"):
        raise ValueError(f"unpreconditioned must be 'warn', 'error' or 'allow', got {policy!r}")
    if not names or policy == "allow":
        return
    listed = ", ".join(names) + "".join(f" ({reason})" for reason in reasons)
    if policy == "error":
        raise ValueError(
            f"K-FAC preconditions nn.Linear and nn.Conv2d layers only; these parameters would "
            f"get the plain gradient: {listed} (pass unpreconditioned='warn' or 'allow' to "
            "accept that)"
        )
    warnings.warn(
        f"K-FAC preconditions nn.Linear and nn.Conv2d layers only; these parameters get the "
        f"plain gradient with the same lr and momentum: {listed}",
        stacklevel=3,
    )
