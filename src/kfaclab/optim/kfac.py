"""``KFAC``: a torch.optim.Optimizer that preconditions nn.Linear layers with Kronecker factors.

The class gathers state (hooks, running factors, decompositions, counters); the math lives in
``factors``, ``functional`` and ``kfaclab.curvature``. What λ means is fixed by DESIGN.md:

* per nn.Linear layer, the block of [W | b] has curvature G⊗A with A = (1/N)Σ āᵢāᵢᵀ (ā = [a; 1])
  and G = (1/N)Σ gᵢgᵢᵀ, gᵢ = ∂ℓᵢ/∂sᵢ the per-example output gradient (independent of the loss's
  reduction: ``loss_reduction`` tells how to undo it);
* ``damping_form="exact"``: d = (G⊗A + λI)⁻¹∇ in the eigenbases of A and G;
  ``"factored"``: d = (G + √λ/π I)⁻¹ ∇ (A + π√λ I)⁻¹, π from the traces (Martens & Grosse);
* momentum is heavy-ball on the preconditioned direction: v ← μv + d, θ ← θ − ηv;
* every other parameter (not in an nn.Linear) gets d = ∇ with the same lr and momentum.

Typical loop (empirical Fisher)::

    opt = KFAC(model, lr=0.05, damping=1e-2, momentum=0.9)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss)          # `loss=` lets damping strategies see the minibatch loss

Monte-Carlo Fisher (``fisher="mc"``): after the forward pass and before ``loss.backward()`` call
``opt.sample_fisher(logits)``: it samples ŷ ~ p(y|x) once per example and back-propagates the
sampled loss to the layer outputs only (one extra partial backward pass, no parameter gradients).

Levenberg–Marquardt damping on the same batch needs the loss after the step: pass an *evaluation*
closure that returns the current minibatch's loss at the current parameters (no backward; it is
called under ``torch.no_grad()``, only on the steps where the strategy updates λ)::

    opt.step(lambda: F.cross_entropy(model(x), y), loss=loss)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.optim import Optimizer

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.diagnostics import layer_diagnostics
from kfaclab.curvature.eigen import eigen_of_factor
from kfaclab.curvature.exact import ExactInverse
from kfaclab.curvature.factored import FactoredInverse, factored_inverse
from kfaclab.curvature.stacked import StackedExactInverse, stackable_groups
from kfaclab.damping.base import Damping, LayerSpectrum, StepOutcome
from kfaclab.optim import functional as fn
from kfaclab.optim.capture import Capture, LayerCapture
from kfaclab.optim.deferred import DeferredLayers, InactivePart, batch_weight_grad
from kfaclab.optim.factors import (
    MIN_COLUMNS,
    update_input_factor,
    update_output_factor,
    update_stacked,
)
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.stream_follower import InputFactorStreams
from kfaclab.optim.validation import as_damping, validate_arguments

DampingForm = Literal["exact", "factored"]
_Deferred = tuple[torch.Tensor, InactivePart]  # a deferred layer's step: (rotated M, inactive d)
FisherType = Literal["empirical", "mc"]


class KFAC(Optimizer):
    """K-FAC for the nn.Linear layers of ``model``; see the module docstring for the math.

    Args:
        model: the network; its nn.Linear layers are preconditioned, all its trainable parameters
            are optimised.
        lr: learning rate η > 0 (``param_groups[0]["lr"]``, so torch's lr schedulers work).
        damping: λ > 0, or a ``kfaclab.damping.Damping`` strategy.
        momentum: μ in [0, 1), heavy-ball on the preconditioned direction.
        factor_decay: β in [0, 1) of the factors' moving average.
        factor_every: update the factors every this many steps (≥ 1).
        inverse_every: recompute eigenbases / inverses every this many steps (≥ 1).
        damping_form: "exact" or "factored".
        fisher: "empirical" (gradients of the training loss) or "mc" (sampled targets).
        weight_decay: L2 coefficient added to the gradient before preconditioning (≥ 0).
        kl_clip: None (off) or c > 0: scale the step by ν = min(1, sqrt(c / (η² dᵀ∇))).
        input_stream_cache: optional ``kfaclab.optim.InputStreamCache`` shared by several
            optimizers in one process (a sweep's trials): the updates and decompositions of input
            factors that depend only on the data (layer 1's) are done once per data stream and
            followed by the optimizers that see bitwise the same inputs (results unchanged).
        loss_reduction: "mean" or "sum" — how the training loss combines the examples, so that
            gᵢ = ∂ℓᵢ/∂sᵢ can be recovered from ∂L/∂s (×N for "mean").
        batch_gradients_only: a promise that each step's ``.grad`` of the nn.Linear layers is
            exactly the gradient of the one backward pass the hooks saw (no accumulation over
            passes, no clipping, no added terms). With ``input_stream_cache``, the empirical
            Fisher and no weight decay, layers that follow a stream then precondition from its
            shared batch projections (``ExactInverse.precondition_from_batch``): the same
            direction up to rounding, for a fraction of layer 1's cost.
        deferred_rotation: with ``batch_gradients_only`` and a stream, also keep those layers'
            updates in A's eigenbasis between inversions (``kfaclab.optim.deferred``): the
            out×k×k back-rotation is replaced by an N×k×out correction in the forward pass.
            Such a layer's ``weight`` is not its effective weight until ``materialize()``;
            call it before reading weights outside the model's forward (``state_dict`` does).
            Used when the step needs no model reduction or KL clipping.
        skip_weight_grads: with ``deferred_rotation`` (and ``factor_every=1``), switch a deferred
            layer's weight to ``requires_grad=False`` after its first deferred step, so backward
            no longer computes its gradient Oᵀ X̄ — the step needs only the captured batch (for
            the reference MLP's layer 1 a 100×128×784 product, the largest of the backward pass).
            Its ``.grad`` then stays None: ``restore_weight_grads()`` writes it from the capture
            for a loop that reads it; ``remove_hooks()`` switches ``requires_grad`` back.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        damping: float | Damping = 1e-3,
        momentum: float = 0.0,
        factor_decay: float = 0.95,
        factor_every: int = 1,
        inverse_every: int = 10,
        damping_form: DampingForm = "exact",
        fisher: FisherType = "empirical",
        weight_decay: float = 0.0,
        kl_clip: float | None = None,
        loss_reduction: Literal["mean", "sum"] = "mean",
        input_stream_cache: InputStreamCache | None = None,
        batch_gradients_only: bool = False,
        deferred_rotation: bool = False,
        skip_weight_grads: bool = False,
    ) -> None:
        validate_arguments(
            lr=lr,
            momentum=momentum,
            factor_decay=factor_decay,
            factor_every=factor_every,
            inverse_every=inverse_every,
            damping_form=damping_form,
            fisher=fisher,
            weight_decay=weight_decay,
            kl_clip=kl_clip,
            loss_reduction=loss_reduction,
        )
        layers = [
            LayerState(name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.weight.requires_grad
        ]
        if not layers:
            raise ValueError(
                f"model must contain at least one trainable nn.Linear layer, "
                f"got none in {type(model).__name__}"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.damping: Damping = as_damping(damping)
        self.factor_decay = factor_decay
        self.factor_every = factor_every
        self.inverse_every = inverse_every
        self.damping_form: DampingForm = damping_form
        self.fisher: FisherType = fisher
        self.kl_clip = kl_clip
        self.loss_reduction = loss_reduction
        self._streams = InputFactorStreams(input_stream_cache, factor_decay)
        if not isinstance(batch_gradients_only, bool):
            raise ValueError(
                f"batch_gradients_only must be True or False, got {batch_gradients_only!r}"
            )
        self._from_batch = batch_gradients_only and fisher == "empirical"
        if deferred_rotation and not (self._from_batch and input_stream_cache is not None):
            raise ValueError(
                "deferred_rotation needs batch_gradients_only=True, fisher='empirical' and an "
                f"input_stream_cache, got batch_gradients_only={batch_gradients_only!r}, "
                f"fisher={fisher!r}, input_stream_cache={input_stream_cache!r}"
            )
        if skip_weight_grads and not (deferred_rotation and factor_every == 1):
            raise ValueError(
                "skip_weight_grads needs deferred_rotation=True and factor_every=1 (the gradient "
                f"comes from every step's capture), got deferred_rotation={deferred_rotation!r}, "
                f"factor_every={factor_every!r}"
            )
        self._deferral = deferred_rotation
        self._skip_weight_grads = skip_weight_grads
        self._deferred = DeferredLayers()
        self._layers = layers
        layer_params = set()
        for layer in layers:
            layer_params.add(layer.module.weight)
            if layer.module.bias is not None:
                layer_params.add(layer.module.bias)
        self._other_params = [p for p in params if p not in layer_params]
        self._capture = Capture(
            [LayerCapture(layer.name, layer.module) for layer in layers],
            keep_outputs=fisher == "mc",
        )
        self._capture.attach()
        if deferred_rotation:  # after the capture hooks: they must see the uncorrected output
            for layer in layers:
                self._capture.handles.append(
                    layer.module.register_forward_hook(self._deferred_forward(layer))
                )
        self._step = 0
        self._fallbacks = FallbackCounter()
        self._counters: dict[str, float] = {
            "kl_clip_binds": 0,
            "kl_clip_last_factor": 1.0,
            "steps_without_capture": 0,
            "factor_updates": 0,
            "inversions": 0,
        }
        self._spectrum_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._spectra = [LayerSpectrum(layer.name, None) for layer in layers]
        # Equally shaped dense layers preconditioned together; rebuilt after every inversion.
        self._stacks: list[tuple[list[int], StackedExactInverse]] = []

    # --- public read-outs ----------------------------------------------------------------------

    @property
    def steps_done(self) -> int:
        return self._step

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    @property
    def counters(self) -> dict[str, float]:
        """Decomposition fallbacks, KL-clip binds (and the last ν), factor updates, inversions."""
        return {**self._counters, **self._fallbacks.as_dict()}

    def current_damping(self) -> float:
        """The damping strategy's global λ (what traces and reports show)."""
        return self.damping.value()

    def eigenvalues(self, layer_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All eigenvalues of A and G (ascending) from the last decomposition of that layer.

        The factored form does not decompose; its eigenvalues are computed on first request after
        each inversion (one eigvalsh per factor) and cached.
        """
        layer = next((lay for lay in self._layers if lay.name == layer_name), None)
        if layer is None:
            raise ValueError(f"layer_name must be one of {self.layer_names}, got {layer_name!r}")
        inverse = layer.inverse
        if inverse is None:
            raise ValueError(f"layer {layer_name!r} has no decomposition yet: call step() first")
        if isinstance(inverse, ExactInverse):
            assert layer.factor_a is not None and layer.factor_g is not None
            return (
                inverse.a.full_values(layer.factor_a.shape[0]),
                inverse.g.full_values(layer.factor_g.shape[0]),
            )
        cached = self._spectrum_cache.get(layer_name)
        if cached is None:
            self._streams.settle(layer)
            assert layer.factor_a is not None and layer.factor_g is not None
            cached = (
                torch.linalg.eigvalsh(layer.factor_a.to(torch.float64)).clamp_min(0),
                torch.linalg.eigvalsh(layer.factor_g.to(torch.float64)).clamp_min(0),
            )
            self._spectrum_cache[layer_name] = cached
        return cached

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        """Per layer: eigenvalue ranges of A and G, λ relative to the mean eigenvalue of G⊗A, the
        damped condition number, the fraction of eigenvalues below λ, the effective dimension.
        Empty before the first step. See ``kfaclab.curvature.layer_diagnostics``."""
        out: dict[str, dict[str, Any]] = {}
        for layer in self._layers:
            if layer.inverse is None or layer.damping is None:
                continue
            eig_a, eig_g = self.eigenvalues(layer.name)
            out[layer.name] = layer_diagnostics(eig_a, eig_g, layer.damping)
        return out

    # --- Monte-Carlo Fisher ------------------------------------------------------------------

    def sample_fisher(self, logits: torch.Tensor, likelihood: str = "categorical") -> None:
        """fisher="mc": draw ŷ ~ p(y|x) (one per example) and capture gᵢ = ∂ℓ(ŷᵢ)/∂sᵢ.

        Call after the forward pass that produced ``logits`` (N, C) and before
        ``loss.backward()``. ``likelihood``: "categorical" (softmax cross-entropy) or
        "gaussian" (unit-variance regression, ŷ = output + ε).
        """
        if self.fisher != "mc":
            raise ValueError(f"sample_fisher needs fisher='mc', got fisher={self.fisher!r}")
        if not self._capture.enabled:
            return  # not a factor step
        outputs = [c.outputs for c in self._capture.layers]
        if any(o is None for o in outputs):
            raise ValueError("sample_fisher must follow a forward pass with gradients enabled")
        with torch.no_grad():
            if likelihood == "categorical":
                sampled: torch.Tensor = torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
            elif likelihood == "gaussian":
                sampled = logits + torch.randn_like(logits)
            else:
                raise ValueError(
                    f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}"
                )
        if likelihood == "categorical":
            sampled_loss = nn.functional.cross_entropy(logits, sampled, reduction="sum")
        else:
            sampled_loss = 0.5 * (logits - sampled).pow(2).sum()
        grads = torch.autograd.grad(sampled_loss, outputs, retain_graph=True)  # type: ignore[arg-type]
        for capture, grad in zip(self._capture.layers, grads, strict=True):
            capture.output_grads = grad.detach().reshape(-1, grad.shape[-1])
            capture.grad_scale = 1.0  # reduction="sum": already per-example gradients
            capture.outputs = None

    # --- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], torch.Tensor | float] | None = None,
        *,
        loss: torch.Tensor | float | None = None,
    ) -> torch.Tensor | float | None:
        """One K-FAC step from the gradients in ``.grad``.

        Args:
            closure: evaluation closure (no backward) returning the minibatch loss at the current
                parameters; needed only by damping strategies with ``needs_loss_after_step``.
            loss: the minibatch loss whose gradient is in ``.grad``; passed on to the damping
                strategy (``StepOutcome.loss_before``).
        Returns ``loss``.
        """
        t = self._step
        group = self.param_groups[0]
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        if self._capture.enabled:
            self._update_factors()
        if t % self.inverse_every == 0 or any(lay.inverse is None for lay in self._layers):
            self._update_inverses()
        lambdas = self.damping.layer_values(self._spectra)

        wants_reduction = self.damping.wants_model_reduction(t)
        defer = self._deferral and self.kl_clip is None and not wants_reduction
        grads, directions, deferred = self._directions(lambdas, weight_decay, defer)

        if self.kl_clip is not None:
            nu = fn.kl_clip_factor(directions, grads, lr, self.kl_clip)
            self._counters["kl_clip_last_factor"] = nu
            if nu < 1.0:
                self._counters["kl_clip_binds"] += 1
                directions = [d * nu for d in directions]

        steps = self._apply(directions, lr, momentum, want_steps=wants_reduction)
        for i, (rotated, inactive) in deferred.items():
            layer = self._layers[i]
            assert isinstance(layer.inverse, ExactInverse)
            state = self.state[layer.module.weight]
            self._deferred.apply(layer, layer.inverse, rotated, inactive, lr, momentum, state)
            if (t + 1) % self.inverse_every == 0:  # the next step inverts: fold in before it
                self._deferred.materialize(layer, state)
            if self._skip_weight_grads:
                self._deferred.skip_weight_grad(layer)
        loss_before = _as_float(loss)
        outcome = StepOutcome(step=t, loss_before=loss_before)
        if wants_reduction:
            outcome = self._with_model_reduction(outcome, steps, lambdas, closure)
        self.damping.observe(outcome)

        self._capture.clear()
        self._step += 1
        self._capture.enabled = self._step % self.factor_every == 0
        return loss

    # --- internals --------------------------------------------------------------------------

    def _update_factors(self) -> None:
        """Every layer's running A and G from this step's capture. Layers with equally shaped
        running factors (a wide MLP's hidden layers) are updated together (``update_stacked``);
        data-input layers go through the input streams; first updates set the factor."""
        Group = list[tuple[LayerState, torch.Tensor]]
        input_groups: dict[tuple[object, ...], Group] = {}
        output_groups: dict[tuple[object, ...], Group] = {}
        for layer, capture in zip(self._layers, self._capture.layers, strict=True):
            if capture.inputs is None or capture.output_grads is None:
                continue
            layer.input_is_data = layer.input_is_data and not capture.input_requires_grad
            scale = capture.grad_scale
            if self.fisher == "empirical":
                n = float(capture.output_grads.shape[0])
                scale = n if self.loss_reduction == "mean" else 1.0
            a, g = layer.factor_a, layer.factor_g
            if a is not None and not layer.input_is_data and capture.inputs.shape[1] < MIN_COLUMNS:
                key = (a.shape, capture.inputs.shape, layer.has_bias, a.dtype, a.device)
                input_groups.setdefault(key, []).append((layer, capture.inputs))
            else:
                self._streams.update(layer, capture.inputs)
            if g is not None:
                out_key = (g.shape, capture.output_grads.shape, g.dtype, g.device, scale)
                output_groups.setdefault(out_key, []).append((layer, capture.output_grads))
            else:
                layer.factor_g = update_output_factor(
                    None, capture.output_grads, scale, self.factor_decay
                )
        for members in input_groups.values():
            for (layer, _), factor in zip(members, self._updated(members, True), strict=True):
                layer.factor_a = factor
        for group_key, members in output_groups.items():
            factors = self._updated(members, False, scale=cast(float, group_key[-1]))
            for (layer, _), factor in zip(members, factors, strict=True):
                layer.factor_g = factor
        updated = any(
            c.inputs is not None and c.output_grads is not None for c in self._capture.layers
        )
        self._counters["factor_updates" if updated else "steps_without_capture"] += 1

    def _updated(
        self,
        members: list[tuple[LayerState, torch.Tensor]],
        input_side: bool,
        scale: float = 1.0,
    ) -> list[torch.Tensor]:
        """The members' running A (``input_side``, with the bias's column of ones) or G after one
        update with rows ``scale · members[j][1]``: stacked when there are several."""
        decay = self.factor_decay
        runnings = [layer.factor_a if input_side else layer.factor_g for layer, _ in members]
        if len(members) == 1:
            layer, rows = members[0]
            if input_side:
                return [update_input_factor(runnings[0], rows, layer.has_bias, decay)]
            return [update_output_factor(runnings[0], rows, scale, decay)]
        present = [r for r in runnings if r is not None]
        assert len(present) == len(runnings)  # grouped only after their first update
        with_bias = input_side and members[0][0].has_bias
        all_rows = [rows for _, rows in members]
        return update_stacked(present, all_rows, decay, with_bias, scale)

    def _update_inverses(self) -> None:
        self._spectrum_cache.clear()
        self.materialize()  # pending rotations refer to the bases about to be replaced
        for layer in self._layers:
            self._streams.prepare_inversion(layer)
        self._spectra = self._measure_spectra()
        lambdas = (
            self.damping.layer_values(self._spectra) if self.damping_form == "factored" else None
        )
        for i, layer in enumerate(self._layers):
            if layer.factor_a is None or layer.factor_g is None:
                continue
            if self.damping_form == "exact":
                eig_a = self._streams.eigen(layer, self._fallbacks)
                eig_g = eigen_of_factor(layer.factor_g, self._fallbacks)
                if eig_a is not None and eig_g is not None:
                    layer.inverse = ExactInverse.build(
                        eig_a, eig_g, layer.factor_a.shape[0], layer.factor_g.shape[0]
                    )
            else:
                assert lambdas is not None
                inverse = factored_inverse(
                    layer.factor_a, layer.factor_g, lambdas[i], self._fallbacks
                )
                if inverse is not None:
                    layer.inverse = inverse
        self._counters["inversions"] += 1
        self._restack()

    def _restack(self) -> None:
        inverses = [layer.inverse for layer in self._layers]
        self._stacks = []
        for members in stackable_groups(inverses):
            exact = [inv for inv in (inverses[i] for i in members) if isinstance(inv, ExactInverse)]
            self._stacks.append((members, StackedExactInverse.stack(exact)))

    def _measure_spectra(self) -> list[LayerSpectrum]:
        """Mean eigenvalue of each G⊗A, = (tr A / dim A)(tr G / dim G): no decomposition needed.

        Measured at every inversion and kept until the next one, so per-layer rules see the
        spectrum of the curvature that the preconditioner actually uses.
        """
        spectra = []
        for layer in self._layers:
            mean: float | None = None
            if layer.factor_a is not None and layer.factor_g is not None:
                mean_a = float(torch.diagonal(layer.factor_a).mean())
                mean_g = float(torch.diagonal(layer.factor_g).mean())
                mean = mean_a * mean_g
            spectra.append(LayerSpectrum(layer.name, mean))
        return spectra

    def _directions(
        self, lambdas: list[float], weight_decay: float, defer: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[int, _Deferred]]:
        """Gradients and preconditioned directions: the layers (stacked where possible), then
        the other parameters (d = ∇). A layer without gradient gets empty tensors, and so does
        a deferred layer, whose (rotated M, inactive part) goes in the third result."""
        grads: list[torch.Tensor] = []
        directions: list[torch.Tensor] = []
        deferred: dict[int, _Deferred] = {}
        from_batch = self._from_batch and not weight_decay
        stacked = {i for members, _ in self._stacks for i in members}
        for i, (layer, capture, lam) in enumerate(
            zip(self._layers, self._capture.layers, lambdas, strict=True)
        ):
            layer.damping = lam
            if from_batch and defer:  # without weight decay: the block is the batch's gradient
                split = self._deferred_direction(layer, capture, lam)
                if split is not None:
                    deferred[i] = split
                    grads.append(torch.zeros(0))  # read only by KL clipping and model reduction
                    directions.append(torch.zeros(0))
                    continue
            block = self._gradient_block(layer, capture)
            if block is None:
                grads.append(torch.zeros(0))
                directions.append(torch.zeros(0))
                continue
            if weight_decay:
                block = block + weight_decay * layer.parameter_block()
            grads.append(block)
            if layer.name in self._deferred.pending:  # not deferred this step: standard form
                self._deferred.materialize(layer, self.state[layer.module.weight])
            if i in stacked:
                directions.append(block)  # replaced by the stacked product below
                continue
            directions.append(
                self._precondition(layer, block, lam, capture if from_batch else None)
            )
        for members, stack in self._stacks:
            blocks = [grads[i] for i in members]
            if any(b.numel() == 0 for b in blocks):  # a layer without gradient: one at a time
                for i in members:
                    if grads[i].numel():
                        directions[i] = self._precondition(
                            self._layers[i], grads[i], lambdas[i], None
                        )
                continue
            result = stack.precondition(torch.stack(blocks), [lambdas[i] for i in members])
            for i, direction in zip(members, result.unbind(0), strict=True):
                directions[i] = direction
        for p in self._other_params:
            g = torch.zeros_like(p) if p.grad is None else p.grad
            if weight_decay:
                g = g + weight_decay * p
            grads.append(g)
            directions.append(g)
        return grads, directions, deferred

    def _gradient_block(self, layer: LayerState, batch: LayerCapture) -> torch.Tensor | None:
        """[∇W | ∇b], from the captured batch when backward skipped the weight's gradient."""
        if layer.module.weight.grad is None and layer.name in self._deferred.skipped:
            if batch.inputs is None or batch.output_grads is None:
                return None
            return layer.gradient_block(batch_weight_grad(batch.output_grads, batch.inputs))
        return layer.gradient_block()

    def _deferred_direction(
        self, layer: LayerState, batch: LayerCapture, lam: float
    ) -> _Deferred | None:
        """(M, d outside the active block) if this layer's step can stay rotated, else None."""
        inverse = layer.inverse
        if not isinstance(inverse, ExactInverse) or inverse.g.active is not None:
            return None
        if batch.inputs is None or batch.output_grads is None:
            return None
        if layer.module.weight.grad is None and layer.name not in self._deferred.skipped:
            return None  # no gradient this step: the layer is left alone
        projected = self._streams.projection(layer, inverse.a)
        if projected is None:
            return None
        rotated = inverse.damped(inverse.rotated_batch_gradient(batch.output_grads, projected), lam)

        def block() -> torch.Tensor:
            full = self._gradient_block(layer, batch)
            assert full is not None
            return full

        return rotated, self._deferred.inactive_part(layer, inverse, batch, lam, block)

    def _deferred_forward(
        self, layer: LayerState
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor | None]:
        """Forward hook: the output with the pending rotated update (see ``deferred``)."""

        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            pending = self._deferred.pending.get(layer.name)
            if pending is None:
                return None
            x = inputs[0]
            if not torch.is_grad_enabled():  # not a training batch: fold in, then recompute
                self._deferred.materialize(layer, self.state[layer.module.weight])
                return nn.functional.linear(x, layer.module.weight, layer.module.bias)
            flat = x.detach().reshape(-1, x.shape[-1])
            projected = self._streams.next_batch_projection(layer, flat, pending.basis.a)
            correction = pending.correction(projected).reshape(output.shape)
            return output - correction

        return hook

    def materialize(self) -> None:
        """Write pending rotated updates (``deferred_rotation``) into the weights and momentum
        buffers; a no-op otherwise. Needed before reading weights outside the forward pass."""
        for layer in self._layers:
            if layer.name in self._deferred.pending:
                self._deferred.materialize(layer, self.state[layer.module.weight])

    def _precondition(
        self, layer: LayerState, block: torch.Tensor, lam: float, batch: LayerCapture | None
    ) -> torch.Tensor:
        """d for one layer; ``batch``: this step's capture when block is its batch gradient."""
        inverse = layer.inverse
        if inverse is None:
            return block / lam  # no curvature yet (no capture so far): F̂ = 0
        if isinstance(inverse, ExactInverse):
            if batch is not None and batch.inputs is not None and batch.output_grads is not None:
                projected = self._streams.projection(layer, inverse.a)
                if projected is not None:
                    return inverse.precondition_from_batch(
                        block, lam, batch.output_grads, projected
                    )
            return inverse.precondition(block, lam)
        assert isinstance(inverse, FactoredInverse)
        return inverse.precondition(block)

    def _apply(
        self, directions: list[torch.Tensor], lr: float, momentum: float, want_steps: bool
    ) -> list[torch.Tensor]:
        """Heavy-ball momentum and the parameter update, as a few multi-tensor (foreach)
        operations; returns the steps δ = −η v aligned with ``directions`` if ``want_steps``
        (empty tensors where a layer had no gradient), else an empty list."""
        n_layers = len(self._layers)
        positions = [i for i, d in enumerate(directions) if d.numel()]
        keys = [
            self._layers[i].module.weight if i < n_layers else self._other_params[i - n_layers]
            for i in positions
        ]
        velocities = [directions[i] for i in positions]
        if momentum != 0.0:
            running, incoming = [], []
            for j, (key, direction) in enumerate(zip(keys, velocities, strict=True)):
                state = self.state[key]
                buffer = state.get("momentum_buffer")
                if buffer is None:  # the first step sets v = d
                    state["momentum_buffer"] = direction.clone()
                else:
                    running.append(buffer)
                    incoming.append(direction)
                velocities[j] = state["momentum_buffer"]
            if running:
                torch._foreach_mul_(running, momentum)
                torch._foreach_add_(running, incoming)
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for i, velocity in zip(positions, velocities, strict=True):
            if i >= n_layers:
                targets.append(self._other_params[i - n_layers])
                sources.append(velocity)
                continue
            layer = self._layers[i]
            weight_part, bias_part = layer.split_block(velocity)
            targets.append(layer.module.weight)
            sources.append(weight_part)
            if bias_part is not None and layer.module.bias is not None:
                targets.append(layer.module.bias)
                sources.append(bias_part)
        torch._foreach_add_(targets, sources, alpha=-lr)
        if not want_steps:
            return []
        steps = list(directions)
        for i, velocity in zip(positions, velocities, strict=True):
            steps[i] = velocity * (-lr)
        return steps

    def _with_model_reduction(
        self,
        outcome: StepOutcome,
        steps: list[torch.Tensor],
        lambdas: list[float],
        closure: Callable[[], torch.Tensor | float] | None,
    ) -> StepOutcome:
        """Adds M(δ) − M(0) of the K-FAC quadratic model and, if needed, the loss after the step."""
        linear = curvature = damping_terms = 0.0
        global_lam = self.damping.value()
        for i, delta in enumerate(steps):
            if delta.numel() == 0:
                continue
            if i < len(self._layers):
                layer = self._layers[i]
                block = self._gradient_block(layer, self._capture.layers[i])
                assert block is not None
                lam = lambdas[i]
                self._streams.settle(layer)
                if layer.factor_a is not None and layer.factor_g is not None:
                    curvature += fn.kronecker_quadratic(delta, layer.factor_a, layer.factor_g)
            else:
                p = self._other_params[i - len(self._layers)]
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
            loss_after = _as_float(closure())
        return StepOutcome(outcome.step, outcome.loss_before, loss_after, predicted)

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.materialize()
        state = super().state_dict()
        self._streams.settle_all(self._layers)
        state["kfac"] = {
            "step": self._step,
            "capture_enabled": self._capture.enabled,
            "layers": [layer.to_state() for layer in self._layers],
            "damping": self.damping.state_dict(),
            "counters": dict(self._counters),
            "spectra": [s.mean_eigenvalue for s in self._spectra],
            "fallbacks": self._fallbacks.as_dict(),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        kfac = state_dict.pop("kfac", None)
        if kfac is None:
            raise ValueError("state_dict must come from KFAC.state_dict(), got no 'kfac' entry")
        if len(kfac["layers"]) != len(self._layers):
            raise ValueError(
                f"state_dict must have {len(self._layers)} layers, got {len(kfac['layers'])}"
            )
        super().load_state_dict(state_dict)
        for layer, layer_state in zip(self._layers, kfac["layers"], strict=True):
            layer.load_state(layer_state)
        self._streams.detach_all()
        self._deferred.clear()
        self._restack()
        self._step = int(kfac["step"])
        self._capture.enabled = bool(kfac["capture_enabled"])
        self.damping.load_state_dict(kfac["damping"])
        self._counters = dict(kfac["counters"])
        self._spectra = [
            LayerSpectrum(layer.name, mean)
            for layer, mean in zip(self._layers, kfac["spectra"], strict=True)
        ]
        fallbacks = kfac["fallbacks"]
        self._fallbacks = FallbackCounter(
            fallbacks["decomposition_float64_retries"],
            fallbacks["decomposition_jitter_retries"],
            fallbacks["decomposition_failures"],
        )
        self._spectrum_cache.clear()

    def restore_weight_grads(self) -> None:
        """``skip_weight_grads``: write the skipped layers' ``.grad`` from this step's captured
        batch (call after backward, before ``step``); a no-op for the other layers."""
        layers = zip(self._layers, self._capture.layers, strict=True)
        self._deferred.restore_weight_grads({layer.name: batch for layer, batch in layers})

    def remove_hooks(self) -> None:
        """Detach the capture hooks from the model (the optimizer can no longer update factors)
        and give skipped weights (``skip_weight_grads``) their ``requires_grad`` back."""
        self._capture.detach()
        self._deferred.unskip_all()


def _as_float(value: torch.Tensor | float | None) -> float | None:
    if value is None:
        return None
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
