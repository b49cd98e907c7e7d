"""One whole K-FAC step on a tiny conv net against a dense float64 oracle (issue 16).

Every layer's block (two Conv2d, one Linear) must move by −lr·(G⊗A + λI)⁻¹∇ (exact) or by the
factored form, with A and G from first principles (tests/conv_oracle.py: loop patches, torch.func
per-example gradients) for the approximation asked for, "expand" by default.

The approximation is ``KFACOptions(conv_approx="expand"|"reduce")``; None here means the default.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conv_oracle import oracle_factors
from dense_oracle import dense_direction
from kfac_kwargs import make_kfac


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(1, 2)),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).double()


def _ce_one(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="sum")


def _block(module: nn.Module, attr: str = "") -> torch.Tensor:
    assert isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None
    weight, bias = module.weight, module.bias
    if attr == "grad":
        assert weight.grad is not None and bias.grad is not None
        weight, bias = weight.grad, bias.grad
    return torch.cat([weight.detach().reshape(weight.shape[0], -1), bias.detach()[:, None]], 1)


@pytest.mark.parametrize("lam", [1e-3, 1.0])
@pytest.mark.parametrize("form", ["exact", "factored"])
@pytest.mark.parametrize("approx", [None, "expand", "reduce"])
def test_first_step_equals_dense_damped_inverse(
    approx: str | None, form: str, lam: float, device: torch.device
) -> None:
    """The step on ``device`` against the dense float64 oracle on the CPU."""
    net = _net(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    lr = 0.1
    factors = oracle_factors(net, x, y, _ce_one, approx or "expand")  # expand: the default
    modules = {name: m for name, m in net.named_children() if name in factors}
    before = {name: _block(m) for name, m in modules.items()}
    net.to(device)
    extra = {} if approx is None else {"conv_approx": approx}
    opt = make_kfac(net, lr=lr, damping=lam, damping_form=form, **extra)
    loss = F.cross_entropy(net(x.to(device)), y.to(device))
    opt.zero_grad()
    loss.backward()
    grads = {name: _block(m, "grad").cpu() for name, m in modules.items()}
    opt.step(loss=loss)
    assert set(opt.diagnostics()) == set(factors) == {"0", "2", "5"}
    for name, (a, g_factor) in factors.items():
        expected = before[name] - lr * dense_direction(a, g_factor, grads[name], lam, form)
        torch.testing.assert_close(_block(modules[name]).cpu(), expected, rtol=1e-9, atol=1e-12)
