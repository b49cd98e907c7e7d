"""Sharing the data-only work of K-FAC between optimizers in one process (a sweep's trials).

A layer whose input is the data itself (layer 1 of an MLP) has an input factor A that depends on
the sequence of input batches alone, not on θ. Every trial of a sweep that trains on the same
batches in the same order (same data seed and batch size, ``search.trial_seeds = "fixed"``)
builds bitwise the same running A and pays again for its updates (layer 1's 785×785 Gram matrix,
about a fifth of an exact K-FAC step on MNIST) and for its eigendecompositions.

The first optimizer to run a stream *records* it: the input batch of every factor update, and at
its inversions the running factor and its decomposition. A later optimizer whose inputs are
bitwise equal to the recorded ones *follows*: it skips the updates and takes the factor and the
decomposition from the record when it inverts. Updates are counted per layer (u = 1, 2, …), not
by optimizer step, so a follower with another inversion schedule still follows; when it needs the
factor between recorded snapshots (a Levenberg–Marquardt model reduction, ``state_dict``) it
replays the skipped updates from the last snapshot with the recorded inputs — the same operations
on the same values, so every result is bitwise what a fresh computation gives. The first input
that differs ends the following, after which the layer is updated as usual.

A stream is keyed by everything else the factor depends on: the layer's name and input width,
whether it has a bias, the factor decay, its start (first batch or identity), dtype and device.
Memory is bounded by ``max_bytes`` (the default holds one epoch of the reference protocol's
layer 1: about 190 MB of inputs and 230 MB of snapshots and decompositions); a stream that
would exceed it stops growing, and optimizers that run past its end compute for themselves from
there on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from kfaclab.curvature.eigen import FactorEigen

StreamKey = tuple[str, int, bool, float, str, torch.dtype, torch.device]


def stream_key(
    name: str, inputs: torch.Tensor, with_bias: bool, decay: float, start: str = "batch"
) -> StreamKey:
    """``start``: the factor's value before its first update ("batch": none, the first update
    sets it; "identity": I), which every later running factor depends on."""
    return (name, inputs.shape[1], with_bias, decay, start, inputs.dtype, inputs.device)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same shape, dtype and bytes.

    Bytes, not values: a follower must see exactly the recorded inputs (``torch.equal`` calls
    −0.0 and 0.0 equal and a NaN unequal to itself). Compared as 64-bit words where the sizes
    allow: on CPU 2–3× faster than ``torch.equal`` on the floats (128×784: ~40 vs ~100 µs),
    once per factor update of every following trial.
    """
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    words = torch.int64 if flat_a.numel() * a.element_size() % 8 == 0 else torch.uint8
    return torch.equal(flat_a.view(torch.uint8).view(words), flat_b.view(torch.uint8).view(words))


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass
class InputStream:
    """The record of one data stream for one layer; entry u−1 of ``inputs`` fed update u."""

    key: StreamKey
    inputs: list[torch.Tensor] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # u → running factor
    eigens: dict[int, FactorEigen] = field(default_factory=dict)  # u → decomposition of snapshot
    # u → (u_s, P): update u's inputs [X | 1] on the active coordinates of eigens[u_s], rotated
    # into its eigenbasis (P = X̄ Q_A), for optimizers that precondition from the batch.
    projections: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    # Every training batch b = 1, 2, … (the recorder's step b − 1), for optimizers that update
    # their factors less often than every step, and b → (u_s, P) its projection on eigens[u_s].
    batches: list[torch.Tensor] = field(default_factory=list)
    batch_projections: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    nbytes: int = 0
    closed: bool = False  # no longer recorded (budget spent or evicted)

    @property
    def updates(self) -> int:
        return len(self.inputs)

    def matches(self, update: int, inputs: torch.Tensor) -> bool:
        """Whether ``inputs`` are bitwise the recorded inputs of update ``update`` (1-based)."""
        if update > len(self.inputs):
            return False
        return bitwise_equal(self.inputs[update - 1], inputs)

    def last_snapshot(self, at_most: int) -> tuple[int, torch.Tensor | None]:
        """The latest snapshot at or before update ``at_most`` ((0, None): the start)."""
        best = max((u for u in self.snapshots if u <= at_most), default=0)
        return best, self.snapshots.get(best)


