"""One optimizer's side of ``input_stream``: its data-input layers' input factors, shared or not.

``KFAC`` routes every input-factor update and every read of ``factor_a`` through this class:
``update`` (skip or compute), ``settle`` (make ``factor_a`` exact before it is read),
``prepare_inversion`` / ``eigen`` (take the recorded snapshot and decomposition, or compute and
record them). Layers that cannot share — input not data, no cache, or after a mismatch — take
the plain path, which is the same code as without a cache.
"""

from __future__ import annotations

import torch

from kfaclab.curvature.decompose import FallbackCounter
from kfaclab.curvature.eigen import FactorEigen, eigen_of_factor
from kfaclab.optim.factors import update_input_factor
from kfaclab.optim.input_stream import InputStreamCache, StreamCursor, bitwise_equal, stream_key
from kfaclab.optim.layer_state import LayerState


def project(inputs: torch.Tensor, with_bias: bool, basis: FactorEigen) -> torch.Tensor:
    """P = X̄_active Q_A: the inputs [X | 1] on the basis's active coordinates, rotated."""
    if with_bias:
        inputs = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], dim=1)
    if basis.active is not None:
        inputs = inputs.index_select(1, basis.active)
    return inputs @ basis.vectors


def same_basis(recorded: FactorEigen | None, basis: FactorEigen) -> bool:
    """Whether ``basis`` projects as ``recorded`` does: the same eigenvector and active-coordinate
    tensors (a P depends on nothing else; an eigenvalue floor makes a new FactorEigen of the same
    vectors, ``curvature.eigen.floored``)."""
    return (
        recorded is not None
        and recorded.vectors is basis.vectors
        and recorded.active is basis.active
    )


def _unchanged(inputs: torch.Tensor, seen: torch.Tensor, version: int) -> bool:
    """Whether ``inputs`` is the tensor ``seen`` was, unwritten since: same storage, layout and
    version counter. The counter (shared by all views of a storage) moves with every in-place
    write, as autograd's saved-tensor checks rely on; holding ``seen`` keeps its memory from
    being reused by another tensor."""
    return (
        inputs.data_ptr() == seen.data_ptr()
        and inputs.shape == seen.shape
        and inputs.stride() == seen.stride()
        and inputs.dtype == seen.dtype
        and seen._version == version
    )


