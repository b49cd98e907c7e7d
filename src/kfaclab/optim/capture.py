"""Forward/backward capture of what K-FAC needs from each nn.Linear layer.

For a layer s = W a + b, the factors need the layer inputs aᵢ and the per-example output
gradients gᵢ = ∂ℓᵢ/∂sᵢ. A forward hook keeps the input (detached: no extra graph) and, for the
empirical Fisher, registers a hook on the output tensor that keeps ∂L/∂s when the training loss is
back-propagated. For the Monte-Carlo Fisher the output tensor itself is kept instead, so that
``sample_fisher`` can differentiate a sampled loss with respect to it directly (autograd.grad on
the outputs: no parameter gradients are computed, and the user's .grad stays untouched).

Capture is off outside factor-update steps, under ``torch.no_grad()`` (evaluation, closures) and
for outputs that do not require grad, so it costs nothing there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class LayerCapture:
    """What one forward/backward pass left for one layer; cleared after every optimizer step."""

    name: str
    module: nn.Linear
    inputs: torch.Tensor | None = None  # (N, in), N = examples (leading dims flattened)
    output_grads: torch.Tensor | None = None  # (N, out): ∂L/∂s of the loss that was back-propagated
    outputs: torch.Tensor | None = None  # (N, out) with graph, kept only for the MC Fisher
    grad_scale: float = 1.0  # gᵢ = grad_scale · output_grads[i]
    input_requires_grad: bool = True  # False when the input is data, independent of θ

    def clear(self) -> None:
        self.inputs = self.output_grads = self.outputs = None


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

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()

    def _forward_hook(
        self, layer: LayerCapture
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (self.enabled and torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0]
            layer.inputs = x.detach().reshape(-1, x.shape[-1])
            layer.input_requires_grad = x.requires_grad
            if self.keep_outputs:
                layer.outputs = output
            else:
                output.register_hook(_keep_grad(layer))

        return hook


def _keep_grad(layer: LayerCapture) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        layer.output_grads = grad.detach().reshape(-1, grad.shape[-1])

    return hook
