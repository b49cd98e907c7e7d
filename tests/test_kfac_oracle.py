"""KFAC's update against a dense float64 oracle built from docs/interfaces.md's "What λ means".

The oracle recomputes everything independently: per-example output gradients from a sum-reduced
loss differentiated w.r.t. the pre-activations, the factors as explicit averages, the curvature
block as a dense Kronecker product, and the damped inverse with torch.linalg.solve.

Every test runs KFAC on each available device (the ``device`` fixture). A single-step oracle is
computed on the CPU before the model moves; a multi-step one follows the model onto the device
(float64 either way), and results come back with ``.cpu()`` where they meet a CPU oracle.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_oracle import dense_direction
from kfaclab import KFAC
from kfaclab.optim import KFACOptions


def _mlp(seed: int, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4, bias=bias), nn.Tanh(), nn.Linear(4, 3, bias=bias)).double()


def _data(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _oracle_factors(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (A, G) with ā = [a; 1] and g = ∂ℓᵢ/∂sᵢ, from first principles."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, pre = [], []
    h = x
    for module in model:
        if isinstance(module, nn.Linear):
            inputs.append(h.detach())
            h = F.linear(h, module.weight, module.bias)  # not module(h): no capture hooks
            pre.append(h)
        else:
            h = module(h)
    per_example_sum = F.cross_entropy(h, y, reduction="sum")
    grads = torch.autograd.grad(per_example_sum, pre)
    n = x.shape[0]
    out = []
    for module, a, g in zip(linears, inputs, grads, strict=True):
        if module.bias is not None:
            a = torch.cat([a, torch.ones(n, 1, dtype=a.dtype, device=a.device)], dim=1)
        out.append((a.T @ a / n, g.T @ g / n))
    return out


def _block_grad(module: nn.Linear) -> torch.Tensor:
    assert module.weight.grad is not None
    if module.bias is None:
        return module.weight.grad.clone()
    assert module.bias.grad is not None
    return torch.cat([module.weight.grad, module.bias.grad[:, None]], dim=1)


def _block_param(module: nn.Linear) -> torch.Tensor:
    if module.bias is None:
        return module.weight.detach().clone()
    return torch.cat([module.weight.detach(), module.bias.detach()[:, None]], dim=1)


@pytest.mark.parametrize("form", ["exact", "factored"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lam", [1e-3, 0.3, 10.0])
def test_first_step_equals_dense_damped_inverse(
    form: str, bias: bool, lam: float, device: torch.device
) -> None:
    """The step on ``device`` against the dense float64 oracle on the CPU."""
    model = _mlp(0, bias)
    x, y = _data(1)
    lr = 0.1
    factors = _oracle_factors(model, x, y)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [_block_param(m) for m in linears]
    model.to(device)
    opt = KFAC(model, lr=lr, damping=lam, options=KFACOptions(damping_form=form))
    loss = F.cross_entropy(model(x.to(device)), y.to(device))
    opt.zero_grad()
    loss.backward()
    grads = [_block_grad(m).cpu() for m in linears]
    opt.step(loss=loss)
    for module, (a, g), theta0, grad in zip(linears, factors, before, grads, strict=True):
        expected = theta0 - lr * dense_direction(a, g, grad, lam, form)
        torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)


def _deep_mlp(seed: int) -> nn.Sequential:
    """Three equally shaped hidden layers: their factors are updated as one stack."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 6), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(6, 6), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(6, 3)).double()


@pytest.mark.parametrize("make_model", [_mlp, _deep_mlp])
def test_running_factors_follow_the_moving_average(
    make_model: Callable[[int], nn.Sequential], device: torch.device
) -> None:
    model = make_model(3).to(device)
    decay = 0.7
    opt = KFAC(model, lr=0.05, damping=0.1, options=KFACOptions(factor_decay=decay))
    expected: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    for step in range(3):
        x, y = (t.to(device) for t in _data(10 + step))
        batch = _oracle_factors(model, x, y)
        if expected is None:  # the first update sets the factors: no identity initialisation
            expected = batch
        else:
            expected = [
                (decay * ea + (1 - decay) * a, decay * eg + (1 - decay) * g)
                for (ea, eg), (a, g) in zip(expected, batch, strict=True)
            ]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert expected is not None
    for layer, (a, g) in zip(opt.engine.layers, expected, strict=True):
        torch.testing.assert_close(layer.factor_a, a)
        torch.testing.assert_close(layer.factor_g, g)