class InputStreamCache:
    """The streams of one process, bounded by ``max_bytes`` (least recently used go first)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if not (isinstance(max_bytes, int) and max_bytes >= 0):
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._streams: OrderedDict[int, InputStream] = OrderedDict()
        self.followed_updates = 0  # factor updates skipped by followers
        self.shared_decompositions = 0  # decompositions taken from a record
        self.shared_projections = 0  # batch projections taken from a record
        self.shared_batch_projections = 0  # … of batches between factor updates

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._streams.values())

    def join(self, key: StreamKey, inputs: torch.Tensor) -> InputStream:
        """The stream whose first update had these inputs, or a new one to record."""
        for ident, stream in self._streams.items():
            if stream.key == key and stream.matches(1, inputs):
                self._streams.move_to_end(ident)
                return stream
        stream = InputStream(key)
        self._streams[id(stream)] = stream
        return stream

    def record_inputs(self, stream: InputStream, inputs: torch.Tensor) -> bool:
        """Append the inputs of the next update; False (and the stream closes) if over budget."""
        return self._grow(stream, inputs.clone(), None, None)

    def record_inversion(
        self, stream: InputStream, factor: torch.Tensor, eigen: FactorEigen | None
    ) -> None:
        """Keep the running factor after the stream's last update and its decomposition."""
        if stream.closed or stream.updates in stream.snapshots:
            return
        self._grow(stream, None, factor.clone(), eigen)

    def record_projection(
        self, stream: InputStream, update: int, eigen_at: int, projection: torch.Tensor
    ) -> None:
        """Keep update ``update``'s projection if it fits (it is a saving, never a necessity)."""
        size = _nbytes(projection)
        if stream.closed or self.nbytes + size > self.max_bytes:
            return
        stream.projections[update] = (eigen_at, projection)
        stream.nbytes += size

    def record_batch(
        self,
        stream: InputStream,
        inputs: torch.Tensor,
        eigen_at: int,
        projection: torch.Tensor,
        *,
        owned: bool = False,
    ) -> None:
        """Append the next training batch and its projection if they fit (a saving, never a
        necessity: the stream stays open). ``owned``: both are already the stream's (an
        update's recorded inputs and projection), not to be cloned or counted again."""
        size = 0 if owned else _nbytes(projection) + _nbytes(inputs)
        if stream.closed or self.nbytes + size > self.max_bytes:
            return
        stream.batches.append(inputs if owned else inputs.clone())
        stream.batch_projections[len(stream.batches)] = (eigen_at, projection)
        stream.nbytes += size

    def _grow(
        self,
        stream: InputStream,
        inputs: torch.Tensor | None,
        snapshot: torch.Tensor | None,
        eigen: FactorEigen | None,
    ) -> bool:
        if stream.closed:
            return False
        size = _nbytes(inputs) + _nbytes(snapshot)
        if eigen is not None:
            size += _nbytes(eigen.values) + _nbytes(eigen.vectors) + _nbytes(eigen.active)
        self._evict_others(stream, self.max_bytes - size)
        if stream.nbytes + size > self.max_bytes:
            stream.closed = True
            return False
        if inputs is not None:
            stream.inputs.append(inputs)
        if snapshot is not None:
            stream.snapshots[stream.updates] = snapshot
            if eigen is not None:
                stream.eigens[stream.updates] = eigen
        stream.nbytes += size
        return True

    def _evict_others(self, keep: InputStream, budget: int) -> None:
        for ident in list(self._streams):
            if self.nbytes <= budget:
                return
            stream = self._streams[ident]
            if stream is not keep:
                stream.closed = True
                del self._streams[ident]

    def clear(self) -> None:
        for stream in self._streams.values():
            stream.closed = True
        self._streams.clear()


@dataclass
class StreamCursor:
    """One optimizer's position on a stream for one layer.

    ``updates``: factor updates this layer has had; ``exact_at``: the update count at which the
    layer's ``factor_a`` is exact (< ``updates`` while recorded updates are pending);
    ``owned``: whether ``factor_a`` may be modified in place (False while it is a snapshot);
    ``eigen_at``: the update whose recorded decomposition the optimizer last took or recorded.
    """

    stream: InputStream
    updates: int = 0
    exact_at: int = 0
    owned: bool = True
    synced: bool = True
    eigen_at: int | None = None

    @property
    def pending(self) -> bool:
        return self.exact_at < self.updates
