"""Tests that kill the library's surviving mutants of the 2026-12-06 mutation run (issue 28,
point 6), each against an independent computation:

- M11/M12: the KL clip's ν = min(1, sqrt(c / (η² Σ dᵀ∇))) from dense float64 directions (an lr
  that is not 1, and a bound that makes ν < 1, so lr vs lr² and the square root both show);
- M13: weight decay added to the gradient before it is recorded, on stacked hidden layers and
  with KL clipping (the two readers of the recorded gradient), against a dense oracle;
- M05: the eigenvalue floor keeps a value equal to the floor (values *below* it become 0), in
  ``floored`` and through a step whose factor has an eigenvalue exactly at the floor.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_oracle import Factors, batch_factors, dense_direction
from kfaclab import KFAC
from kfaclab.curvature.eigen import FactorEigen, floored
from kfaclab.optim import KFACOptions


def _deep_mlp(seed: int) -> nn.Sequential:
    """Three equally shaped hidden layers (one stack) between an input and an output layer."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 6), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(6, 6), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(6, 3)).double()


def _data(seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def _blocks(model: nn.Sequential, grad: bool = False) -> list[torch.Tensor]:
    out = []
    for m in model:
        if isinstance(m, nn.Linear):
            w, b = (m.weight.grad, m.bias.grad) if grad else (m.weight, m.bias)
            assert w is not None and b is not None
            out.append(torch.cat([w.detach(), b.detach()[:, None]], 1).clone().cpu())
    return out


def _one_step(
    device: torch.device, lr: float, lam: float, wd: float, kl_clip: float | None
) -> tuple[KFAC, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], Factors]:
    model = _deep_mlp(12)
    x, y = _data(13)
    factors = batch_factors(model, x, y)
    model.to(device)
    opt = KFAC(model, lr=lr, damping=lam, weight_decay=wd, options=KFACOptions(kl_clip=kl_clip))
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    before, grads = _blocks(model), _blocks(model, grad=True)
    opt.step()
    assert [members for members, _ in opt.engine.factors.stacks] == [[1, 2, 3]]
    return opt, before, grads, _blocks(model), factors


def _oracle_directions(
    factors: Factors,
    before: list[torch.Tensor],
    grads: list[torch.Tensor],
    lam: float,
    wd: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    decayed = [g + wd * theta for g, theta in zip(grads, before, strict=True)]
    directions = [
        dense_direction(a, g, grad, lam, "exact")
        for (a, g), grad in zip(factors, decayed, strict=True)
    ]
    return decayed, directions


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_kl_clip_nu_equals_the_formula_on_dense_directions(wd: float, device: torch.device) -> None:
    lr, lam = 0.3, 0.05
    # ν = 1/2 by construction: the bound is a quarter of the unclipped step's estimate.
    _, before, grads, _, factors = _one_step(device, lr, lam, wd, None)
    decayed, directions = _oracle_directions(factors, before, grads, lam, wd)
    estimate = lr**2 * sum(float((d * g).sum()) for d, g in zip(directions, decayed, strict=True))
    assert estimate > 0
    bound = estimate / 4
    opt, before, _, after, _ = _one_step(device, lr, lam, wd, bound)
    nu = min(1.0, math.sqrt(bound / estimate))
    assert nu == pytest.approx(0.5, rel=1e-12)
    assert opt.counters["kl_clip_last_factor"] == pytest.approx(nu, rel=1e-9)
    assert opt.counters["kl_clip_binds"] == 1
    for theta1, theta0, d in zip(after, before, directions, strict=True):
        torch.testing.assert_close(theta1, theta0 - lr * nu * d, rtol=1e-9, atol=1e-12)


def test_kl_clip_leaves_a_step_under_the_bound_alone(device: torch.device) -> None:
    lr, lam = 0.3, 0.05
    _, before, grads, free, factors = _one_step(device, lr, lam, 0.0, None)
    _, directions = _oracle_directions(factors, before, grads, lam, 0.0)
    estimate = lr**2 * sum(float((d * g).sum()) for d, g in zip(directions, grads, strict=True))
    # Between η²Σdᵀ∇ and ηΣdᵀ∇: binds if the estimate used η instead of η².
    opt, _, _, after, _ = _one_step(device, lr, lam, 0.0, estimate * 1.5)
    assert opt.counters["kl_clip_binds"] == 0 and opt.counters["kl_clip_last_factor"] == 1.0
    for a, b in zip(after, free, strict=True):
        assert torch.equal(a, b)


def test_weight_decay_enters_stacked_layers_before_preconditioning(device: torch.device) -> None:
    lr, lam, wd = 0.1, 0.2, 0.05
    _, before, grads, after, factors = _one_step(device, lr, lam, wd, None)
    _, directions = _oracle_directions(factors, before, grads, lam, wd)
    for theta1, theta0, d in zip(after, before, directions, strict=True):
        torch.testing.assert_close(theta1, theta0 - lr * d, rtol=1e-9, atol=1e-12)


def test_the_eigen_floor_keeps_a_value_equal_to_it() -> None:
    eigen = FactorEigen(None, torch.tensor([0.25, 1.0, 2.0], dtype=torch.float64), torch.eye(3))
    values = floored(eigen, 1.0).values
    assert values.tolist() == [0.0, 1.0, 2.0]
    assert floored(eigen, 0.0) is eigen


def test_a_step_with_an_eigenvalue_exactly_at_the_floor(device: torch.device) -> None:
    """All-zero inputs make A = diag(0, …, 0, 1) (the bias coordinate), an eigenvalue exactly 1;
    with eigen_floor = 1 it stays, and the bias gets (G⊗A + λI)⁻¹∇ with G's values below 1
    zeroed; were it dropped, every coordinate would get ∇/λ."""
    torch.manual_seed(14)
    model = nn.Linear(3, 2).double()
    x = torch.zeros(8, 3, dtype=torch.float64)
    target = torch.full((8, 2), 40.0, dtype=torch.float64)  # large residuals: G above the floor
    # F.mse_loss's mean is over N·2 entries: L = (1/N) Σ ℓᵢ with ℓᵢ = ½‖sᵢ − tᵢ‖², gᵢ = sᵢ − tᵢ.
    g_rows = (F.linear(x, model.weight, model.bias) - target).detach()
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[3, 3] = 1.0
    g = g_rows.T @ g_rows / 8
    values, vectors = torch.linalg.eigh(g)
    assert float(values.max()) > 1.0
    g_floored = vectors @ torch.diag(torch.where(values < 1.0, 0.0, values)) @ vectors.T
    lam, lr = 0.5, 0.01
    model.to(device)
    opt = KFAC(model, lr=lr, damping=lam, options=KFACOptions(eigen_floor=1.0))
    F.mse_loss(model(x.to(device)), target.to(device)).backward()
    grad = torch.cat([model.weight.grad, model.bias.grad[:, None]], 1).cpu()  # type: ignore[index]
    theta0 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1).cpu()
    opt.step()
    theta1 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1).cpu()
    expected = theta0 - lr * dense_direction(a, g_floored, grad, lam, "exact")
    torch.testing.assert_close(theta1, expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(theta1, theta0 - lr * grad / lam)
