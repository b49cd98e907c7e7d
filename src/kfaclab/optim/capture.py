"""The autograd-hook capture backend: what K-FAC needs from each nn.Linear layer of any model.

For a layer s = W a + b, the factors need the layer inputs aᵢ and the per-example output
gradients gᵢ = ∂ℓᵢ/∂sᵢ. A forward hook keeps the input (detached: no extra graph) and, for the
empirical Fisher, registers a hook on the output tensor that receives ∂L/∂s when the training loss
is back-propagated. For the Monte-Carlo Fisher the output tensor itself is kept instead, so that
``sample_fisher`` can differentiate a sampled loss with respect to it directly.

Each (input, output gradient) pair whose backward arrived since the last step is kept, and the
step uses all of them, concatenated: several backward passes before one ``step()`` (gradient
accumulation over micro-batches) give the factors of the concatenated batch, and
``KFAC.zero_grad()`` discards them with the gradients (a skipped step leaves nothing behind);
rows that are not finite are dropped before they reach a factor. A forward that is
never back-propagated (a side computation) contributes nothing. A layer applied twice in one
graph (weight sharing) is refused when its first application's gradient arrives: its K-FAC
factors would need the weight-sharing ("expand"/"reduce") treatment, which Linear layers here do
not have.

Capture is off outside factor-update steps, under ``torch.no_grad()`` (evaluation, closures) and
for outputs that do not require grad, so it costs nothing there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kfaclab.choices import ConvApprox, LossReduction
from kfaclab.optim.conv import conv_rows
from kfaclab.optim.layer_state import factor_dtype_of

# More micro-batches than this before one step() is almost surely a loop that forgot step().
MANY_ACCUMULATED = 64


@dataclass
class LayerCapture:
    """What the forward/backward passes since the last step left for one layer.

    The engine reads ``inputs`` / ``output_grads`` (and ``loss_grads``); the hook backend fills
    them in ``collect`` from the pairs it received, the fused backend sets them directly.
    """

    name: str
    module: nn.Linear | nn.Conv2d
    inputs: torch.Tensor | None = None  # (N, in), N = examples (leading dims flattened)
    output_grads: torch.Tensor | None = None  # (N, out): ∂L/∂s of the loss that was back-propagated
    outputs: torch.Tensor | None = None  # (N, out) with graph, kept only for the MC Fisher
    # gᵢ = grad_scale · output_grads[i]; None: the training loss's ∂L/∂s, whose scale the engine
    # derives from the rows and the loss reduction (N for "mean", 1 for "sum")
    grad_scale: float | None = None
    input_requires_grad: bool = True  # False when the input is data, independent of θ
    # (N, out) ∂L/∂s of the training loss when it differs from ``output_grads`` (the MC Fisher's
    # sampled gradients) and the gradient block is taken from the batch; None: output_grads.
    loss_grads: torch.Tensor | None = None
    # (N, in + 1) = [inputs | 1], when the backend has it already (the fused MLP keeps its
    # activations with the bias's column of ones): used instead of concatenating one.
    inputs_with_ones: torch.Tensor | None = None
    # hook bookkeeping: the latest forward's inputs, and the completed (inputs, grads) pairs
    forwards: int = 0
    latest: torch.Tensor | None = None
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    sampled: bool = False  # the pairs hold the MC Fisher's per-example (sum) gradients

    def loss_rows(self) -> torch.Tensor | None:
        """O = ∂L/∂s of the training loss: ``loss_grads`` where the capture keeps it apart from
        the factors' rows (the MC Fisher's sampled gradients), else ``output_grads``."""
        return self.loss_grads if self.loss_grads is not None else self.output_grads

    def clear(self) -> None:
        self.discard()
        self.outputs = None
        self.latest = None

    def discard(self) -> None:
        """Forget every backward pass (and MC sample) received since the last step, keeping the
        latest forward's inputs: ``zero_grad()`` between a forward and its backward is common."""
        self.inputs = self.output_grads = self.loss_grads = None
        self.inputs_with_ones = None
        self.grad_scale = None
        self.sampled = False
        self.pairs.clear()

    def is_finite(self) -> bool:
        """Whether the collected rows are finite. A non-finite entry makes its row sum
        non-finite; a finite row set whose sum overflows has an entry above 3.4e38 / N, whose
        square overflows the factor anyway, so one reduction per tensor decides."""
        return all(
            bool(torch.isfinite(t.sum())) for t in (self.inputs, self.output_grads) if t is not None
        )

    def receive(self, forward: int, grads: torch.Tensor) -> None:
        """The output gradient of forward number ``forward`` arrived (a backward pass)."""
        if forward != self.forwards:
            raise ValueError(
                f"layer {self.name!r} was applied more than once in one graph (weight sharing): "
                "K-FAC's factors for nn.Linear assume one application per example; apply each "
                "nn.Linear once per forward pass"
            )
        assert self.latest is not None
        self.pairs.append((self.latest, _rows(self.module, grads.detach())))
        if len(self.pairs) == MANY_ACCUMULATED + 1:
            warnings.warn(
                f"layer {self.name!r} received {len(self.pairs)} backward passes since the last "
                "step(): captures are piling up (call step() after accumulating)",
                stacklevel=2,
            )

    def add_sampled(self, grads: torch.Tensor) -> None:
        """The MC Fisher's per-example output gradients for the latest forward."""
        assert self.latest is not None
        self.pairs.append((self.latest, _rows(self.module, grads.detach())))
        self.sampled = True
        self.outputs = None

    def collect(self, reduction: LossReduction = "mean", approx: ConvApprox = "expand") -> None:
        """``inputs`` / ``output_grads`` from every pair received since the last step, in the
        factor dtype (float32 for a half-precision layer); a Conv2d's become rows (``conv``)."""
        if not self.pairs:
            return
        if len(self.pairs) == 1:
            inputs, grads = self.pairs[0]
        else:
            inputs = torch.cat([x for x, _ in self.pairs])
            grads = torch.cat([g for _, g in self.pairs])
        dtype = factor_dtype_of(self.module.weight.dtype)
        inputs, grads = inputs.to(dtype), grads.to(dtype)
        if isinstance(self.module, nn.Conv2d):
            per_example = 1.0 if self.sampled or reduction == "sum" else float(grads.shape[0])
            rows = conv_rows(inputs, grads, self.module, approx, per_example)
            inputs, grads, self.grad_scale = rows.inputs, rows.output_grads, rows.grad_scale
        elif self.sampled:
            self.grad_scale = 1.0  # reduction "sum": already per-example gradients
        self.inputs, self.output_grads = inputs, grads


