"""Deferred input-side rotation of a data-input layer (opt-in for KFAC, see ``Speedups``).

KFAC defers a layer that follows an input stream, on the stream's shared projections. The fused
MLP step (``grads_from_batches``) defers on every step and uses its own batch's projection where
the stream has none (``InputFactorStreams.batch_projection``).

For layer 1 of the reference MLP the most expensive product of an exact K-FAC step is rotating
the direction back out of A's eigenbasis: d = Q_G M Q_Aᵀ with M = (Q_Gᵀ∇Q_A) ⊘ (g aᵀ + λ), an
out×k×k product (100·697² multiply-adds, ~40% of the step). Between two inversions Q_A and Q_G do
not change, so the update can stay rotated: with C the sum of the rotated steps since the last
inversion, the effective weight on A's active coordinates is

    W = W' − Q_G C Q_Aᵀ

and the layer's output on a batch X̄ = [X | 1] is X̄W'ᵀ − (X̄_active Q_A) Cᵀ Q_Gᵀ, where
P = X̄_active Q_A is the batch projection the input stream already shares. A forward hook
applies that correction (128·697·100 multiply-adds instead of 100·697²); ``materialize`` folds
C (and the rotated momentum) back into the weights and the momentum buffer in standard
coordinates — at every inversion, before ``state_dict``, and before any forward that is not a
training batch of the stream.

Momentum stays split the same way: v = v' + Q_G V Q_Aᵀ, V ← μV + M (rotated part) and
v' ← μv' + d_inactive (the coordinates outside the active block, in standard coordinates), and
the weight update is W' ← W' − ηv', C ← C + ηV. The arithmetic is K-FAC's; only the order of the
products differs, so results agree with the standard path up to rounding.

``module.weight`` of a deferred layer holds W', not W, until ``materialize``: a loop that
reads weights other than through the model's forward must call it first (``run_trial`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from kfaclab.curvature.exact import ExactInverse
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.layer_state import LayerState, SplitViews


@dataclass
class DeferredRotation:
    """Pending rotated update of one layer, relative to the inverse ``basis`` in force."""

    basis: ExactInverse
    weight: torch.Tensor  # C: (out, k), sum of η·V over the window's steps
    velocity: torch.Tensor  # V: (out, k), the rotated part of the momentum buffer
    # Cᵀ and Q_Gᵀ as views made once: C changes in place only, Q_G not at all until the next
    # basis (which makes a new rotation), so the forward's correction needs no view op per step.
    weight_t: torch.Tensor = field(init=False)
    g_vectors_t: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.weight_t = self.weight.T
        self.g_vectors_t = self.basis.g.vectors.T

    def correction(self, projected: torch.Tensor) -> torch.Tensor:
        """(X̄_active Q_A) Cᵀ Q_Gᵀ: what the layer's output lacks while C is pending."""
        return torch.mm(torch.mm(projected, self.weight_t), self.g_vectors_t)


class InactivePart(NamedTuple):
    """d outside the active block (∇/λ there: no curvature): its column indices and values."""

    columns: torch.Tensor  # (m,) int64, ascending
    values: torch.Tensor  # (out, m)


class DeferredStep(NamedTuple):
    """One step of a deferred layer: M = R ⊘ (g aᵀ + λ) in the eigenbasis, the direction outside
    the active block, and R = Q_Gᵀ∇Q_A itself (for dᵀ∇, which a rotation leaves unchanged)."""

    rotated: torch.Tensor  # M: (out, k)
    inactive: InactivePart  # d on the inactive columns: ∇/λ there, times any scaling since
    rotated_grad: torch.Tensor  # R: (out, k)
    gradient_per_value: float  # ∇ = this · inactive.values on the inactive columns (λ at first)

    def inner_with_gradient(self) -> float:
        """dᵀ∇ of the whole step: ⟨M, R⟩ on the active block (⟨Q_G M Q_Aᵀ, ∇⟩ = ⟨M, Q_Gᵀ∇Q_A⟩)
        plus ⟨d, ∇⟩ on the inactive columns, ∇ being a multiple of d there."""
        values = self.inactive.values
        active = float((self.rotated * self.rotated_grad).sum())
        return active + self.gradient_per_value * float((values * values).sum())

    def scaled(self, factor: float) -> DeferredStep:
        """The step with its direction scaled by ``factor`` > 0 (a KL clip's ν); the gradient's
        parts stay what they were."""
        inactive = InactivePart(self.inactive.columns, self.inactive.values * factor)
        return DeferredStep(
            self.rotated * factor, inactive, self.rotated_grad, self.gradient_per_value / factor
        )


