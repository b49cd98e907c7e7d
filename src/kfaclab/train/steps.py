"""How ``run_trial``'s loop drives one training step: the interface, and its autograd version.

The loop (``loop.py``) is written once against ``TrialSteps``. Two classes provide it:
``FusedKFAC`` (``fused.py``: forward, backward and the K-FAC step by hand) and ``AutogradSteps``
here (any torch optimizer — SGD or the general ``KFAC`` — through autograd). Both see the same
batches in the same order, so the loop's observations and divergence rule are the same for both
by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.train.observe import forward_plain
from kfaclab.trial_types import TrialConfig

if TYPE_CHECKING:
    from kfaclab.optim import KFAC


class TrialSteps(Protocol):
    """One step is ``forward`` → (stop if diverged) → ``backward`` → [``write_grads``, observe,
    ``clear_grads``] → ``damping`` → ``step``; ``materialize`` before any read of the weights
    outside ``forward`` (evaluation)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The minibatch's mean cross-entropy at the current parameters."""
        ...

    def backward(self) -> None: ...

    def write_grads(self) -> None:
        """Every nn.Linear weight's and bias's ``.grad`` as backward would leave it."""
        ...

    def clear_grads(self) -> None: ...

    def damping(self) -> float | None:
        """λ this step uses (K-FAC), None for an optimizer without damping."""
        ...

    def step(self, lr: float) -> None: ...

    def diagnostics(self) -> dict[str, dict[str, Any]] | None:
        """K-FAC's per-layer curvature numbers after the step; None without curvature."""
        ...

    def materialize(self) -> None: ...

    @property
    def counters(self) -> dict[str, float]: ...


class AutogradSteps:
    """A torch optimizer (SGD, or the general KFAC with any damping strategy or Fisher) driven
    through the model's own forward and autograd's backward."""

    def __init__(self, config: TrialConfig, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt
        self.groups = opt.param_groups
        self.kfac = cast("KFAC", opt) if config.optimizer == "kfac" else None
        self.sample_fisher = self.kfac is not None and config.fisher == "mc"
        self.wants_closure = self.kfac is not None and self.kfac.damping.needs_loss_after_step
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._logits: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._value = 0.0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        self._batch = (x, y)
        self._logits = self.model(x)
        self._loss = F.cross_entropy(self._logits, y)
        # One host sync per step: free on the CPU, and K-FAC's damping wants the float anyway.
        self._value = self._loss.item()
        return self._value

    def backward(self) -> None:
        assert self._loss is not None and self._logits is not None
        if self.sample_fisher and self.kfac is not None:
            self.kfac.sample_fisher(self._logits)
        self._loss.backward()

    def write_grads(self) -> None:
        if self.kfac is not None:
            self.kfac.restore_weight_grads()  # skipped by backward (skip_weight_grads)

    def clear_grads(self) -> None:
        pass  # the next forward's zero_grad clears them

    def damping(self) -> float | None:
        return None if self.kfac is None else self.kfac.current_damping()

    def step(self, lr: float) -> None:
        for group in self.groups:
            group["lr"] = lr
        if self.kfac is None:
            self.opt.step()
            return
        assert self._batch is not None
        closure = _loss_closure(self.model, *self._batch) if self.wants_closure else None
        self.kfac.step(loss=self._value, loss_closure=closure)

    def diagnostics(self) -> dict[str, dict[str, Any]] | None:
        return None if self.kfac is None else self.kfac.diagnostics()

    def materialize(self) -> None:
        if self.kfac is not None:
            self.kfac.materialize()  # evaluation bypasses the hooks: weights must be current

    @property
    def counters(self) -> dict[str, float]:
        return {} if self.kfac is None else self.kfac.counters


def _loss_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """The same minibatch's loss at the current parameters, for strategies such as
    Levenberg–Marquardt that compare it with the loss before the step. No graph, no hooks."""

    def closure() -> float:
        with torch.no_grad():
            return F.cross_entropy(forward_plain(model, x), y).item()

    return closure
