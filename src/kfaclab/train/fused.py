"""The fused capture backend: ``build_mlp``'s forward and backward by hand, K-FAC by the engine.

``KFAC`` captures layer inputs and output gradients through autograd hooks on any model. A sweep
trial always has the same shape — ``build_mlp``'s chain of nn.Linear layers and cross-entropy — so
this class computes its forward and backward by hand on stacked tensors (the hidden activations
and output gradients each live in one (L−1, B, ·) tensor), with no autograd graph and no hooks,
and hands the captures to the same ``KFACEngine`` that ``KFAC`` uses. Every damping strategy,
damping form, Fisher type, KL clip, factor schedule and implementation profile the engine has is
therefore available here too, with the same mathematics:

* forward s_j = h_{j-1} W_jᵀ + b_j, h_j = act(s_j); loss = mean cross-entropy; layer 1's output
  minus its pending rotated update while one is pending (``engine.directions.forward_correction``);
* backward O_L = (softmax − onehot)/B, O_{j-1} = (O_j W_j) ⊙ act'(s_{j-1}) — what autograd gives;
* the Monte-Carlo Fisher: the same backward from (softmax − onehot(ŷ)), ŷ ~ p(y|x) drawn exactly as
  ``KFAC.sample_fisher`` draws it (``mc_fisher.sample_targets``), for the factors only;
* the gradient blocks [∇W_j | ∇b_j] = O_jᵀ[h_{j-1} | 1] are computed by the engine from the capture.

Results equal a ``KFAC`` trial's up to float rounding (the same products in another grouping);
a trial is bitwise reproducible run to run, and ``state_dict`` resumes it bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.choices import ACTIVATIONS
from kfaclab.damping import build_damping
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.engine import KFACEngine
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.mc_fisher import sample_targets
from kfaclab.optim.options import Speedups, applicable
from kfaclab.train.build import kfac_options
from kfaclab.trial_types import TrialConfig


def fusable(config: TrialConfig) -> bool:
    """Whether the trial's model is a chain ``FusedKFAC`` computes by hand (else: hooks)."""
    if config.optimizer != "kfac" or config.model != "mlp":
        return False
    return config.activation in ACTIVATIONS and config.depth >= 2


