"""The K-FAC step of a sweep trial, fused for the study's MLP: ``run_trial``'s fast path.

``KFAC`` serves any model through hooks, autograd and per-layer Python. A sweep trial always has
the same shape: ``build_mlp``'s stack of nn.Linear layers, cross-entropy, the empirical Fisher,
exact damping with a constant λ, factors every step. For that case this class runs forward,
backward and the K-FAC step by hand on stacked tensors — the hidden layers' activations, output
gradients, factors, gradient blocks and momentum each live in one (k, ·, ·) tensor and move in
one batched operation — with no autograd graph, no hooks and no per-layer bookkeeping.

The mathematics is ``KFAC``'s with ``run_trial``'s settings, step for step (the general class is
its oracle: tests/test_fused.py runs whole trials both ways in float64):

* forward s_j = h_{j-1} W_jᵀ + b_j, h_j = act(s_j); loss = mean cross-entropy;
* backward O_L = (softmax − onehot)/B, O_{j-1} = (O_j W_j) ⊙ act'(s_{j-1});
* factors A_j = β A_j + (1−β) h̄ᵀh̄/B (h̄ = [h | 1]; the first update sets it) and
  G_j = β G_j + (1−β) (B·O_j)ᵀ(B·O_j)/B; layer 1's A comes from the process's input stream
  (``InputFactorStreams``: shared with every trial on the same batches);
* every ``inverse_every`` steps the eigendecompositions (``eigen_of_factor``, with its fallbacks);
* d_j = (G_j⊗A_j + λI)⁻¹[∇W_j | ∇b_j] with ∇ = O_jᵀh̄_{j-1}; layer 1's stays in A's eigenbasis
  between inversions (``DeferredLayers``, the same object KFAC uses);
* heavy ball v ← μv + d, θ ← θ − ηv.

Results therefore equal a ``KFAC`` trial's up to float rounding (different but equivalent orders
of the same products), not bitwise; a trial is still bitwise reproducible run to run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.diagnostics import layer_diagnostics
from kfaclab.curvature.eigen import eigen_of_factor
from kfaclab.curvature.exact import ExactInverse
from kfaclab.curvature.stacked import StackedExactInverse
from kfaclab.damping import build_damping
from kfaclab.damping.constant import Constant
from kfaclab.errors import UsageError
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.deferred import DeferredLayers
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.stream_follower import InputFactorStreams
from kfaclab.trial_types import TrialConfig

ACTIVATIONS = ("relu", "tanh", "identity")


def fusable(config: TrialConfig) -> bool:
    """Whether ``FusedKFAC`` computes what ``KFAC`` would for this trial (else: general path)."""
    if config.optimizer != "kfac" or config.activation not in ACTIVATIONS or config.depth < 2:
        return False
    if config.damping_form != "exact" or config.fisher != "empirical" or config.kl_clip:
        return False
    if config.factor_every != 1:
        return False
    try:
        return isinstance(build_damping(config.damping), Constant)
    except UsageError:
        return False


class FusedKFAC:
    """Forward, backward and K-FAC step of one trial of ``build_mlp``'s model (see module doc).

    Per step (``kfaclab.train.steps.TrialSteps``): ``loss = forward(x, y)`` (a float),
    ``backward()``, optionally ``write_grads()`` (fills ``.grad`` for observers;
    ``clear_grads()`` after), ``step(lr)``.
    The model's parameters are updated in place; ``materialize()`` before reading them outside
    ``forward`` (layer 1's update is pending in A's eigenbasis, as in ``KFAC``).
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
        self.names = [n for n, _ in named]
        self.layers = [m for _, m in named]
        self.width = self.layers[0].out_features
        self.lam = build_damping(config.damping).value()
        self.momentum = config.momentum
        self.decay = config.factor_decay
        self.inverse_every = config.inverse_every
        self.activation = config.activation
        first = self.layers[0]
        self.first = LayerState(self.names[0], first)
        self.first_state: dict[str, Any] = {}  # layer 1's momentum_buffer, as KFAC keeps it
        self.first_batch = LayerCapture(self.names[0], first, input_requires_grad=False)
        self.streams = InputFactorStreams(cache, self.decay)
        self.deferred = DeferredLayers()
        self.fallbacks = FallbackCounter()
        self.inverses: list[ExactInverse | None] = [None] * len(self.layers)
        self.stack: StackedExactInverse | None = None  # the middle layers' inverses, if dense
        # Running factors: A of layers 2…L (inputs h̄_1…h̄_{L-1}), G of layers 1…L-1, G of L.
        self.factor_a: torch.Tensor | None = None  # (L-1, w+1, w+1)
        self.factor_g: torch.Tensor | None = None  # (L-1, w, w)
        self.factor_g_last: torch.Tensor | None = None  # (out, out)
        self.velocity: torch.Tensor | None = None  # middle layers' v: (L-2, w, w+1)
        self.velocity_last: torch.Tensor | None = None  # (out, w+1)
        self.steps = 0
        self.inversions = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._h: torch.Tensor | None = None  # h̄_1…h̄_{L-1}: (L-1, B, w+1), last column ones
        self._o: torch.Tensor | None = None  # O_1…O_{L-1}: (L-1, B, w)
        self._o_last: torch.Tensor | None = None  # O_L: (B, out)
        self._log_p: torch.Tensor | None = None

    # --- forward and backward -----------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The minibatch's mean cross-entropy at the current (effective) parameters."""
        n, w, depth = x.shape[0], self.width, len(self.layers)
        h = self._h
        if h is None or h.shape[1] != n or h.dtype != x.dtype:
            h = self._h = x.new_empty(depth - 1, n, w + 1)
            h[:, :, w] = 1.0
            self._o = x.new_empty(depth - 1, n, w)
        first = self.layers[0]
        s = torch.addmm(first.bias, x, first.weight.T)
        pending = self.deferred.pending.get(self.names[0])
        if pending is not None:  # what KFAC's forward hook subtracts: X̄ Q_A Cᵀ Q_Gᵀ
            projected = self.streams.next_batch_projection(self.first, x, pending.basis.a)
            s = s - pending.correction(projected)
        for j in range(1, depth):
            self._activate(s, h[j - 1, :, :w])
            layer = self.layers[j]
            s = torch.addmm(layer.bias, h[j - 1, :, :w], layer.weight.T)
        self._x, self._y = x, y
        self._log_p = torch.log_softmax(s, dim=1)
        return F.nll_loss(self._log_p, y).item()

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
        h, o, log_p, y = self._h, self._o, self._log_p, self._y
        assert h is not None and o is not None and log_p is not None and y is not None
        n, w = y.shape[0], self.width
        grad = log_p.exp()
        grad.scatter_add_(1, y.unsqueeze(1), grad.new_full((n, 1), -1.0)).div_(n)
        self._o_last = grad
        for j in range(len(self.layers) - 1, 0, -1):
            back = grad @ self.layers[j].weight  # ∂L/∂h_j: (B, w)
            out = o[j - 1]
            hidden = h[j - 1, :, :w]
            if self.activation == "relu":  # autograd's own kernel: zero where the unit is off
                torch.ops.aten.threshold_backward.grad_input(back, hidden, 0.0, grad_input=out)
            elif self.activation == "tanh":
                torch.mul(back, 1.0 - hidden * hidden, out=out)
            else:
                out.copy_(back)
            grad = out

    def _inputs(self, j: int) -> torch.Tensor:
        """Layer j's input without the ones column: (B, in)."""
        assert self._x is not None and self._h is not None
        return self._x if j == 0 else self._h[j - 1, :, : self.width]

    def _output_grads(self, j: int) -> torch.Tensor:
        assert self._o is not None and self._o_last is not None
        return self._o_last if j == len(self.layers) - 1 else self._o[j]

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
        h, o, x, o_last = self._h, self._o, self._x, self._o_last
        assert h is not None and o is not None and x is not None and o_last is not None
        t = self.steps
        self._update_factors(x, h, o, o_last)
        if t % self.inverse_every == 0 or any(inv is None for inv in self.inverses):
            self._invert()
        first = self._first_direction(x, o[0])
        self._step_rest(h, o, o_last, lr)
        if first is not None:
            rotated, inactive, inverse = first
            self.deferred.apply(
                self.first, inverse, rotated, inactive, lr, self.momentum, self.first_state
            )
            if (t + 1) % self.inverse_every == 0:  # the next step inverts: fold in before it
                self.deferred.materialize(self.first, self.first_state)
        else:
            self._step_first_standard(lr)
        self.first_batch.clear()
        self.steps += 1

    def _update_factors(
        self, x: torch.Tensor, h: torch.Tensor, o: torch.Tensor, o_last: torch.Tensor
    ) -> None:
        n, decay = x.shape[0], self.decay
        self.streams.update(self.first, x)
        h_t, o_t = h.transpose(1, 2), o.transpose(1, 2)
        if self.factor_a is None or self.factor_g is None or self.factor_g_last is None:
            # The first update sets the factors to the batch statistics (no identity prior).
            self.factor_a = torch.bmm(h_t, h).mul_(1.0 / n)
            self.factor_g = torch.bmm(o_t, o).mul_(float(n))  # gᵢ = B·Oᵢ: (B²/B) OᵀO
            self.factor_g_last = (o_last.T @ o_last).mul_(float(n))
            return
        self.factor_a.mul_(decay).baddbmm_(h_t, h, alpha=(1.0 - decay) / n)
        self.factor_g.mul_(decay).baddbmm_(o_t, o, alpha=(1.0 - decay) * n)
        self.factor_g_last.mul_(decay).addmm_(o_last.T, o_last, alpha=(1.0 - decay) * n)

    def _invert(self) -> None:
        """New eigenbases for every layer; a layer whose decomposition fails keeps its old one."""
        assert self.factor_a is not None and self.factor_g is not None
        assert self.factor_g_last is not None
        self.deferred.materialize(self.first, self.first_state)  # its basis is about to change
        self.streams.prepare_inversion(self.first)
        assert self.first.factor_a is not None
        depth, w, first_size = len(self.layers), self.width, self.first.factor_a.shape[0]
        for j in range(depth):
            if j == 0:  # A of the data: the stream's recorded decomposition, or computed
                eig_a, size_a = self.streams.eigen(self.first, self.fallbacks), first_size
            else:
                eig_a, size_a = eigen_of_factor(self.factor_a[j - 1], self.fallbacks), w + 1
            factor_g = self.factor_g_last if j == depth - 1 else self.factor_g[j]
            eig_g = eigen_of_factor(factor_g, self.fallbacks)
            if eig_a is not None and eig_g is not None:
                self.inverses[j] = ExactInverse.build(eig_a, eig_g, size_a, factor_g.shape[0])
        # The middle layers precondition as one stack when all are written out densely (as
        # ExactInverse.build does below 256 coordinates), else one by one.
        middle = [inv for inv in self.inverses[1:-1] if inv is not None]
        dense = all(inv.a.active is None and inv.g.active is None for inv in middle)
        complete = len(middle) == depth - 2 > 0
        self.stack = StackedExactInverse.stack(middle) if complete and dense else None
        self.inversions += 1

    def _first_direction(
        self, x: torch.Tensor, out_grads: torch.Tensor
    ) -> tuple[torch.Tensor, Any, ExactInverse] | None:
        """Layer 1's (rotated M, inactive part, basis) from the shared projection, or None when
        the stream has no projection for this step (then the standard form is used)."""
        inverse = self.inverses[0]
        if inverse is None or inverse.g.active is not None:
            return None
        projected = self.streams.projection(self.first, inverse.a)
        if projected is None:
            return None
        self.first_batch.inputs, self.first_batch.output_grads = x, out_grads
        rotated = inverse.damped(inverse.rotated_batch_gradient(out_grads, projected), self.lam)
        inactive = self.deferred.inactive_part(
            self.first, inverse, self.first_batch, self.lam, lambda: self._block(0)
        )
        return rotated, inactive, inverse

    def _block(self, j: int) -> torch.Tensor:
        """[∇W_j | ∇b_j] = O_jᵀ [h_{j-1} | 1]."""
        out_grads = self._output_grads(j)
        if j > 0:
            assert self._h is not None
            return out_grads.T @ self._h[j - 1]
        x = self._inputs(0)
        return out_grads.T @ torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    def _step_rest(self, h: torch.Tensor, o: torch.Tensor, o_last: torch.Tensor, lr: float) -> None:
        """Layers 2…L: preconditioned directions, heavy ball, parameter update."""
        lam, depth, w = self.lam, len(self.layers), self.width
        middle: torch.Tensor | None = None
        if depth > 2:
            blocks = torch.bmm(o[1:].transpose(1, 2), h[:-1])  # (L-2, w, w+1)
            if self.stack is not None:
                middle = self.stack.precondition(blocks, [lam] * (depth - 2))
            else:
                middle = torch.stack(
                    [self._precondition(j, blocks[j - 1]) for j in range(1, depth - 1)]
                )
        last = self._precondition(depth - 1, o_last.T @ h[-1])
        if self.velocity_last is None or self.momentum == 0.0:
            # v = d (the first step sets it). Both directions are new tensors, owned here, so
            # later steps may update them in place.
            self.velocity, self.velocity_last = middle, last
        else:
            if middle is not None and self.velocity is not None:
                self.velocity.mul_(self.momentum).add_(middle)
            self.velocity_last.mul_(self.momentum).add_(last)
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for j in range(1, depth):
            if j == depth - 1:
                velocity = self.velocity_last
            else:
                assert self.velocity is not None
                velocity = self.velocity[j - 1]
            layer = self.layers[j]
            assert velocity is not None and layer.bias is not None
            targets += [layer.weight, layer.bias]
            sources += [velocity[:, :w], velocity[:, w]]
        torch._foreach_add_(targets, sources, alpha=-lr)

    def _precondition(self, j: int, block: torch.Tensor) -> torch.Tensor:
        inverse = self.inverses[j]
        if inverse is None:
            return block / self.lam  # no curvature yet
        return inverse.precondition(block, self.lam)

    def _step_first_standard(self, lr: float) -> None:
        """Layer 1 without the stream's projection: d = (G⊗A + λI)⁻¹∇ in standard coordinates."""
        self.deferred.materialize(self.first, self.first_state)
        direction = self._precondition(0, self._block(0))
        buffer = self.first_state.get("momentum_buffer")
        if self.momentum == 0.0:
            buffer = direction
        elif buffer is None:  # the first step sets v = d (a fresh tensor, owned from here)
            buffer = self.first_state["momentum_buffer"] = direction
        else:
            buffer.mul_(self.momentum).add_(direction)
        first = self.layers[0]
        assert first.bias is not None
        torch._foreach_add_([first.weight, first.bias], [buffer[:, :-1], buffer[:, -1]], alpha=-lr)

    # --- read-outs ------------------------------------------------------------------------------

    def damping(self) -> float:
        """λ, the same at every step (``fusable`` admits only a constant)."""
        return self.lam

    def materialize(self) -> None:
        """Fold layer 1's pending rotated update into its weights (before evaluation)."""
        self.deferred.materialize(self.first, self.first_state)

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        """``KFAC.diagnostics()``: per layer, from the decompositions in force."""
        out: dict[str, dict[str, Any]] = {}
        sizes_g = [layer.out_features for layer in self.layers]
        for j, (name, inverse) in enumerate(zip(self.names, self.inverses, strict=True)):
            if inverse is None:
                continue
            size_a = self.layers[j].in_features + 1
            eig_a, eig_g = inverse.a.full_values(size_a), inverse.g.full_values(sizes_g[j])
            out[name] = layer_diagnostics(eig_a, eig_g, self.lam)
        return out

    @property
    def counters(self) -> dict[str, float]:
        """The same keys as ``KFAC.counters``."""
        return {
            "kl_clip_binds": 0,
            "kl_clip_last_factor": 1.0,
            "steps_without_capture": 0,
            "factor_updates": self.steps,
            "inversions": self.inversions,
            **self.fallbacks.as_dict(),
        }