def test_sum_reduction_gives_the_same_factors(device: torch.device) -> None:
    x, y = (t.to(device) for t in _data(5))
    results = []
    for reduction in ("mean", "sum"):
        model = _mlp(4).to(device)
        opt = KFAC(model, lr=0.1, damping=0.1, options=KFACOptions(loss_reduction=reduction))  # type: ignore[arg-type]
        F.cross_entropy(model(x), y, reduction=reduction).backward()
        opt.step()
        results.append([(lay.factor_a, lay.factor_g) for lay in opt.engine.layers])
    for (a1, g1), (a2, g2) in zip(*results, strict=True):
        torch.testing.assert_close(a1, a2)
        torch.testing.assert_close(g1, g2)


def test_stale_inverse_uses_last_eigenbasis_and_current_damping(device: torch.device) -> None:
    """Between inversions the exact form reuses the eigenbasis and applies the λ of the step."""
    model = _mlp(6).to(device)
    opt = KFAC(model, lr=0.1, damping=0.5, options=KFACOptions(inverse_every=5, factor_decay=0.5))
    x, y = (t.to(device) for t in _data(7))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    factors_at_inversion = [
        (lay.factor_a.clone().cpu(), lay.factor_g.clone().cpu()) for lay in opt.engine.layers
    ]  # type: ignore[union-attr]
    x2, y2 = (t.to(device) for t in _data(8))
    opt.zero_grad()
    F.cross_entropy(model(x2), y2).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [_block_param(m).cpu() for m in linears]
    grads = [_block_grad(m).cpu() for m in linears]
    opt.step()
    for module, (a, g), theta0, grad in zip(
        linears, factors_at_inversion, before, grads, strict=True
    ):
        expected = theta0 - 0.1 * dense_direction(a, g, grad, 0.5, "exact")
        torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)


def test_zero_input_features_are_handled_exactly(device: torch.device) -> None:
    """Inputs that are zero in every example (blank MNIST pixels) give an exactly singular A;
    the active-block decomposition must still equal the dense (G⊗A + λI)⁻¹."""
    model = _mlp(8)
    x, y = _data(9)
    x[:, [0, 3]] = 0.0
    factors = _oracle_factors(model, x, y)
    model.to(device)
    opt = KFAC(model, lr=0.2, damping=1e-2)
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [_block_param(m).cpu() for m in linears]
    grads = [_block_grad(m).cpu() for m in linears]
    opt.step()
    # Small factors are written out in full: the blank inputs are unit eigenvectors with value 0.
    eig_a, _ = opt.eigenvalues(opt.layer_names[0])
    assert int((eig_a == 0).sum()) == 2
    for module, (a, g), theta0, grad in zip(linears, factors, before, grads, strict=True):
        expected = theta0 - 0.2 * dense_direction(a, g, grad, 1e-2, "exact")
        torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)


def test_momentum_is_heavy_ball_on_the_preconditioned_direction(device: torch.device) -> None:
    model = _mlp(11).to(device)
    twin = _mlp(11).to(device)
    mu, lr = 0.8, 0.05
    opt = KFAC(model, lr=lr, damping=0.2, momentum=mu, options=KFACOptions(inverse_every=1))
    plain = KFAC(twin, lr=1.0, damping=0.2, momentum=0.0, options=KFACOptions(inverse_every=1))
    velocity: list[torch.Tensor] | None = None
    for step in range(3):
        x, y = (t.to(device) for t in _data(20 + step))
        # The twin takes no real steps: it only yields the direction d at the current params.
        twin.load_state_dict(model.state_dict())
        for m in (model, twin):
            m.zero_grad()
            F.cross_entropy(m(x), y).backward()
        lin_twin = [m for m in twin if isinstance(m, nn.Linear)]
        t_before = [_block_param(m) for m in lin_twin]
        plain.step()
        d = [b - _block_param(m) for b, m in zip(t_before, lin_twin, strict=True)]
        velocity = (
            d if velocity is None else [mu * v + di for v, di in zip(velocity, d, strict=True)]
        )
        lin = [m for m in model if isinstance(m, nn.Linear)]
        before = [_block_param(m) for m in lin]
        opt.step()
        for m, b, v in zip(lin, before, velocity, strict=True):
            torch.testing.assert_close(_block_param(m), b - lr * v)


