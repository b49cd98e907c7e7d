"""``build_mlp``'s forward and backward by hand: the part the fused trial backends share.

A sweep trial always has the same shape — ``build_mlp``'s chain of nn.Linear layers and
cross-entropy — so its forward and backward can be computed on stacked tensors (the hidden
activations and output gradients each live in one (L−1, B, ·) tensor), with no autograd graph,
no module calls and no hooks:

* forward s_j = h_{j-1} W_jᵀ + b_j, h_j = act(s_j); loss = mean cross-entropy;
* backward O_L = ∂L/∂s_L, O_{j-1} = (O_j W_j) ⊙ act'(s_{j-1}) — what autograd gives.

``FusedKFAC`` (``fused.py``) adds the K-FAC step, ``FusedSGD`` (``fused_sgd.py``) torch's
heavy-ball SGD. Each product and element-wise pass is the ATen kernel autograd would call on
the same operands, so only the grouping of O_L differs (see ``FusedMLP.backward``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.choices import ACTIVATIONS
from kfaclab.trial_types import TrialConfig


def activate(activation: str, s: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` = act(``s``), in any shape, with the kernels autograd's modules call."""
    if activation == "relu":
        torch.clamp_min(s, 0.0, out=out)  # ATen's relu is clamp_min(·, 0)
    elif activation == "tanh":
        torch.tanh(s, out=out)
    else:
        out.copy_(s)


def activation_backward(
    activation: str, back: torch.Tensor, hidden: torch.Tensor, out: torch.Tensor
) -> None:
    """``out`` = ∂L/∂s from ``back`` = ∂L/∂h and the activation's output ``hidden`` = act(s), in
    any shape (the population step's (P, B, w) too)."""
    if activation == "relu":  # autograd's own kernel: zero where the unit is off
        torch.ops.aten.threshold_backward.grad_input(back, hidden, 0.0, grad_input=out)
    elif activation == "tanh":
        torch.mul(back, 1.0 - hidden * hidden, out=out)
    else:
        out.copy_(back)


def chain_shaped(config: TrialConfig) -> bool:
    """Whether the trial's model is ``build_mlp``'s chain (what the fused backends compute)."""
    return config.model == "mlp" and config.activation in ACTIVATIONS and config.depth >= 2