class InputFactorStreams:
    def __init__(
        self, cache: InputStreamCache | None, decay: float, *, identity_start: bool = False
    ) -> None:
        self.cache = cache
        self.decay = decay
        # Factors that start at I (factor_init="identity") join a stream of identity starts at
        # their first update, with A = I then; first-batch factors join while A is still None.
        self.identity_start = identity_start
        self._joinable = True  # False after a loaded state: its factors are not a stream's start
        self._cursors: dict[str, StreamCursor | None] = {}  # None: this layer no longer shares
        # layer → (update, inputs, version) the forward hook found equal to that update's record,
        # so the step's update need not compare the same unchanged tensor again.
        self._verified: dict[str, tuple[int, torch.Tensor, int]] = {}
        # layer → (inputs, version, basis, P): the projection the last training forward used,
        # for the step on the same batch (batch_projection) instead of projecting it again.
        self._forward: dict[str, tuple[torch.Tensor, int, FactorEigen, torch.Tensor]] = {}
        self.own_projections = 0  # batches this optimizer projected itself for a deferred step
        self._batches_off: set[str] = set()  # layers whose batches left the stream's

    def update(self, layer: LayerState, inputs: torch.Tensor) -> None:
        """Update ``layer``'s input factor with one batch of inputs (N, in)."""
        cursor = self._cursor(layer, inputs)
        if cursor is None:
            layer.factor_a = update_input_factor(layer.factor_a, inputs, layer.has_bias, self.decay)
            return
        stream, u = cursor.stream, cursor.updates + 1
        if cursor.synced and u <= stream.updates:
            if self._already_verified(layer.name, u, inputs) or stream.matches(u, inputs):
                cursor.updates = u
                assert self.cache is not None
                self.cache.followed_updates += 1
                return
            cursor.synced = False
        self.settle(layer, own=True)
        layer.factor_a = update_input_factor(layer.factor_a, inputs, layer.has_bias, self.decay)
        cursor.updates = cursor.exact_at = u
        if cursor.synced and u == stream.updates + 1 and self.cache is not None:
            cursor.synced = self.cache.record_inputs(stream, inputs)
        else:
            cursor.synced = False
        if not cursor.synced:
            self._cursors[layer.name] = None  # exact and owned: from now on the plain path

    def settle(self, layer: LayerState, own: bool = False) -> None:
        """Make ``layer.factor_a`` exact (replaying skipped updates); ``own``: also private."""
        cursor = self._cursors.get(layer.name)
        if cursor is None:
            return
        if cursor.pending:
            stream = cursor.stream
            start, snapshot = stream.last_snapshot(cursor.updates)
            factor = snapshot
            if start <= cursor.exact_at:
                start, factor = cursor.exact_at, layer.factor_a
            factor = None if factor is None else factor.clone()
            for v in range(start + 1, cursor.updates + 1):
                factor = update_input_factor(
                    factor, stream.inputs[v - 1], layer.has_bias, self.decay
                )
            layer.factor_a = factor
            cursor.exact_at, cursor.owned = cursor.updates, True
        elif own and not cursor.owned and layer.factor_a is not None:
            layer.factor_a = layer.factor_a.clone()
            cursor.owned = True

    def settle_all(self, layers: list[LayerState]) -> None:
        for layer in layers:
            self.settle(layer)

    def prepare_inversion(self, layer: LayerState) -> None:
        """Make ``factor_a`` exact for an inversion, from the record's snapshot when it has one."""
        cursor = self._cursors.get(layer.name)
        if cursor is None:
            return
        snapshot = cursor.stream.snapshots.get(cursor.updates) if cursor.synced else None
        if snapshot is None:
            self.settle(layer)
            return
        layer.factor_a = snapshot
        cursor.exact_at, cursor.owned = cursor.updates, False

    def eigen(self, layer: LayerState, counter: FallbackCounter) -> FactorEigen | None:
        """Decomposition of the (prepared) ``factor_a``: recorded, or computed and recorded."""
        assert layer.factor_a is not None
        cursor = self._cursors.get(layer.name)
        if cursor is None or not cursor.synced or self.cache is None:
            return eigen_of_factor(layer.factor_a, counter)
        stream = cursor.stream
        recorded = stream.eigens.get(cursor.updates)
        if recorded is not None:
            self.cache.shared_decompositions += 1
            cursor.eigen_at = cursor.updates
            return recorded
        eigen = eigen_of_factor(layer.factor_a, counter)
        if cursor.updates == stream.updates:
            self.cache.record_inversion(stream, layer.factor_a, eigen)
        recorded_now = eigen is not None and stream.eigens.get(cursor.updates) is eigen
        cursor.eigen_at = cursor.updates if recorded_now else None
        return eigen

    def projection(self, layer: LayerState, basis: FactorEigen) -> torch.Tensor | None:
        """P = X̄ Q_A for this step's inputs X̄ = [X | 1] on ``basis``'s active coordinates, or
        None unless this step's inputs are recorded and ``basis`` is a recorded decomposition.

        Computed by the first optimizer that asks and kept in the stream for the others; the
        same operation on the same values, so every optimizer gets bitwise the same P.
        """
        following = self._on_recorded_basis(layer)
        if following is None:
            return None
        cursor, eigen_at, cache = following
        stream = cursor.stream
        if not same_basis(stream.eigens.get(eigen_at), basis):
            return None
        if cursor.updates > stream.updates:
            return None
        stored = stream.projections.get(cursor.updates)
        if stored is not None and stored[0] == eigen_at:
            cache.shared_projections += 1
            return stored[1]
        projected = project(stream.inputs[cursor.updates - 1], layer.has_bias, basis)
        cache.record_projection(stream, cursor.updates, eigen_at, projected)
        return projected

    def next_batch_projection(
        self, layer: LayerState, inputs: torch.Tensor, basis: FactorEigen, step: int | None = None
    ) -> torch.Tensor:
        """P for a batch in the forward pass, before its update: the recorded one when the
        inputs are the stream's next update and were projected on ``basis``, or (``step``: the
        training step, 0-based, of a backend whose every forward is a training batch) the
        stream's batch ``step + 1``; else computed — bitwise the same either way."""
        self._verified.pop(layer.name, None)  # a new forward: the last one's check is stale
        cursor = self._cursors.get(layer.name)
        if cursor is not None and cursor.synced and cursor.eigen_at is not None:
            stream, update = cursor.stream, cursor.updates + 1
            stored = stream.projections.get(update)
            if (
                stored is not None
                and stored[0] == cursor.eigen_at
                and same_basis(stream.eigens.get(cursor.eigen_at), basis)
                and stream.matches(update, inputs)
            ):
                self._verified[layer.name] = (update, inputs, inputs._version)
                self._forward.pop(layer.name, None)
                return stored[1]
        projected = self._shared_batch(layer, inputs, basis, step)
        if projected is None:
            projected = project(inputs, layer.has_bias, basis)
        self._forward[layer.name] = (inputs, inputs._version, basis, projected)
        return projected

    def batch_projection(
        self, layer: LayerState, inputs: torch.Tensor, basis: FactorEigen, step: int | None = None
    ) -> torch.Tensor:
        """P for this step's batch where the stream has no update of it: the one the training
        forward computed for these very inputs (same storage, layout and version) on ``basis``,
        else the stream's batch ``step + 1`` (``_shared_batch``), else projected now (counted in
        ``own_projections``) — bitwise the same every way."""
        entry = self._forward.pop(layer.name, None)
        if entry is not None:
            seen, version, seen_basis, projected = entry
            if same_basis(seen_basis, basis) and _unchanged(inputs, seen, version):
                return projected
        shared = self._shared_batch(layer, inputs, basis, step)
        if shared is not None:
            return shared
        self.own_projections += 1
        return project(inputs, layer.has_bias, basis)

    def _shared_batch(
        self, layer: LayerState, inputs: torch.Tensor, basis: FactorEigen, step: int | None
    ) -> torch.Tensor | None:
        """Batch ``step + 1`` of the stream this layer follows: its recorded projection when the
        inputs are bitwise the recorded batch and its projection is on ``basis``, the recorded
        decomposition in force; at the stream's end, projected here and recorded for the
        others. None otherwise (the caller projects); a batch that differs ends the batch
        sharing of this layer."""
        following = self._on_recorded_basis(layer)
        if step is None or following is None or layer.name in self._batches_off:
            return None
        cursor, eigen_at, cache = following
        stream = cursor.stream
        if not same_basis(stream.eigens.get(eigen_at), basis):
            return None
        b = step + 1
        if b == len(stream.batches) + 1:  # this optimizer is the stream's front
            projected = project(inputs, layer.has_bias, basis)
            cache.record_batch(stream, inputs, eigen_at, projected)
            return projected
        if b > len(stream.batches):
            return None
        if not bitwise_equal(stream.batches[b - 1], inputs):
            self._batches_off.add(layer.name)
            return None
        stored = stream.batch_projections.get(b)
        if stored is not None and stored[0] == eigen_at:
            cache.shared_batch_projections += 1
            return stored[1]
        return None

    def note_update_batch(self, layer: LayerState, step: int) -> None:
        """Step ``step`` used the stream's update projection (a factor step): the stream's front
        keeps that batch in its batch record too, so the record has no gap."""
        following = self._on_recorded_basis(layer)
        if following is None:
            return
        cursor, eigen_at, cache = following
        stream, u = cursor.stream, cursor.updates
        stored = stream.projections.get(u)
        if step + 1 != len(stream.batches) + 1 or stored is None or stored[0] != eigen_at:
            return
        cache.record_batch(stream, stream.inputs[u - 1], stored[0], stored[1], owned=True)

    def _on_recorded_basis(
        self, layer: LayerState
    ) -> tuple[StreamCursor, int, InputStreamCache] | None:
        """(cursor, the update of its recorded decomposition, the cache) while the layer follows
        its stream in step on a recorded decomposition: the only case in which a recorded
        projection can be its own."""
        cursor = self._cursors.get(layer.name)
        if cursor is None or not cursor.synced or cursor.eigen_at is None or self.cache is None:
            return None
        return cursor, cursor.eigen_at, self.cache

    def _already_verified(self, name: str, update: int, inputs: torch.Tensor) -> bool:
        """Whether ``inputs`` are the very values the forward hook compared for ``update``
        (``_unchanged``)."""
        entry = self._verified.pop(name, None)
        if entry is None:
            return False
        at, seen, version = entry
        return at == update and _unchanged(inputs, seen, version)

    def leave_all(self, layers: list[LayerState]) -> None:
        """Stop sharing, keeping exact private factors: from here on every layer takes the plain
        path, the one a run restored from this point takes too (so the two stay bitwise equal)."""
        for layer in layers:
            self.settle(layer, own=True)
        self.detach_all()

    def detach_all(self) -> None:
        """Stop sharing for every layer (after ``load_state_dict``: factors are exact and ours),
        including layers not updated yet, whose loaded factors need not be a stream's start."""
        for name in list(self._cursors):
            self._cursors[name] = None
        self._joinable = False
        self._forward.clear()

    def _cursor(self, layer: LayerState, inputs: torch.Tensor) -> StreamCursor | None:
        if layer.name not in self._cursors:
            # The first update: A is still its start (None, or I for an identity start).
            started = layer.factor_a is not None and not self.identity_start
            if self.cache is None or not layer.input_is_data or started or not self._joinable:
                self._cursors[layer.name] = None
            else:
                start = "identity" if self.identity_start else "batch"
                key = stream_key(layer.name, inputs, layer.has_bias, self.decay, start)
                self._cursors[layer.name] = StreamCursor(self.cache.join(key, inputs))
        cursor = self._cursors[layer.name]
        if cursor is not None and not layer.input_is_data:
            self.settle(layer, own=True)
            self._cursors[layer.name] = cursor = None
        return cursor
