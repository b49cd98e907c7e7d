"""Which layers of a model ``KFAC`` can precondition, and the ones it must leave to the gradient.

A trainable nn.Linear or nn.Conv2d is preconditioned unless K-FAC's factors would not describe
its gradient; then its parameters get the plain gradient and are named (``unpreconditioned``):

* a Conv2d K-FAC cannot treat (grouped, non-zero padding modes: ``conv.check_conv``);
* a layer whose weight or bias is tied to another module's (an Embedding tied to the output
  Linear): the shared tensor's gradient holds both modules' contributions, the layer's factors
  only its own;
* nn.MultiheadAttention's ``out_proj``: attention calls ``F.multi_head_attention_forward`` with
  its weight, never its forward, so no hook would ever see its inputs.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from torch import nn

from kfaclab.errors import UsageError
from kfaclab.optim.conv import check_conv
from kfaclab.optim.layer_state import LayerState

Unpreconditioned = Literal["warn", "error", "allow"]


def check_model(model: Any) -> None:
    """``KFAC(model.parameters())`` is what a torch user types first: say what to pass instead."""
    if not isinstance(model, nn.Module):
        raise UsageError(
            "model must be the nn.Module whose layers K-FAC preconditions (KFAC(model, lr=...); "
            "parameter groups go in params=[...]), got " + type(model).__name__
        )


def candidate_layers(model: nn.Module) -> tuple[list[LayerState], list[str]]:
    """The trainable nn.Linear and nn.Conv2d layers K-FAC can precondition, and a reason for
    each other one it leaves to the plain gradient."""
    owners = _owners(model)
    attention_out = {
        id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
    }
    layers, reasons = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d) or not module.weight.requires_grad:
            continue
        if isinstance(module, nn.Conv2d):
            try:
                check_conv(module, name)
            except ValueError as error:
                reasons.append(str(error))
                continue
        if id(module) in attention_out:
            reasons.append(
                f"{name!r} is nn.MultiheadAttention's out_proj, whose forward attention never "
                "calls (no hook sees its inputs)"
            )
            continue
        tied = _tied_with(module, owners)
        if tied:
            reasons.append(
                f"{name!r} shares its parameters with {', '.join(tied)} (tied weights: the shared "
                "gradient holds both modules' parts, the layer's factors only its own)"
            )
            continue
        layers.append(LayerState(name, module))
    return layers, reasons


def report_unpreconditioned(names: list[str], reasons: list[str], policy: str) -> None:
    if policy not in ("warn", "error", "allow"):
        raise UsageError(f"unpreconditioned must be 'warn', 'error' or 'allow', got {policy!r}")
    if not names or policy == "allow":
        return
    listed = ", ".join(names) + "".join(f" ({reason})" for reason in reasons)
    if policy == "error":
        raise UsageError(
            f"K-FAC preconditions nn.Linear and nn.Conv2d layers only; these parameters would "
            f"get the plain gradient: {listed} (pass unpreconditioned='warn' or 'allow' to "
            "accept that)"
        )
    warnings.warn(
        f"K-FAC preconditions nn.Linear and nn.Conv2d layers only; these parameters get the "
        f"plain gradient with their group's lr and momentum: {listed}",
        stacklevel=3,
    )


def _owners(model: nn.Module) -> dict[int, list[tuple[int, str]]]:
    """id(parameter) → every (module id, qualified name) holding it, duplicates included."""
    owners: dict[int, list[tuple[int, str]]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            name = f"{prefix}.{pname}" if prefix else pname
            owners.setdefault(id(p), []).append((id(module), name))
    return owners


def _tied_with(module: nn.Module, owners: dict[int, list[tuple[int, str]]]) -> list[str]:
    """Names of the other modules' parameters that are this module's weight or bias."""
    tied: list[str] = []
    for p in module.parameters(recurse=False):
        tied += [name for mid, name in owners.get(id(p), []) if mid != id(module)]
    return sorted(set(tied))
