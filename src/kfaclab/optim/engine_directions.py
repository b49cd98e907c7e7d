"""The engine's step side: gradient blocks, preconditioned directions and the heavy ball.

Shapes: a preconditioned layer's gradient block is (out, in[+1]) = [∇W | ∇b]. Directions are
d = (G⊗A + λI)⁻¹∇ (exact, in the eigenbases; several equally shaped layers as one stack) or the
factored form's (G + √λ/π I)⁻¹∇(A + π√λ I)⁻¹; parameters outside the preconditioned layers get
d = ∇. Momentum is heavy-ball on the direction: v ← μv + d, θ ← θ − ηv.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch

from kfaclab.curvature.eigen import diagonal_eigen
from kfaclab.curvature.exact import DenominatorMemo, ExactInverse
from kfaclab.curvature.factored import FactoredInverse
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.deferred import DeferredLayers, DeferredStep, batch_weight_grad
from kfaclab.optim.engine_factors import FactorSide
from kfaclab.optim.factors import (
    AliasMemo,
    TransposeMemo,
    stack_of,
    stack_views,
    stacked_view,
)
from kfaclab.optim.layer_state import LayerState, SplitViews

Deferred = DeferredStep  # a deferred layer's step: rotated M, inactive d, rotated gradient R
ParamState = MutableMapping[torch.Tensor, dict[str, Any]]
# A stack's members (layer indices) and their directions as one (k, out, in+1) tensor.
StackedDirections = tuple[tuple[int, ...], torch.Tensor]


class DirectionSide:
    """Directions and parameter updates of the engine's layers (and its other parameters)."""

    def __init__(
        self,
        factors: FactorSide,
        other_params: list[torch.Tensor],
        param_state: ParamState,
        grads_from_batches: bool,
    ) -> None:
        self.factors = factors
        self.layers = factors.layers
        self.other_params = other_params
        self.param_state = param_state
        # True for a backend without autograd (the fused MLP): no ``.grad`` is ever written, the
        # gradient blocks come from the captured batch, Oᵀ[X | 1].
        self.grads_from_batches = grads_from_batches
        self.deferred = DeferredLayers()
        self.diagonal_fallbacks = 0
        # Per stack (by its members): where its rows and inputs were found (see AliasMemo).
        self._stack_memos: dict[tuple[int, ...], tuple[AliasMemo, AliasMemo, TransposeMemo]] = {}
        self._empty = torch.zeros(0)  # the placeholder of a layer without a direction (read-only)
        # Per stack (by its members): the stacked momentum buffer its members' buffers slice.
        self._momentum_memos: dict[tuple[int, ...], AliasMemo] = {}
        # Per layer: the weight and bias views of its momentum buffer.
        self._split = SplitViews()
        # Per layer: g aᵀ + λ of its exact inverse in force (constant between inversions).
        self._denominators = DenominatorMemo()

    def gradient_block(self, layer: LayerState, batch: LayerCapture) -> torch.Tensor | None:
        """[∇W | ∇b], from the captured batch when no ``.grad`` holds it."""
        weight_grad = layer.weight.grad
        if weight_grad is None and (self.grads_from_batches or layer.name in self.deferred.skipped):
            rows, inputs = _batch_rows(layer, batch)
            if inputs is None or rows is None:
                return None
            return batch_weight_grad(rows, inputs)
        return layer.gradient_block()

    def _stacked_batch_blocks(
        self, batches: list[LayerCapture]
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """A backend without ``.grad`` (``grads_from_batches``): the gradient blocks Oᵀ[X | 1] of
        each stack of equally shaped layers as one batched product (k, out, in+1), by the
        stack's members, without copies when the backend keeps those layers' rows in one block
        (the fused MLP)."""
        blocks: dict[tuple[int, ...], torch.Tensor] = {}
        for members, _ in self.factors.stacks:
            pairs = [_batch_rows(self.layers[i], batches[i]) for i in members]
            rows = [r for r, _ in pairs if r is not None]
            inputs = [x for _, x in pairs if x is not None]
            if len(rows) < len(members) or len(inputs) < len(members):
                continue
            key = tuple(members)
            memos = self._stack_memos.get(key)
            if memos is None:
                memos = self._stack_memos[key] = (
                    AliasMemo(stacked_view),
                    AliasMemo(stacked_view),
                    TransposeMemo(),
                )
            rows_view, inputs_view = memos[0](rows), memos[1](inputs)
            stacked_rows = torch.stack(rows) if rows_view is None else rows_view
            stacked_inputs = torch.stack(inputs) if inputs_view is None else inputs_view
            blocks[key] = torch.bmm(memos[2](stacked_rows), stacked_inputs)
        return blocks

    def directions(
        self,
        batches: list[LayerCapture],
        lambdas: list[float],
        weight_decay: float | Sequence[float],
        from_batch: bool,
        defer: bool,
        step: int | None = None,
    ) -> tuple[
        list[torch.Tensor], list[torch.Tensor], dict[int, Deferred], list[StackedDirections]
    ]:
        """Gradients and preconditioned directions: the layers (stacked where possible), then
        the other parameters (d = ∇). A layer without gradient gets empty tensors, and so does
        a deferred layer, whose (rotated M, inactive part) goes in the third result. The fourth
        holds each stack's directions as the one tensor they are views of (for ``apply``).
        ``weight_decay``: one coefficient, or one per layer and other parameter."""
        decays = _per_item(weight_decay, len(self.layers) + len(self.other_params))
        grads: list[torch.Tensor] = []
        directions: list[torch.Tensor] = []
        deferred: dict[int, Deferred] = {}
        stacked_directions: list[StackedDirections] = []
        stacked = {i for members, _ in self.factors.stacks for i in members}
        batch_stacks = self._stacked_batch_blocks(batches) if self.grads_from_batches else {}
        known = {
            i: block
            for members, blocks in batch_stacks.items()
            for i, block in zip(members, blocks.unbind(0), strict=True)
        }
        empty = self._empty
        for i, (layer, batch, lam) in enumerate(zip(self.layers, batches, lambdas, strict=True)):
            layer.damping = lam
            if defer:  # without weight decay: the block is the batch's gradient
                split = self._deferred_direction(layer, batch, lam, from_batch, step)
                if split is not None:
                    deferred[i] = split
                    grads.append(empty)  # read only by KL clipping and model reduction
                    directions.append(empty)
                    continue
            block = known.get(i)
            if block is None:
                block = self.gradient_block(layer, batch)
            if block is None:
                grads.append(empty)
                directions.append(empty)
                continue
            if decays[i]:  # before the block is recorded: stacks and KL clipping read grads
                block = block + decays[i] * layer.parameter_block()
            grads.append(block)
            if layer.name in self.deferred.pending:  # not deferred this step: standard form
                self.deferred.materialize(layer, self.param_state[layer.weight])
            if i in stacked:
                directions.append(block)  # replaced by the stacked product below
                continue
            directions.append(self.precondition(layer, block, lam, batch if from_batch else None))
        for members, stack in self.factors.stacks:
            blocks = [grads[i] for i in members]
            if any(b.numel() == 0 for b in blocks):  # a layer without gradient: one at a time
                for i in members:
                    if grads[i].numel():
                        directions[i] = self.precondition(self.layers[i], grads[i], lambdas[i])
                continue
            # The batch's own stacked product when the blocks are it (no weight decay added).
            whole = None if any(decays) else batch_stacks.get(tuple(members))
            block_stack = stack_views(blocks) if whole is None else whole
            result = stack.precondition(block_stack, [lambdas[i] for i in members])
            for i, direction in zip(members, result.unbind(0), strict=True):
                directions[i] = direction
            stacked_directions.append((tuple(members), result))
        for j, p in enumerate(self.other_params):
            g = torch.zeros_like(p) if p.grad is None else p.grad
            decay = decays[len(self.layers) + j]
            if decay:
                g = g + decay * p
            grads.append(g)
            directions.append(g)
        return grads, directions, deferred, stacked_directions

    def _deferred_direction(
        self,
        layer: LayerState,
        batch: LayerCapture,
        lam: float,
        from_stream: bool,
        step: int | None = None,
    ) -> Deferred | None:
        """(M, d outside the active block) if this layer's step can stay rotated, else None.
        ``from_stream``: this step's batch is the stream's update (its projection may be the
        stream's); a backend with ``grads_from_batches`` otherwise takes the stream's record of
        batch ``step + 1`` or projects the batch itself."""
        inverse = layer.inverse
        if not layer.input_is_data or not layer.is_linear:
            return None  # only a data-input Linear follows a stream's shared projections
        if not isinstance(inverse, ExactInverse):
            return None
        if inverse.g.active is not None:
            return None
        rows = batch.loss_rows()
        if batch.inputs is None or rows is None:
            return None
        weightless = self.grads_from_batches or layer.name in self.deferred.skipped
        if layer.weight.grad is None and not weightless:
            return None  # no gradient this step: the layer is left alone
        streams = self.factors.streams
        projected = streams.projection(layer, inverse.a) if from_stream else None
        if projected is not None and self.grads_from_batches and step is not None:
            streams.note_update_batch(layer, step)
        if projected is None:
            if not self.grads_from_batches:
                return None  # hooks defer on the stream's projections only
            projected = streams.batch_projection(layer, batch.inputs, inverse.a, step)
        rotated_grad = inverse.rotated_batch_gradient(rows, projected)
        rotated = inverse.damped(rotated_grad, lam, self._denominators(layer.name, inverse, lam))

        def block() -> torch.Tensor:
            full = self.gradient_block(layer, batch)
            assert full is not None
            return full

        inactive = self.deferred.inactive_part(layer, inverse, batch, lam, block)
        return DeferredStep(rotated, inactive, rotated_grad, lam)

    def precondition(
        self, layer: LayerState, block: torch.Tensor, lam: float, batch: LayerCapture | None = None
    ) -> torch.Tensor:
        """d for one layer; ``batch``: this step's capture when block is its batch gradient."""
        inverse = layer.inverse
        if layer.plain:
            return block  # no capture ever reached it: the plain gradient, and it is named
        if inverse is None:
            if layer.factor_a is None or layer.factor_g is None:
                # Nothing captured yet. (F̂ + λI)⁻¹∇ with F̂ = 0 would be ∇/λ, a step 1/λ times
                # the gradient's; the plain gradient is what every other uncaptured parameter gets.
                return block
            # The first factorisation failed: the diagonal of G⊗A, exactly damped, until a later
            # inversion succeeds (counted).
            self.diagonal_fallbacks += 1
            diagonal = ExactInverse(diagonal_eigen(layer.factor_a), diagonal_eigen(layer.factor_g))
            return diagonal.precondition(block, lam)
        if isinstance(inverse, ExactInverse):
            denominator = self._denominators(layer.name, inverse, lam)
            rows = None if batch is None else batch.loss_rows()
            if (
                layer.is_linear
                and batch is not None
                and batch.inputs is not None
                and rows is not None
            ):
                projected = self.factors.streams.projection(layer, inverse.a)
                if projected is not None:
                    return inverse.precondition_from_batch(block, lam, rows, projected, denominator)
            return inverse.precondition(block, lam, denominator)
        assert isinstance(inverse, FactoredInverse)
        return inverse.precondition(block)

    def apply(
        self,
        directions: list[torch.Tensor],
        lr: float,
        momentum: float,
        want_steps: bool,
        stacked: Sequence[StackedDirections] = (),
    ) -> list[torch.Tensor]:
        """Heavy-ball momentum and the parameter update, as a few multi-tensor (foreach)
        operations; returns the steps δ = −η v aligned with ``directions`` if ``want_steps``
        (empty tensors where a layer had no gradient), else an empty list. ``stacked``: the
        stacks' directions from ``directions()``, whose momentum then runs on one stacked
        buffer (two operations per stack instead of two per layer; the same arithmetic)."""
        n_layers = len(self.layers)
        positions = [i for i, d in enumerate(directions) if d.numel()]
        keys = [
            self.layers[i].weight if i < n_layers else self.other_params[i - n_layers]
            for i in positions
        ]
        velocities = [directions[i] for i in positions]
        if momentum != 0.0:
            on_stack = self._stacked_momentum(stacked, momentum)
            running, incoming = [], []
            for j, (key, direction) in enumerate(zip(keys, velocities, strict=True)):
                state = self.param_state[key]
                if positions[j] in on_stack:
                    velocities[j] = state["momentum_buffer"]
                    continue
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
                targets.append(self.other_params[i - n_layers])
                sources.append(velocity)
                continue
            layer = self.layers[i]
            weight_part, bias_part = self._split(i, layer, velocity)
            targets.append(layer.weight)
            sources.append(weight_part)
            if bias_part is not None and layer.bias is not None:
                targets.append(layer.bias)
                sources.append(bias_part)
        if targets:
            torch._foreach_add_(targets, sources, alpha=-lr)
        if not want_steps:
            return []
        steps = list(directions)
        for i, velocity in zip(positions, velocities, strict=True):
            steps[i] = velocity * (-lr)
        return steps

    def _stacked_momentum(self, stacked: Sequence[StackedDirections], momentum: float) -> set[int]:
        """v ← μv + d for each stack at once, on one (k, out, in+1) buffer whose slices are the
        members' ``momentum_buffer`` (the first step sets it to d; buffers that are not slices
        of one, e.g. after ``load_state_dict``, are stacked into one first, values unchanged).
        Returns the layer indices done."""
        done: set[int] = set()
        for members, result in stacked:
            states = [self.param_state[self.layers[i].weight] for i in members]
            buffers = [state.get("momentum_buffer") for state in states]
            present = [b for b in buffers if b is not None]
            if not present:  # the first step: v = d
                base, in_place = result.clone(), False
            elif len(present) < len(buffers):
                continue  # some members have no momentum yet: one layer at a time
            else:
                memo = self._momentum_memos.get(members)
                if memo is None:
                    memo = self._momentum_memos[members] = AliasMemo(stack_of)
                held = memo(present)
                in_place = held is not None
                base = held if held is not None else torch.stack(present)
                base.mul_(momentum).add_(result)
            if not in_place:
                for state, view in zip(states, base.unbind(0), strict=True):
                    state["momentum_buffer"] = view
            done.update(members)
        return done

    def apply_deferred(
        self,
        deferred: dict[int, Deferred],
        lr: float,
        momentum: float,
        fold_now: bool,
        skip_weight_grads: bool,
    ) -> None:
        """The deferred layers' steps, kept in A's eigenbasis (``fold_now``: the next step inverts,
        so fold them into the weights now)."""
        for i, (rotated, inactive, _, _) in deferred.items():
            layer = self.layers[i]
            assert isinstance(layer.inverse, ExactInverse)
            state = self.param_state[layer.weight]
            self.deferred.apply(layer, layer.inverse, rotated, inactive, lr, momentum, state)
            if fold_now:
                self.deferred.materialize(layer, state)
            if skip_weight_grads:
                self.deferred.skip_weight_grad(layer)

    def materialize(self) -> None:
        """Write pending rotated updates into the weights and momentum buffers."""
        for layer in self.layers:
            if layer.name in self.deferred.pending:
                self.deferred.materialize(layer, self.param_state[layer.weight])

    def forward_correction(
        self, index: int, inputs: torch.Tensor, step: int | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For a training batch's forward: what to subtract from layer ``index``'s output while
        its rotated update is pending (``deferred``), as a function of the output's shape; None
        when nothing is pending. ``inputs``: (N, in). ``step``: the training step this forward
        belongs to, from a backend whose every forward here is a training batch (the fused
        step), so that the stream's batch records may serve it."""
        layer = self.layers[index]
        pending = self.deferred.pending.get(layer.name)
        if pending is None:
            return None
        basis = pending.basis.a
        projected = self.factors.streams.next_batch_projection(layer, inputs, basis, step)
        correction = pending.correction(projected)

        def subtract(output: torch.Tensor) -> torch.Tensor:
            same = correction.shape == output.shape  # (N, out) already: no reshape op a step
            return output - (correction if same else correction.reshape(output.shape))

        return subtract


def _per_item(value: float | Sequence[float], n: int) -> Sequence[float]:
    return [value] * n if isinstance(value, int | float) else value


def _batch_rows(
    layer: LayerState, batch: LayerCapture
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(O, [X | 1]) of the captured batch for the gradient block Oᵀ[X | 1] (X alone without
    a bias); O is the training loss's ∂L/∂s."""
    rows = batch.loss_rows()
    inputs = batch.inputs
    if inputs is None or not layer.has_bias:
        return rows, inputs
    if batch.inputs_with_ones is not None:
        return rows, batch.inputs_with_ones
    return rows, torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], 1)
