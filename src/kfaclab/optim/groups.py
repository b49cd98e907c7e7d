"""``KFAC``'s parameter groups: torch's ``param_groups``, with K-FAC's one extra rule.

Every group has its own ``lr``, ``momentum`` and ``weight_decay`` (read at every step, so torch's
lr schedulers and hand edits work, and checked there: a value set to something invalid during
training is refused at the next step, naming the group). A preconditioned layer's weight and bias
form one block [W | b] with one direction, so they must be in the same group.

The engine is told the hyperparameters per item (its layers, then its other parameters); when all
groups agree it gets the three numbers alone, which is the single-group path, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kfaclab.errors import UsageError
from kfaclab.optim.engine_directions import DirectionSide
from kfaclab.optim.layer_state import LayerState
from kfaclab.optim.options import check_lr, check_momentum, check_weight_decay

HYPERPARAMETERS = ("lr", "momentum", "weight_decay")


@dataclass(frozen=True)
class PerItem:
    """lr, momentum and weight decay of each engine item: its layers, then its other params."""

    lrs: list[float]
    momenta: list[float]
    weight_decays: list[float]


def as_groups(params: Any) -> list[dict[str, Any]]:
    """torch's forms of ``params``: an iterable of tensors (one group) or of dicts."""
    if isinstance(params, torch.Tensor | dict):
        raise UsageError(
            "params must be an iterable of parameters or of parameter-group dicts, got "
            f"{type(params).__name__}"
        )
    items = list(params)
    if not items:
        raise UsageError("params must not be empty, got an empty list")
    if all(isinstance(item, dict) for item in items):
        return [dict(item) for item in items]
    if any(isinstance(item, dict) for item in items):
        raise UsageError("params must be all tensors or all group dicts, got a mixture")
    return [{"params": items}]


def group_of(groups: Sequence[dict[str, Any]]) -> dict[int, int]:
    """id(parameter) → index of its group."""
    return {id(p): g for g, group in enumerate(groups) for p in _params(group["params"])}


def split_layers(
    candidates: list[LayerState], groups: Sequence[dict[str, Any]]
) -> tuple[list[LayerState], list[int]]:
    """The candidate layers the groups optimise, and each one's group. A layer with neither
    parameter in a group is left out (not optimised, no hooks); one with its weight and bias in
    different groups (or only one of them in any) is refused, naming it."""
    index = group_of(groups)
    layers, layer_groups = [], []
    for layer in candidates:
        bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
        where_w = index.get(id(layer.weight))
        where_b = None if bias is None else index.get(id(bias))
        if where_w is None and where_b is None:
            continue
        if bias is not None and where_w != where_b:
            raise UsageError(
                f"layer {layer.name!r}: its weight and bias must be in one parameter group "
                f"(K-FAC preconditions [W | b] as one block), got weight in {_where(where_w)} "
                f"and bias in {_where(where_b)}"
            )
        assert where_w is not None
        layers.append(layer)
        layer_groups.append(where_w)
    return layers, layer_groups


def check_groups(groups: Sequence[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """Every group's (lr, momentum, weight_decay), each checked with the group named."""
    values = []
    for g, group in enumerate(groups):
        check_lr(group["lr"], f"param_groups[{g}]['lr']")
        check_momentum(group["momentum"], f"param_groups[{g}]['momentum']")
        check_weight_decay(group["weight_decay"], f"param_groups[{g}]['weight_decay']")
        values.append((group["lr"], group["momentum"], group["weight_decay"]))
    return values


def step_hyperparameters(
    groups: Sequence[dict[str, Any]], item_groups: Sequence[int]
) -> tuple[float, float, float, PerItem | None]:
    """(lr, momentum, weight_decay, None) when every group agrees, else the first group's three
    and the per-item values (``item_groups``: the group of each engine item)."""
    values = check_groups(groups)
    first = values[0]
    if all(v == first for v in values[1:]):
        return first[0], first[1], first[2], None
    per = [values[g] for g in item_groups]
    return (
        first[0],
        first[1],
        first[2],
        PerItem([v[0] for v in per], [v[1] for v in per], [v[2] for v in per]),
    )


def apply_per_item(
    side: DirectionSide,
    directions: list[torch.Tensor],
    lrs: Sequence[float],
    momenta: Sequence[float],
    want_steps: bool,
) -> list[torch.Tensor]:
    """``side.apply`` with each item's own lr and momentum: one ``apply`` per distinct
    (lr, momentum), on the items that have it (the others empty, which ``apply`` skips), without
    the stacked momentum (a stack's members may be in different groups)."""
    buckets: dict[tuple[float, float], set[int]] = {}
    for i, d in enumerate(directions):
        if d.numel():
            buckets.setdefault((lrs[i], momenta[i]), set()).add(i)
    steps = list(directions)
    empty = torch.zeros(0)
    for (lr, momentum), members in buckets.items():
        chosen = [d if i in members else empty for i, d in enumerate(directions)]
        done = side.apply(chosen, lr, momentum, want_steps)
        for i in members if want_steps else ():
            steps[i] = done[i]
    return steps if want_steps else []


def _params(params: Any) -> Iterable[torch.Tensor]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _where(group: int | None) -> str:
    return "no group" if group is None else f"group {group}"