class FusedMLP:
    """Forward and backward of ``build_mlp``'s model without autograd (see module doc).

    ``forward(x, y)`` returns the minibatch's mean loss; ``backward()`` fills O_1…O_L;
    ``inputs(j)`` and ``output_grads(j)`` are layer j's input (without the ones column) and
    ∂L/∂s_j for the step's update.
    """

    #: Whether each h_j is stored with a column of ones, h̄_j = [h_j | 1], which K-FAC's input
    #: factors and gradient blocks read without a copy. Without it every h_j is contiguous: a
    #: product with a row-strided operand can round differently (MKL picks another kernel).
    ones_column = True

    def __init__(self, model: nn.Sequential, config: TrialConfig) -> None:
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        width = named[0][1].out_features if named else 0
        chained = all(m.in_features == width for _, m in named[1:]) and all(
            m.out_features == width for _, m in named[:-1]
        )
        if len(named) < 2 or any(m.bias is None for _, m in named) or not chained:
            raise ValueError(
                f"{type(self).__name__} needs build_mlp's model: >= 2 nn.Linear layers with "
                f"biases, every hidden layer {width} wide, got "
                f"{[tuple(m.weight.shape) for _, m in named]}"
            )
        self.named = named
        self.layers = [m for _, m in named]
        # Read several times a step: plain lists, not nn.Module.__getattr__ (~1 µs a read). The
        # parameters are updated in place, so the references stay valid.
        self._weights = [m.weight for m in self.layers]
        self._biases: list[torch.Tensor] = [m.bias for m in self.layers if m.bias is not None]
        # W_jᵀ as views made once (the forward's operands; a view op each, six a step otherwise).
        with torch.no_grad():
            self._weights_t = [w.T for w in self._weights]
        self.width = width
        self.activation = config.activation
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._loss = 0.0
        self._h: torch.Tensor | None = None  # h̄_1…h̄_{L-1}: (L-1, B, w+1), last column ones
        self._o: torch.Tensor | None = None  # O_1…O_{L-1}: (L-1, B, w)
        self._o_last: torch.Tensor | None = None  # O_L: (B, out)
        self._log_p: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._hidden: list[torch.Tensor] = []  # h_j = h̄_j[:, :w]
        self._hidden_ones: list[torch.Tensor] = []  # h̄_j
        self._o_views: list[torch.Tensor] = []  # O_j
        self._minus_one: torch.Tensor | None = None  # (B, 1) of −1: onehot's scatter source

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The minibatch's mean cross-entropy at the current (effective) parameters."""
        n, w, depth = x.shape[0], self.width, len(self.layers)
        h = self._h
        if h is None or h.shape[1] != n or h.dtype != x.dtype:
            h = self._h = x.new_empty(depth - 1, n, w + 1 if self.ones_column else w)
            if self.ones_column:
                h[:, :, w] = 1.0
            o = self._o = x.new_empty(depth - 1, n, w)
            # The per-layer views, made once per allocation rather than several times a step
            # (each view is a tensor operation of its own, a few µs at these sizes).
            self._hidden = [h[j, :, :w] for j in range(depth - 1)]
            self._hidden_ones = list(h.unbind(0)) if self.ones_column else []
            self._o_views = list(o.unbind(0))
        weights_t, biases = self._weights_t, self._biases
        s = self._first_layer(torch.addmm(biases[0], x, weights_t[0]), x)
        for j in range(1, depth):
            hidden = self._hidden[j - 1]
            self._activate(s, hidden)
            s = torch.addmm(biases[j], hidden, weights_t[j])
        self._x, self._y = x, y
        self._logits = s
        self._log_p = torch.log_softmax(s, dim=1)
        self._loss = F.nll_loss(self._log_p, y).item()
        return self._loss

    def _first_layer(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Layer 1's output as the step sees it (``FusedKFAC``: minus a pending update)."""
        return s

    def _activate(self, s: torch.Tensor, out: torch.Tensor) -> None:
        activate(self.activation, s, out)

    @torch.no_grad()
    def backward(self) -> None:
        """Every layer's output gradient O_j = ∂L/∂s_j of the mean loss.

        O_L = (softmax − onehot)/B: autograd's nll_loss and log_softmax backward give the same
        up to rounding (bitwise where B is a power of two); ``FusedSGD`` overrides
        ``_loss_grad`` with autograd's own two kernels to stay bitwise with torch's SGD.
        """
        assert self._log_p is not None and self._o is not None
        grad = self._loss_grad(self._log_p)
        self._o_last = grad
        self._back_propagate(grad, self._o_views)

    def _loss_grad(self, log_p: torch.Tensor) -> torch.Tensor:
        y = self._y
        assert y is not None
        grad = log_p.exp()
        return grad.scatter_add_(1, y.unsqueeze(1), self._minus_ones(grad)).div_(len(y))

    def _minus_ones(self, like: torch.Tensor) -> torch.Tensor:
        """A (B, 1) column of −1 in ``like``'s dtype, made once per batch size (read only)."""
        held = self._minus_one
        n = like.shape[0]
        if (
            held is None
            or held.shape[0] != n
            or held.dtype != like.dtype
            or held.device != like.device
        ):
            held = self._minus_one = like.new_full((n, 1), -1.0)
        return held

    def _back_propagate(self, grad: torch.Tensor, o: list[torch.Tensor]) -> None:
        """O_{j-1} = (O_j W_j) ⊙ act'(s_{j-1}) into ``o`` (L-1 tensors (B, w)), from O_L =
        ``grad``."""
        for j in range(len(self.layers) - 1, 0, -1):
            back = grad @ self._weights[j]  # ∂L/∂h_j: (B, w)
            activation_backward(self.activation, back, self._hidden[j - 1], o[j - 1])
            grad = o[j - 1]

    def inputs(self, j: int) -> torch.Tensor:
        """Layer j's input without the ones column: (B, in)."""
        assert self._x is not None
        return self._x if j == 0 else self._hidden[j - 1]

    def output_grads(self, j: int) -> torch.Tensor:
        """∂L/∂s_j of this step's batch: (B, out_j)."""
        assert self._o_last is not None
        return self._o_last if j == len(self.layers) - 1 else self._o_views[j]

    def write_grads(self) -> None:
        """``.grad`` of every weight and bias from this step's batch (what backward would
        leave), for observers such as the gradient histograms; ``clear_grads`` removes them."""
        with torch.no_grad():
            for j, layer in enumerate(self.layers):
                out_grads = self.output_grads(j)
                layer.weight.grad = out_grads.T @ self.inputs(j)
                assert layer.bias is not None
                layer.bias.grad = out_grads.sum(0)

    def clear_grads(self) -> None:
        for layer in self.layers:
            layer.weight.grad = None
            assert layer.bias is not None
            layer.bias.grad = None

    def minibatch_loss_now(self) -> float:
        """The step's minibatch loss at the parameters as they are now (after an update)."""
        x, y = self._x, self._y
        assert x is not None and y is not None
        h = x
        for j, layer in enumerate(self.layers):
            h = torch.addmm(layer.bias, h, layer.weight.T)
            if j < len(self.layers) - 1:
                out = torch.empty_like(h)
                self._activate(h, out)
                h = out
        return F.cross_entropy(h, y).item()
