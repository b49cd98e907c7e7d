"""Data-parallel K-FAC: every rank's captures gathered, so N ranks take one process's step.

With ``torch.nn.parallel.DistributedDataParallel`` each rank sees a shard of the batch and DDP
all-reduces (averages) ``.grad``. K-FAC's factors must see the whole batch too: before each step
every rank gathers all ranks' capture rows (inputs and per-example-scaled output gradients) and
builds the same running factors from the concatenated batch — exactly what one process on the
whole batch builds, up to the order of the sums. Each rank then computes the same inverses and
the same direction from the same averaged gradient, so the parameters stay identical without any
broadcast. Gathering rows (N·d per layer) rather than reducing d×d factors is the cheaper choice
whenever the per-rank batch is smaller than the layer's width, as for the reference MLP.

Launch as usual: ``torchrun --nproc_per_node=2 train.py`` with the model wrapped in DDP before
``KFAC(ddp_model, ...)``; ranks must use equal per-rank batch sizes (checked).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kfaclab.optim.capture import LayerCapture


def process_group_of(model: nn.Module) -> Any | None:
    """The DDP process group ``model`` is wrapped in (the default one), or None."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.process_group
    return None


def gather_captures(captures: list[LayerCapture], group: Any, mean_loss: bool) -> None:
    """Replace each capture's rows by all ranks' rows (rank order), fixing the per-example scale
    first: a rank's ∂L/∂s is that of its own shard's loss."""
    world = dist.get_world_size(group)
    for capture in captures:
        if capture.inputs is None or capture.output_grads is None:
            continue
        if capture.grad_scale is None:  # the training loss's rows: this rank's n examples
            capture.grad_scale = float(capture.output_grads.shape[0]) if mean_loss else 1.0
        capture.inputs = _gather(capture.inputs, world, group, capture.name)
        capture.output_grads = _gather(capture.output_grads, world, group, capture.name)
        capture.input_requires_grad = True  # concatenated rows: never a shareable data stream


def _gather(rows: torch.Tensor, world: int, group: Any, name: str) -> torch.Tensor:
    sizes = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device), group=group)
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"layer {name!r}: data-parallel K-FAC needs equal per-rank batch sizes, got "
            f"{[int(s) for s in sizes]} rows"
        )
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows.contiguous(), group=group)
    return torch.cat(parts)
