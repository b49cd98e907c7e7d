"""The checks around ``KFAC.step`` that keep the hook backend from falling back silently.

Each refuses in one line naming the argument, the rule and the value (``UsageError``), or warns
once naming what K-FAC leaves to the plain gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kfaclab.damping.base import Damping
from kfaclab.errors import UsageError
from kfaclab.optim.capture import LayerCapture
from kfaclab.optim.engine import KFACEngine, LossClosure
from kfaclab.optim.mc_fisher import sampled_output_grads
from kfaclab.optim.options import Speedups


def check_grad_scaler(grad_scaler: Any, speedups: Speedups) -> None:
    if grad_scaler is None:
        return
    if not callable(getattr(grad_scaler, "get_scale", None)):
        raise UsageError(
            f"grad_scaler must be a torch.amp.GradScaler (with get_scale()), got {grad_scaler!r}"
        )
    if speedups.batch_gradients_only:
        raise UsageError(
            "grad_scaler cannot go with batch_gradients_only (the captured batch holds the "
            "scaled gradient, .grad the unscaled one), got batch_gradients_only=True"
        )


def legacy_closure(
    closure: Callable[[], Any], loss_closure: LossClosure | None
) -> tuple[None, LossClosure]:
    """``step(closure, loss=...)``, the form before 0.2: the closure is the evaluation closure."""
    if loss_closure is not None:
        raise UsageError(
            "step() takes a closure and loss= or loss_closure=, not all three (closure is "
            "torch's: it returns the loss itself), got all three"
        )
    warnings.warn(
        "step(closure, loss=loss) reads closure as Levenberg-Marquardt's evaluation closure; "
        "write step(loss=loss, loss_closure=closure) (a positional closure alone is torch's)",
        DeprecationWarning,
        stacklevel=5,  # legacy_closure, step, torch's no_grad and hook wrappers, the caller
    )
    return None, closure


def check_requirements(damping: Damping, loss: Any, loss_closure: LossClosure | None) -> None:
    """What the damping strategy needs from every step, refused at the first step without it."""
    name = type(damping).__name__
    if damping.needs_loss_after_step and loss_closure is None:
        raise UsageError(
            f"loss_closure is required by damping {name} (it re-evaluates the minibatch after "
            "the step): step(loss=loss, loss_closure=lambda: loss_fn(model(x), y)), or "
            "source='next_batch'; got loss_closure=None"
        )
    if damping.needs_loss and loss is None:
        raise UsageError(
            f"loss is required by damping {name} (it adapts λ to the minibatch loss): "
            "step(loss=loss) or step(closure); got loss=None"
        )


def check_logits(logits: torch.Tensor) -> None:
    finite = torch.isfinite(logits.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise UsageError(
            f"sample_fisher: logits must be finite, got {bad} non-finite of {logits.numel()} "
            "entries (the model diverged: a smaller lr or a larger damping)"
        )


def sample(captures: Sequence[LayerCapture], logits: torch.Tensor, likelihood: str) -> None:
    """``KFAC.sample_fisher`` on a factor step: the sampled gradients of every layer whose output
    this forward kept (a layer whose forward never ran has none, and is named at the step)."""
    check_logits(logits)
    present = [(c, c.outputs) for c in captures if c.outputs is not None]
    if not present:
        raise UsageError("sample_fisher must follow a forward pass with gradients enabled")
    grads = sampled_output_grads(logits, [out for _, out in present], likelihood)
    for (capture, _), grad in zip(present, grads, strict=True):
        capture.add_sampled(grad)


def require_samples(captures: Sequence[LayerCapture]) -> None:
    """fisher="mc": a factor step without ``sample_fisher`` would silently be no K-FAC at all."""
    if not any(c.sampled for c in captures):
        raise UsageError(
            "fisher='mc' needs opt.sample_fisher(logits) on every factor step, after zero_grad() "
            "and the forward pass, before loss.backward(); got no sampled gradients this step"
        )


def warn_dropped(names: list[str]) -> None:
    warnings.warn(
        f"non-finite inputs or output gradients captured for layers {', '.join(names)}: left "
        "out of the factors this step (KFAC.nonfinite_captures counts them)",
        stacklevel=5,
    )


def warn_uncaptured(names: list[str]) -> None:
    warnings.warn(
        f"layers {', '.join(names)} have gradients, but their forward hooks never saw a batch "
        "(the module's forward is not called, e.g. its weight used through F.linear): they get "
        "the plain gradient with their group's lr and momentum",
        stacklevel=6,
    )


def mark_uncaptured(
    engine: KFACEngine, captures: Sequence[LayerCapture], captured: set[str], dropped: list[str]
) -> list[str]:
    """A layer with a gradient that no capture has ever reached gets the plain gradient (returns
    the newly found ones); the first capture that reaches it makes it a K-FAC layer again."""
    new = []
    for layer, batch in zip(engine.layers, captures, strict=True):
        if batch.output_grads is not None:
            layer.plain = False
            captured.add(layer.name)
        elif layer.name in captured or layer.name in dropped or layer.plain:
            continue
        elif layer.weight.grad is not None:
            layer.plain = True
            new.append(layer.name)
    if new:
        warn_uncaptured(new)
    return new


def require_gradients(engine: KFACEngine, captures: Sequence[LayerCapture]) -> None:
    skipped = engine.directions.deferred.skipped
    for layer, batch in zip(engine.layers, captures, strict=True):
        if layer.weight.grad is not None or layer.name in skipped:
            return
        if batch.output_grads is not None:
            return
    if any(p.grad is not None for p in engine.directions.other_params):
        return
    raise UsageError(
        "step() found no gradient in any parameter: call loss.backward() before step()"
    )


def refuse_layer_params(group: dict[str, Any], layer_params: dict[int, str]) -> None:
    params = group.get("params")
    params = [params] if isinstance(params, torch.Tensor) else list(params or [])
    group["params"] = params  # a generator is read once
    hit = sorted({layer_params[id(p)] for p in params if id(p) in layer_params})
    if hit:
        raise UsageError(
            f"add_param_group cannot add parameters of layers {', '.join(map(repr, hit))} after "
            "construction (K-FAC attaches its hooks and factors when it is built): pass them in "
            f"KFAC(model, params=[...]); got {len(params)} parameters"
        )


HookFn = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor | None]


def deferred_forward(engine: KFACEngine, index: int) -> HookFn:
    """Forward hook: the output with the pending rotated update (see ``deferred``)."""
    directions = engine.directions
    layer = engine.layers[index]

    def hook(
        module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if layer.name not in directions.deferred.pending:
            return None
        x = inputs[0]
        if not torch.is_grad_enabled():  # not a training batch: fold in, then recompute
            directions.materialize()
            return nn.functional.linear(x, layer.weight, layer.bias)
        correct = directions.forward_correction(index, x.detach().reshape(-1, x.shape[-1]))
        assert correct is not None
        return correct(output)

    return hook
