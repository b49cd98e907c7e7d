"""The least work a K-FAC step of an MLP does in PyTorch: ``bench_step.py``'s floor.

No engine, options, checks, fallbacks, stacking, diagnostics or state_dict: a forward hook keeps
each nn.Linear's input and a tensor hook its output gradient; the running factors are exponential
moving averages (the first update sets them); every ``inverse_every`` steps come two
eigendecompositions per layer (exact form) or two Cholesky inverses (factored, π-adjusted); the
direction feeds heavy-ball momentum. It is the mathematics of ``kfaclab.KFAC`` with its default
options (``tests/test_minimal_kfac.py`` checks the two agree in float64), so its time is what any
implementation pays with the same kernels, and KFAC's distance from it is the engine's own cost.
It is a yardstick, not an optimizer: it refuses anything but a model of nn.Linear layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MinimalKFAC(torch.optim.Optimizer):
    def __init__(
        self,
        model: nn.Module,
        lr: float,
        damping: float,
        momentum: float,
        form: str = "exact",
        factor_decay: float = 0.95,
        inverse_every: int = 10,
    ) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        n_params = sum(1 for _ in model.parameters())
        if n_params != sum(2 if m.bias is not None else 1 for m in self.layers):
            raise ValueError("MinimalKFAC takes models whose parameters are all nn.Linear's")
        if any(m.bias is None for m in self.layers):
            raise ValueError("MinimalKFAC takes nn.Linear layers with a bias only")
        super().__init__(model.parameters(), {"lr": lr})
        self.lr, self.damping, self.momentum = lr, damping, momentum
        self.form, self.decay, self.inverse_every = form, factor_decay, inverse_every
        self.steps = 0
        n = len(self.layers)
        self.inputs: list[torch.Tensor | None] = [None] * n
        self.output_grads: list[torch.Tensor | None] = [None] * n
        self.factors: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n
        self.inverses: list[tuple[torch.Tensor, ...]] = [() for _ in range(n)]
        self.buffers: list[torch.Tensor | None] = [None] * n
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._capture(i))

    def _capture(self, i: int):  # type: ignore[no-untyped-def]
        def keep_grad(grad: torch.Tensor) -> None:
            self.output_grads[i] = grad

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                self.inputs[i] = args[0].detach()
                output.register_hook(keep_grad)

        return hook

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        self._update_factors()
        if self.steps % self.inverse_every == 0:  # this step's batch is in the inverted factors
            self._invert()
        for i, layer in enumerate(self.layers):
            assert layer.weight.grad is not None and layer.bias.grad is not None
            grad = torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)
            if self.form == "exact":
                q_a, q_g, scale = self.inverses[i]
                direction = q_g @ ((q_g.T @ grad @ q_a) * scale) @ q_a.T
            else:
                inv_a, inv_g = self.inverses[i]
                direction = inv_g @ grad @ inv_a
            buffer = self.buffers[i]
            if buffer is None:
                buffer = self.buffers[i] = direction
            else:
                buffer.mul_(self.momentum).add_(direction)
            layer.weight.sub_(buffer[:, :-1], alpha=self.lr)
            layer.bias.sub_(buffer[:, -1], alpha=self.lr)
        self.steps += 1

    def _update_factors(self) -> None:
        for i, (x, g) in enumerate(zip(self.inputs, self.output_grads, strict=True)):
            assert x is not None and g is not None
            n = x.shape[0]
            rows = torch.cat([x, x.new_ones(n, 1)], dim=1)
            rows_g = g * n  # ∂ℓᵢ/∂sᵢ from the mean loss's ∂L/∂s
            held = self.factors[i]
            if held is None:
                self.factors[i] = (rows.T @ rows / n, rows_g.T @ rows_g / n)
            else:
                a, g_factor = held
                a.mul_(self.decay).addmm_(rows.T, rows, alpha=(1 - self.decay) / n)
                g_factor.mul_(self.decay).addmm_(rows_g.T, rows_g, alpha=(1 - self.decay) / n)

    def _invert(self) -> None:
        lam = self.damping
        for i, held in enumerate(self.factors):
            assert held is not None
            a, g = held
            if self.form == "exact":
                values_a, q_a = torch.linalg.eigh(a)
                values_g, q_g = torch.linalg.eigh(g)
                scale = 1.0 / (torch.outer(values_g.clamp_min(0), values_a.clamp_min(0)) + lam)
                self.inverses[i] = (q_a, q_g, scale)
            else:
                mean_a, mean_g = float(a.diagonal().mean()), float(g.diagonal().mean())
                pi = math.sqrt(mean_a / mean_g)
                self.inverses[i] = (
                    _damped_inverse(a, pi * math.sqrt(lam)),
                    _damped_inverse(g, math.sqrt(lam) / pi),
                )


def _damped_inverse(factor: torch.Tensor, shift: float) -> torch.Tensor:
    eye = torch.eye(len(factor), dtype=factor.dtype)
    return torch.cholesky_inverse(torch.linalg.cholesky(factor + shift * eye))