@pytest.mark.parametrize("form", ["exact", "factored"])
def test_wide_sparse_input_layer_equals_dense_damped_inverse(
    form: str, device: torch.device
) -> None:
    """A 300-wide input with blank columns takes the skipping code paths (factor Gram, the
    active block of A's decomposition); the result must still be the dense one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 300, generator=g, dtype=torch.float64)
    x[:, torch.randperm(300, generator=g)[:140]] = 0.0
    y = torch.randint(0, 3, (16,), generator=g)
    factors = _oracle_factors(model, x, y)
    model.to(device)
    opt = KFAC(model, lr=0.3, damping=0.05, options=KFACOptions(damping_form=form))
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [_block_param(m).cpu() for m in linears]
    grads = [_block_grad(m).cpu() for m in linears]
    opt.step()
    if form == "exact":
        assert opt.engine.layers[0].inverse.a.active is not None  # type: ignore[union-attr]
    for module, (a, gg), theta0, grad in zip(linears, factors, before, grads, strict=True):
        expected = theta0 - 0.3 * dense_direction(a, gg, grad, 0.05, form)
        torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_stacked_hidden_layers_equal_dense_damped_inverse(lam: float, device: torch.device) -> None:
    """Equally shaped hidden layers are preconditioned in one batched product; with ReLU some
    units are dead (exactly singular G), and per-layer λ differs under SpectrumRelative."""
    from kfaclab import SpectrumRelative

    for damping in (lam, SpectrumRelative(lam)):
        torch.manual_seed(4)
        layers: list[nn.Module] = [nn.Linear(5, 6), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(6, 6), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(6, 3)).double()
        with torch.no_grad():  # a dead unit: never active, so its rows of G are zero
            model[2].bias[0] = -50.0
        x, y = _data(5, n=12)
        factors = _oracle_factors(model, x, y)
        model.to(device)
        opt = KFAC(model, lr=0.1, damping=damping)
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        linears = [m for m in model if isinstance(m, nn.Linear)]
        before = [_block_param(m).cpu() for m in linears]
        grads = [_block_grad(m).cpu() for m in linears]
        opt.step()
        assert [members for members, _ in opt.engine.factors.stacks] == [[1, 2, 3]]
        assert int((opt.eigenvalues(opt.layer_names[1])[1] == 0).sum()) == 1  # G of model[2]
        assert int((opt.eigenvalues(opt.layer_names[2])[0] == 0).sum()) == 1  # A of model[4]
        for layer, module, (a, g), theta0, grad in zip(
            opt.engine.layers, linears, factors, before, grads, strict=True
        ):
            assert layer.damping is not None
            expected = theta0 - 0.1 * dense_direction(a, g, grad, layer.damping, "exact")
            torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)


def test_weight_decay_is_added_to_the_gradient_before_preconditioning(
    device: torch.device,
) -> None:
    model = _mlp(6)
    x, y = _data(6)
    wd, lr, lam = 0.05, 0.1, 0.2
    factors = _oracle_factors(model, x, y)
    model.to(device)
    opt = KFAC(model, lr=lr, damping=lam, weight_decay=wd)
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [_block_param(m).cpu() for m in linears]
    grads = [_block_grad(m).cpu() for m in linears]
    opt.step()
    for module, (a, g), theta0, grad in zip(linears, factors, before, grads, strict=True):
        expected = theta0 - lr * dense_direction(a, g, grad + wd * theta0, lam, "exact")
        torch.testing.assert_close(_block_param(module).cpu(), expected, rtol=1e-9, atol=1e-12)
