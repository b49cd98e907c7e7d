"""The fused SGD trial: ``FusedMLP``'s forward and backward, torch's heavy-ball SGD by hand.

An SGD trial through autograd and ``torch.optim.SGD`` spends more time building and walking the
graph, calling modules and running the optimizer's Python than in its products (issue 30). This
backend computes the same trial with the same ATen kernels on the same operands, in the same
order, so its trajectory is bitwise that of the autograd path (``tests/test_fused_sgd.py``):

* every h_j contiguous (a row-strided operand can make MKL round differently);
* O_L from autograd's own ``nll_loss_backward`` and ``_log_softmax_backward_data`` (the shared
  backward's (softmax − onehot)/B differs from them by rounding unless B is a power of two);
* tanh' through autograd's ``tanh_backward`` kernel;
* ∇W_j = O_jᵀ h_{j-1} by ``mm`` (how autograd's addmm backward forms a transposed weight's
  gradient), ∇b_j = Σ_rows O_j;
* torch.optim.SGD's heavy ball, dampening 0, no weight decay: v ← g on the first step, then
  v ← μv + g; θ ← θ − ηv (without momentum θ ← θ − ηg).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kfaclab.train.fused_mlp import FusedMLP, chain_shaped
from kfaclab.trial_types import TrialConfig

_MEAN = 1  # torch's Reduction::Mean
_NO_IGNORE = -100  # nll_loss's default ignore_index


def sgd_fusable(config: TrialConfig) -> bool:
    """Whether an SGD trial's model is the chain ``FusedSGD`` computes by hand."""
    return config.optimizer == "sgd" and chain_shaped(config)


class FusedSGD(FusedMLP):
    """An SGD trial of ``build_mlp``'s model as ``kfaclab.train.steps.TrialSteps`` (module doc)."""

    ones_column = False  # contiguous h_j, as autograd's products see them

    def __init__(self, model: nn.Sequential, config: TrialConfig) -> None:
        super().__init__(model, config)
        self.momentum = config.momentum
        # torch.optim.SGD's parameter order: each layer's weight, then its bias.
        self._params = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        self._buffers: list[torch.Tensor] | None = None
        self._grads: list[torch.Tensor] | None = None
        self._one: torch.Tensor | None = None  # ∂L/∂L, the seed of autograd's backward

    def _loss_grad(self, log_p: torch.Tensor) -> torch.Tensor:
        y = self._y
        assert y is not None
        if self._one is None or self._one.dtype != log_p.dtype:
            self._one = log_p.new_ones(())
        # nll_loss's total weight under mean reduction with no class weights: the row count.
        total = log_p.new_tensor(float(len(y)))
        nll = torch.ops.aten.nll_loss_backward(self._one, log_p, y, None, _MEAN, _NO_IGNORE, total)
        return torch.ops.aten._log_softmax_backward_data(nll, log_p, 1, log_p.dtype)

    def _back_propagate(self, grad: torch.Tensor, o: list[torch.Tensor]) -> None:
        if self.activation != "tanh":
            super()._back_propagate(grad, o)
            return
        for j in range(len(self.layers) - 1, 0, -1):
            back = grad @ self._weights[j]
            torch.ops.aten.tanh_backward.grad_input(back, self._hidden[j - 1], grad_input=o[j - 1])
            grad = o[j - 1]

    @torch.no_grad()
    def backward(self) -> None:
        super().backward()
        self._grads = None

    def _gradients(self) -> list[torch.Tensor]:
        """∇W_1, ∇b_1, …, ∇W_L, ∇b_L of this step's batch (made once a step)."""
        if self._grads is None:
            grads = []
            for j in range(len(self.layers)):
                out = self.output_grads(j)
                grads += [torch.mm(out.t(), self.inputs(j)), out.sum(0)]
            self._grads = grads
        return self._grads

    def write_grads(self) -> None:
        with torch.no_grad():
            for param, grad in zip(self._params, self._gradients(), strict=True):
                param.grad = grad

    @torch.no_grad()
    def step(self, lr: float) -> None:
        grads = self._gradients()
        if self.momentum != 0.0:
            if self._buffers is None:
                self._buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self._buffers, self.momentum)
                torch._foreach_add_(self._buffers, grads)
            grads = self._buffers
        torch._foreach_add_(self._params, grads, alpha=-lr)
        self._grads = None

    def damping(self) -> float | None:
        return None

    def diagnostics(self) -> dict[str, dict[str, Any]] | None:
        return None

    def materialize(self) -> None:
        pass  # updates are applied to the weights at once

    @property
    def counters(self) -> dict[str, float]:
        return {}