class FusedKFAC:
    """Forward, backward and K-FAC step of one trial of ``build_mlp``'s model (see module doc).

    Per step (``kfaclab.train.steps.TrialSteps``): ``loss = forward(x, y)`` (a float),
    ``backward()``, optionally ``write_grads()`` (fills ``.grad`` for observers;
    ``clear_grads()`` after), ``step(lr)``. The model's parameters are updated in place;
    ``materialize()`` before reading them outside ``forward``.
    """

    def __init__(self, model: nn.Sequential, config: TrialConfig, cache: InputStreamCache) -> None:
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        width = named[0][1].out_features if named else 0
        chained = all(m.in_features == width for _, m in named[1:]) and all(
            m.out_features == width for _, m in named[:-1]
        )
        if len(named) < 2 or any(m.bias is None for _, m in named) or not chained:
            raise ValueError(
                "FusedKFAC needs build_mlp's model: >= 2 nn.Linear layers with biases, every "
                f"hidden layer {width} wide, got {[tuple(m.weight.shape) for _, m in named]}"
            )
        self.layers = [m for _, m in named]
        # Read several times a step: plain lists, not nn.Module.__getattr__ (~1 µs a read). The
        # parameters are updated in place, so the references stay valid.
        self._weights = [m.weight for m in self.layers]
        self._biases = [m.bias for m in self.layers]
        self.width = width
        self.momentum = config.momentum
        self.activation = config.activation
        self.mc = config.fisher == "mc"
        options = kfac_options(config)
        # Everything of the sweep's speed-ups that applies to this trial's options (no weight
        # gradients to skip here: there is no autograd).
        speedups = applicable(Speedups(cache, True, deferred_rotation=True), options, 0.0)
        self.param_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self.engine = KFACEngine(
            [LayerState(n, m) for n, m in named],
            [],
            options,
            build_damping(config.damping),
            speedups,
            self.param_state,
            grads_from_batches=True,
        )
        self.batches = [
            LayerCapture(n, m, input_requires_grad=j > 0) for j, (n, m) in enumerate(named)
        ]
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

    # --- forward and backward -----------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The minibatch's mean cross-entropy at the current (effective) parameters."""
        n, w, depth = x.shape[0], self.width, len(self.layers)
        h = self._h
        if h is None or h.shape[1] != n or h.dtype != x.dtype:
            h = self._h = x.new_empty(depth - 1, n, w + 1)
            h[:, :, w] = 1.0
            o = self._o = x.new_empty(depth - 1, n, w)
            # The per-layer views, made once per allocation rather than several times a step
            # (each view is a tensor operation of its own, a few µs at these sizes).
            self._hidden = [h[j, :, :w] for j in range(depth - 1)]
            self._hidden_ones = list(h.unbind(0))
            self._o_views = list(o.unbind(0))
        weights, biases = self._weights, self._biases
        s = torch.addmm(biases[0], x, weights[0].T)
        correct = self.engine.directions.forward_correction(0, x)
        if correct is not None:  # layer 1's update pending in A's eigenbasis
            s = correct(s)
        for j in range(1, depth):
            hidden = self._hidden[j - 1]
            self._activate(s, hidden)
            s = torch.addmm(biases[j], hidden, weights[j].T)
        self._x, self._y = x, y
        self._logits = s
        self._log_p = torch.log_softmax(s, dim=1)
        self._loss = F.nll_loss(self._log_p, y).item()
        return self._loss

    def _activate(self, s: torch.Tensor, out: torch.Tensor) -> None:
        if self.activation == "relu":
            torch.clamp_min(s, 0.0, out=out)  # ATen's relu is clamp_min(·, 0)
        elif self.activation == "tanh":
            torch.tanh(s, out=out)
        else:
            out.copy_(s)

    @torch.no_grad()
    def backward(self) -> None:
        """Every layer's output gradient O_j = ∂L/∂s_j (the mean loss's, as autograd gives)."""
        log_p, y = self._log_p, self._y
        assert log_p is not None and y is not None and self._o is not None
        grad = log_p.exp()
        grad.scatter_add_(1, y.unsqueeze(1), grad.new_full((len(y), 1), -1.0)).div_(len(y))
        self._o_last = grad
        self._back_propagate(grad, self._o_views)
        if self.mc and self.engine.factor_step:
            self._sampled_backward(log_p)

    def _back_propagate(self, grad: torch.Tensor, o: list[torch.Tensor]) -> None:
        """O_{j-1} = (O_j W_j) ⊙ act'(s_{j-1}) into ``o`` (L-1 tensors (B, w)), from O_L =
        ``grad``."""
        for j in range(len(self.layers) - 1, 0, -1):
            back = grad @ self._weights[j]  # ∂L/∂h_j: (B, w)
            out, hidden = o[j - 1], self._hidden[j - 1]
            if self.activation == "relu":  # autograd's own kernel: zero where the unit is off
                torch.ops.aten.threshold_backward.grad_input(back, hidden, 0.0, grad_input=out)
            elif self.activation == "tanh":
                torch.mul(back, 1.0 - hidden * hidden, out=out)
            else:
                out.copy_(back)
            grad = out

    def _sampled_backward(self, log_p: torch.Tensor) -> None:
        """The MC Fisher's per-example output gradients (sum reduction) for the factors."""
        assert self._logits is not None
        sampled = sample_targets(self._logits, "categorical")  # KFAC.sample_fisher's draw
        grad = log_p.exp()
        grad.scatter_add_(1, sampled.unsqueeze(1), grad.new_full((len(sampled), 1), -1.0))
        assert self._o is not None
        o = list(torch.empty_like(self._o).unbind(0))
        self._back_propagate(grad, o)
        for j, batch in enumerate(self.batches):
            batch.output_grads = grad if j == len(self.batches) - 1 else o[j]
            batch.grad_scale = 1.0  # reduction "sum": already per-example gradients

    def _inputs(self, j: int) -> torch.Tensor:
        """Layer j's input without the ones column: (B, in)."""
        assert self._x is not None
        return self._x if j == 0 else self._hidden[j - 1]

    def _output_grads(self, j: int) -> torch.Tensor:
        assert self._o_last is not None
        return self._o_last if j == len(self.layers) - 1 else self._o_views[j]

    def write_grads(self) -> None:
        """``.grad`` of every weight and bias from this step's batch (what backward would
        leave), for observers such as the gradient histograms; ``clear_grads`` removes them."""
        with torch.no_grad():
            for j, layer in enumerate(self.layers):
                out_grads = self._output_grads(j)
                layer.weight.grad = out_grads.T @ self._inputs(j)
                assert layer.bias is not None
                layer.bias.grad = out_grads.sum(0)

    def clear_grads(self) -> None:
        for layer in self.layers:
            layer.weight.grad = None
            assert layer.bias is not None
            layer.bias.grad = None

    # --- the K-FAC step -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for j, batch in enumerate(self.batches):
            batch.inputs = self._inputs(j)
            if j > 0:
                batch.inputs_with_ones = self._hidden_ones[j - 1]  # h̄_{j-1} = [h_{j-1} | 1]
            loss_grads = self._output_grads(j)
            if self.mc:  # output_grads hold the sampled ones (on factor steps)
                batch.loss_grads = loss_grads
            else:
                batch.output_grads = loss_grads
        closure = self._loss_after if self.engine.damping.needs_loss_after_step else None
        self.engine.step(self.batches, lr, self.momentum, 0.0, self._loss, closure)
        for batch in self.batches:
            batch.clear()

    def _loss_after(self) -> float:
        """The same minibatch's loss at the updated parameters (Levenberg–Marquardt)."""
        self.materialize()
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

    # --- read-outs and state --------------------------------------------------------------------

    def damping(self) -> float:
        """λ this step uses (the strategy's global value)."""
        return self.engine.damping.value()

    def materialize(self) -> None:
        """Fold pending rotated updates into the weights (before evaluation)."""
        self.engine.directions.materialize()

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        return self.engine.diagnostics()

    @property
    def counters(self) -> dict[str, float]:
        return self.engine.all_counters()

    def state_dict(self) -> dict[str, Any]:
        """The engine's state and the momentum buffers (by layer): with the model's parameters,
        all a trial needs to resume bit for bit."""
        engine = self.engine.state_dict()  # folds pending rotations in first
        momentum = [self.param_state[m.weight].get("momentum_buffer") for m in self.layers]
        return {"engine": engine, "momentum": [None if b is None else b.clone() for b in momentum]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])
        self.param_state.clear()
        for layer, buffer in zip(self.layers, state["momentum"], strict=True):
            if buffer is not None:
                self.param_state[layer.weight]["momentum_buffer"] = buffer.clone()