@dataclass
class Capture:
    """Hooks on every layer; ``enabled`` is switched by the optimizer once per step."""

    layers: list[LayerCapture]
    keep_outputs: bool  # True for the Monte-Carlo Fisher
    enabled: bool = True
    handles: list[RemovableHandle] = field(default_factory=list)

    def attach(self) -> None:
        for layer in self.layers:
            self.handles.append(layer.module.register_forward_hook(self._forward_hook(layer)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def collect(self, reduction: LossReduction = "mean", approx: ConvApprox = "expand") -> None:
        for layer in self.layers:
            layer.collect(reduction, approx)

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()

    def discard(self) -> None:
        """What ``zero_grad()`` does to the captures: see ``LayerCapture.discard``."""
        for layer in self.layers:
            layer.discard()

    def drop_non_finite(self) -> list[str]:
        """Drop the collected rows of every layer whose rows are not finite (a NaN input, an
        overflowing loss scale): they would poison the running factors for good. Returns the
        layers' names."""
        rows = [t for layer in self.layers for t in (layer.inputs, layer.output_grads)]
        present = [t for t in rows if t is not None]
        if not present:
            return []
        if len({t.dtype for t in present}) == 1:  # the usual case: one host sync for all layers
            sums = torch.stack([t.sum() for t in present])
            if bool(torch.isfinite(sums).all()):
                return []
        dropped = [layer for layer in self.layers if not layer.is_finite()]
        for layer in dropped:
            layer.discard()
        return [layer.name for layer in dropped]

    def unscale(self, scale: float) -> None:
        """Divide the training loss's captured ∂L/∂s by a GradScaler's loss scale ``scale``, as
        ``scaler.unscale_`` divides ``.grad``: on the rows themselves, so that their Gram matrix
        cannot overflow (exact for GradScaler's power-of-two scales: the factors are those of an
        unscaled run to the bit). The MC Fisher's sampled gradients come from an unscaled loss."""
        if scale == 1.0:
            return
        for layer in self.layers:
            if layer.output_grads is not None and not layer.sampled:
                layer.output_grads = layer.output_grads / scale

    def _forward_hook(
        self, layer: LayerCapture
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (self.enabled and torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0]
            if x.numel() == 0:
                raise ValueError(
                    f"layer {layer.name!r} got an empty batch of shape {tuple(x.shape)}: "
                    "K-FAC needs at least one example per step"
                )
            layer.forwards += 1
            layer.latest = _rows(module, x.detach())
            layer.input_requires_grad = x.requires_grad
            if self.keep_outputs:
                layer.outputs = output
            else:
                output.register_hook(_receiver(layer, layer.forwards))

        return hook


def _receiver(layer: LayerCapture, forward: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        layer.receive(forward, grad)

    return hook


def _rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A Linear's inputs or output gradients with leading dimensions flattened (N, features);
    a Conv2d's stay (N, C, H, W) until ``collect`` turns them into rows."""
    if isinstance(module, nn.Conv2d):
        return t
    return t.reshape(-1, t.shape[-1])
