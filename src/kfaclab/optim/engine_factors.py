"""The engine's curvature side: running factors from captures, and their inversions.

``FactorSide`` owns every layer's running A and G, the input streams (layers whose input is the
data share their input factor with other optimizers, see ``stream_follower``), the spectra the
damping strategy reads, the eigenbases / inverses and the stacks of equally shaped layers. It is
written once for both capture backends (``kfaclab.optim.capture``'s hooks and
``kfaclab.train.fused``).
"""

from __future__ import annotations

import torch

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.eigen import eigen_of_factor, floored
from kfaclab.curvature.exact import ExactInverse
from kfaclab.curvature.factored import factored_inverse
from kfaclab.curvature.stacked import StackedExactInverse, stackable_groups
from kfaclab.damping.base import Damping, LayerSpectrum
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.factors import (
    MIN_COLUMNS,
    GroupMemo,
    update_input_factor,
    update_output_factor,
    update_stacked,
)
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.options import KFACOptions
from kfaclab.optim.stream_follower import InputFactorStreams

_Group = list[tuple[LayerState, torch.Tensor]]


class FactorSide:
    """Running factors, decompositions and spectra of the engine's layers."""

    def __init__(
        self, layers: list[LayerState], options: KFACOptions, cache: InputStreamCache | None
    ) -> None:
        self.layers = layers
        self.options = options
        # A stream is kept per factor start: identity-started factors share theirs with others
        # that start at the identity, first-batch ones with first-batch ones.
        self.streams = InputFactorStreams(
            cache, options.factor_decay, identity_start=options.factor_init == "identity"
        )
        self.fallbacks = FallbackCounter()
        self.spectra = [LayerSpectrum(layer.name, None) for layer in layers]
        self.spectrum_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Equally shaped dense layers preconditioned together; rebuilt after every inversion.
        self.stacks: list[tuple[list[int], StackedExactInverse]] = []
        # Per group of stacked factor updates (by side and key): where its stacks were found.
        self._group_memos: dict[tuple[object, ...], GroupMemo] = {}
        if options.factor_init == "identity":
            for layer in layers:
                layer.factor_a, layer.factor_g = layer.identity_factors()

    # --- running factors ------------------------------------------------------------------------

    def update(self, batches: list[LayerCapture]) -> bool:
        """Every layer's running A and G from this step's capture; True if any was captured.
        Layers with equally shaped running factors (a wide MLP's hidden layers) are updated
        together (``update_stacked``); data-input layers go through the input streams; with
        ``factor_init="batch"`` the first update sets the factor."""
        input_groups: dict[tuple[object, ...], _Group] = {}
        output_groups: dict[tuple[object, ...], _Group] = {}
        options, updated = self.options, False
        for layer, capture in zip(self.layers, batches, strict=True):
            inputs, output_grads = capture.inputs, capture.output_grads
            if inputs is None or output_grads is None:
                continue
            updated = True
            layer.input_is_data = layer.input_is_data and not capture.input_requires_grad
            scale = capture.grad_scale
            if scale is None:  # the training loss's ∂L/∂s rows: undo the loss's reduction
                scale = float(output_grads.shape[0]) if options.loss_reduction == "mean" else 1.0
            a, g = layer.factor_a, layer.factor_g
            if a is not None and not layer.input_is_data and inputs.shape[1] < MIN_COLUMNS:
                rows = inputs  # the bias's column of ones is appended, unless the backend has it
                if layer.has_bias and capture.inputs_with_ones is not None:
                    rows = capture.inputs_with_ones
                needs_ones = rows.shape[1] < a.shape[0]
                key = (a.shape, rows.shape, needs_ones, a.dtype, a.device)
                input_groups.setdefault(key, []).append((layer, rows))
            else:
                self.streams.update(layer, inputs)
            if g is not None:
                out_key = (g.shape, output_grads.shape, g.dtype, g.device, scale)
                output_groups.setdefault(out_key, []).append((layer, output_grads))
            else:
                layer.factor_g = update_output_factor(
                    None, output_grads, scale, options.factor_decay
                )
        for input_key, members in input_groups.items():
            updated_a = self._updated(members, True, input_key, with_ones=bool(input_key[2]))
            for (layer, _), factor in zip(members, updated_a, strict=True):
                layer.factor_a = factor
        for group_key, members in output_groups.items():
            group_scale = group_key[-1]
            assert isinstance(group_scale, float)
            updated_g = self._updated(members, False, group_key, group_scale)
            for (layer, _), factor in zip(members, updated_g, strict=True):
                layer.factor_g = factor
        return updated

    def _updated(
        self,
        members: _Group,
        input_side: bool,
        key: tuple[object, ...],
        scale: float = 1.0,
        with_ones: bool = False,
    ) -> list[torch.Tensor]:
        """The members' running A (``input_side``; ``with_ones``: append the bias's column of
        ones to the rows) or G after one update with rows ``scale · members[j][1]``: stacked
        when there are several."""
        decay = self.options.factor_decay
        runnings = [layer.factor_a if input_side else layer.factor_g for layer, _ in members]
        if len(members) == 1:
            rows = members[0][1]
            if input_side:
                return [update_input_factor(runnings[0], rows, with_ones, decay)]
            return [update_output_factor(runnings[0], rows, scale, decay)]
        present = [r for r in runnings if r is not None]
        assert len(present) == len(runnings)  # grouped only after their first update
        memo = self._group_memos.get((input_side, *key))
        if memo is None:
            memo = self._group_memos[(input_side, *key)] = GroupMemo()
        row_blocks = [rows for _, rows in members]
        return update_stacked(present, row_blocks, decay, with_ones, scale, memo)

    # --- inversions -----------------------------------------------------------------------------

    def invert(self, damping: Damping) -> bool:
        """New eigenbases (exact) or damped inverses (factored) for every layer with factors; a
        layer whose factorisation fails keeps its previous one (see ``curvature.decompose``).
        Returns whether any layer had factors to decompose."""
        self.spectrum_cache.clear()
        for layer in self.layers:
            self.streams.prepare_inversion(layer)
        self.spectra = self.measure_spectra()
        exact = self.options.damping_form == "exact"
        lambdas = None if exact else damping.layer_values(self.spectra)
        floor = self.options.eigen_floor
        decomposed = False
        for i, layer in enumerate(self.layers):
            if layer.factor_a is None or layer.factor_g is None or layer.plain:
                continue
            decomposed = True
            if exact:
                eig_a = self.streams.eigen(layer, self.fallbacks)
                eig_g = eigen_of_factor(layer.factor_g, self.fallbacks)
                if eig_a is not None and eig_g is not None:
                    layer.inverse = ExactInverse.build(
                        floored(eig_a, floor),
                        floored(eig_g, floor),
                        layer.factor_a.shape[0],
                        layer.factor_g.shape[0],
                    )
            else:
                assert lambdas is not None
                inverse = factored_inverse(
                    layer.factor_a, layer.factor_g, lambdas[i], self.fallbacks
                )
                if inverse is not None:
                    layer.inverse = inverse
        self.restack()
        return decomposed

    def restack(self) -> None:
        inverses = [None if layer.plain else layer.inverse for layer in self.layers]
        self.stacks = []
        for members in stackable_groups(inverses):
            exact = [inv for inv in (inverses[i] for i in members) if isinstance(inv, ExactInverse)]
            self.stacks.append((members, StackedExactInverse.stack(exact)))

    def measure_spectra(self) -> list[LayerSpectrum]:
        """Mean eigenvalue of each G⊗A, = (tr A / dim A)(tr G / dim G): no decomposition needed.

        Measured at every inversion and kept until the next one, so per-layer rules see the
        spectrum of the curvature that the preconditioner actually uses.
        """
        spectra = []
        for layer in self.layers:
            mean: float | None = None
            if layer.factor_a is not None and layer.factor_g is not None:
                mean_a = float(torch.diagonal(layer.factor_a).mean())
                mean_g = float(torch.diagonal(layer.factor_g).mean())
                mean = mean_a * mean_g
            spectra.append(LayerSpectrum(layer.name, mean))
        return spectra

    def eigenvalues(self, layer: LayerState) -> tuple[torch.Tensor, torch.Tensor]:
        """All eigenvalues of A and G (ascending) behind the layer's inverse in force.

        The factored form does not decompose; its eigenvalues are computed on first request after
        each inversion (one eigvalsh per factor) and cached.
        """
        inverse = layer.inverse
        if inverse is None:
            raise ValueError(f"layer {layer.name!r} has no decomposition yet: call step() first")
        if isinstance(inverse, ExactInverse):
            return (
                inverse.a.full_values(layer.size_a),
                inverse.g.full_values(layer.size_g),
            )
        cached = self.spectrum_cache.get(layer.name)
        if cached is None:
            self.streams.settle(layer)
            assert layer.factor_a is not None and layer.factor_g is not None
            cached = (
                torch.linalg.eigvalsh(layer.factor_a.to(torch.float64)).clamp_min(0),
                torch.linalg.eigvalsh(layer.factor_g.to(torch.float64)).clamp_min(0),
            )
            self.spectrum_cache[layer.name] = cached
        return cached
