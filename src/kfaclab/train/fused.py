"""The fused K-FAC trial: ``FusedMLP``'s forward and backward, K-FAC by the engine.

``KFAC`` captures layer inputs and output gradients through autograd hooks on any model. For a
sweep trial of ``build_mlp``'s model this class takes them from ``FusedMLP`` (``fused_mlp.py``:
forward and backward by hand, no autograd graph, no hooks) and hands them to the same
``KFACEngine`` that ``KFAC`` uses. Every damping strategy, damping form, Fisher type, KL clip,
factor schedule and implementation profile the engine has is therefore available here too, with
the same mathematics:

* layer 1's output minus its pending rotated update while one is pending
  (``engine.directions.forward_correction``);
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
from torch import nn

from kfaclab.damping import build_damping
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.engine import KFACEngine
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.mc_fisher import sample_targets
from kfaclab.optim.options import Speedups, applicable
from kfaclab.train.build import kfac_options
from kfaclab.train.fused_mlp import FusedMLP, chain_shaped
from kfaclab.trial_types import TrialConfig


def fusable(config: TrialConfig) -> bool:
    """Whether the trial's model is a chain ``FusedKFAC`` computes by hand (else: hooks)."""
    return config.optimizer == "kfac" and chain_shaped(config)


class FusedKFAC(FusedMLP):
    """Forward, backward and K-FAC step of one trial of ``build_mlp``'s model (see module doc).

    Per step (``kfaclab.train.steps.TrialSteps``): ``loss = forward(x, y)`` (a float),
    ``backward()``, optionally ``write_grads()`` (fills ``.grad`` for observers;
    ``clear_grads()`` after), ``step(lr)``. The model's parameters are updated in place;
    ``materialize()`` before reading them outside ``forward``.
    """

    def __init__(self, model: nn.Sequential, config: TrialConfig, cache: InputStreamCache) -> None:
        super().__init__(model, config)
        named = self.named
        self.momentum = config.momentum
        self.mc = config.fisher == "mc"
        options = kfac_options(config)
        # Everything of the sweep's speed-ups that applies to this trial's options (no weight
        # gradients to skip here: there is no autograd).
        speedups = applicable(
            Speedups(cache, True, deferred_rotation=True), options, 0.0, grads_from_batches=True
        )
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

    def _first_layer(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        correct = self.engine.directions.forward_correction(0, x, self.engine.step_count)
        return s if correct is None else correct(s)  # layer 1's update pending in A's eigenbasis

    @torch.no_grad()
    def backward(self) -> None:
        super().backward()
        if self.mc and self.engine.factor_step:
            assert self._log_p is not None
            self._sampled_backward(self._log_p)

    def _sampled_backward(self, log_p: torch.Tensor) -> None:
        """The MC Fisher's per-example output gradients (sum reduction) for the factors."""
        assert self._logits is not None
        sampled = sample_targets(self._logits, "categorical")  # KFAC.sample_fisher's draw
        grad = log_p.exp()
        grad.scatter_add_(1, sampled.unsqueeze(1), self._minus_ones(grad))
        assert self._o is not None
        o = list(torch.empty_like(self._o).unbind(0))
        self._back_propagate(grad, o)
        for j, batch in enumerate(self.batches):
            batch.output_grads = grad if j == len(self.batches) - 1 else o[j]
            batch.grad_scale = 1.0  # reduction "sum": already per-example gradients

    # --- the K-FAC step -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for j, batch in enumerate(self.batches):
            batch.inputs = self.inputs(j)
            if j > 0:
                batch.inputs_with_ones = self._hidden_ones[j - 1]  # h̄_{j-1} = [h_{j-1} | 1]
            loss_grads = self.output_grads(j)
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
        return self.minibatch_loss_now()

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