def batch_weight_grad(output_grads: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """∇W = Oᵀ X of one batch (O = ∂L/∂s, X the layer inputs): what backward would compute."""
    return output_grads.T @ inputs


class DeferredLayers:
    """The deferred layers of one optimizer: their pending rotations, updates and folding, and
    (``skip_weight_grads``) the layers whose weight gradient backward no longer computes."""

    def __init__(self) -> None:
        self.pending: dict[str, DeferredRotation] = {}
        # layer → (basis, its inactive input columns, whether the bias column is among them)
        self._inactive: dict[str, tuple[ExactInverse, torch.Tensor, bool]] = {}
        self.skipped: dict[str, LayerState] = {}  # weights switched to requires_grad=False
        self._split = SplitViews()  # per layer: the weight and bias views of its momentum buffer

    def inactive_part(
        self,
        layer: LayerState,
        basis: ExactInverse,
        batch: LayerCapture,
        damping: float,
        block: Callable[[], torch.Tensor],
    ) -> InactivePart:
        """The inactive columns of ``block()`` (the layer's [∇W | ∇b]) divided by λ. For a layer
        whose weight gradient was skipped they come from the batch, Oᵀ X[:, cols], without ever
        forming the whole gradient; the columns are found once per basis."""
        known = self._inactive.get(layer.name)
        if known is None or known[0] is not basis:
            n_in = layer.size_a - (1 if layer.has_bias else 0)
            n_cols = n_in + 1 if layer.has_bias else n_in
            columns = basis.a.inactive(n_cols)
            has_bias_column = layer.has_bias and bool((columns == n_in).any())
            known = (basis, columns, has_bias_column)
            self._inactive[layer.name] = known
        _, columns, has_bias_column = known
        # The training loss's rows (the MC Fisher keeps its sampled ones apart for the factors).
        inputs, rows = batch.inputs, batch.loss_rows()
        if layer.weight.grad is None and not has_bias_column:
            assert inputs is not None and rows is not None
            grads = batch_weight_grad(rows, inputs.index_select(1, columns))
        else:
            grads = block().index_select(1, columns)
        return InactivePart(columns, grads.div_(damping))  # grads: a temporary of its own

    def skip_weight_grad(self, layer: LayerState) -> None:
        """Stop backward from computing this deferred layer's weight gradient (see KFAC's
        ``skip_weight_grads``): its steps need only the captured batch."""
        weight, bias = layer.weight, layer.bias
        # Without a trainable bias the output would no longer require grad: nothing captured.
        if layer.name in self.skipped or bias is None or not bias.requires_grad:
            return
        weight.requires_grad_(False)
        self.skipped[layer.name] = layer

    def restore_weight_grads(self, batches: dict[str, LayerCapture]) -> None:
        """Write the skipped layers' ``.grad`` from this step's captured batch."""
        for name, layer in self.skipped.items():
            batch = batches[name]
            if batch.inputs is not None and batch.output_grads is not None:
                layer.weight.grad = batch_weight_grad(batch.output_grads, batch.inputs)

    def unskip_all(self) -> None:
        for layer in self.skipped.values():
            layer.weight.requires_grad_(True)
        self.skipped.clear()

    def apply(
        self,
        layer: LayerState,
        basis: ExactInverse,
        rotated: torch.Tensor,
        inactive: InactivePart,
        lr: float,
        momentum: float,
        state: dict[str, Any],
    ) -> None:
        """One heavy-ball step with direction Q_G·rotated·Q_Aᵀ + inactive, kept split (the
        inactive part is added on its columns only: elsewhere it is zero).

        ``state`` is the optimizer's per-parameter state of the layer's weight (its
        ``momentum_buffer`` holds v', the standard-coordinate part of the momentum)."""
        pending = self.pending.get(layer.name)
        if pending is not None and pending.basis is not basis:
            self.materialize(layer, state)
            pending = None
        if pending is None:
            pending = DeferredRotation(basis, torch.zeros_like(rotated), torch.zeros_like(rotated))
            self.pending[layer.name] = pending
        if momentum != 0.0:
            buffer = state.get("momentum_buffer")
            if buffer is None:  # the first step sets v = d (here: its inactive part)
                pending.velocity.mul_(momentum)
                buffer = state["momentum_buffer"] = _dense(inactive, layer)
            else:  # μ on both parts of the momentum in one multi-tensor operation
                torch._foreach_mul_([pending.velocity, buffer], momentum)
                buffer.index_add_(1, inactive.columns, inactive.values)
            pending.velocity.add_(rotated)
        else:
            pending.velocity.copy_(rotated)
            buffer = _dense(inactive, layer)
        pending.weight.add_(pending.velocity, alpha=lr)
        weight_part, bias_part = self._split(layer.name, layer, buffer)
        if bias_part is not None and layer.bias is not None:  # W and b in one operation
            torch._foreach_add_([layer.weight, layer.bias], [weight_part, bias_part], alpha=-lr)
        else:
            layer.weight.add_(weight_part, alpha=-lr)

    def materialize(self, layer: LayerState, state: dict[str, Any]) -> None:
        """Fold the pending rotation into the weights (W = W' − Q_G C Q_Aᵀ) and the momentum
        buffer (v = v' + Q_G V Q_Aᵀ); afterwards the layer is in standard form."""
        pending = self.pending.pop(layer.name, None)
        if pending is None:
            return
        cols = pending.basis.a.active
        buffer = state.get("momentum_buffer")  # None without momentum: V is not carried over
        q_g, q_a = pending.basis.g.vectors, pending.basis.a.vectors
        rotated = [pending.weight] if buffer is None else [pending.weight, pending.velocity]
        # One (2·out)×k×k product for both C and V: Q_G[C; V] first, then ·Q_Aᵀ.
        both = torch.cat([q_g @ r for r in rotated]) @ q_a.T
        out = pending.weight.shape[0]
        weight_change, velocity = both[:out], both[out:]
        with torch.no_grad():
            block = layer.parameter_block()
            if cols is None:
                block.sub_(weight_change)
            else:
                block.index_add_(1, cols, weight_change, alpha=-1.0)
            layer.write_parameter_block(block)
        if buffer is not None:
            if cols is None:
                buffer.add_(velocity)
            else:
                buffer.index_add_(1, cols, velocity)

    def clear(self) -> None:
        self.pending.clear()
        self._inactive.clear()


def _dense(inactive: InactivePart, layer: LayerState) -> torch.Tensor:
    """The inactive part as a full (out, in[+1]) block, zero on the active columns."""
    weight = layer.weight
    n_cols = weight.shape[1] + (1 if layer.has_bias else 0)
    dense = weight.new_zeros(weight.shape[0], n_cols)
    return dense.index_copy_(1, inactive.columns, inactive.values)
