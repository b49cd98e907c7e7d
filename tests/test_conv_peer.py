"""Conv2d Kronecker factors against curvlinops-for-pytorch's KFACLinearOperator (a peer).

curvlinops takes one batch as its whole data set, the empirical Fisher of a cross-entropy loss,
``separate_weight_and_bias=False`` (the bias as the last row/column of A, as here) and
``kfac_approx`` "expand" or "reduce". Its G is the curvature of the loss as reduced: for "mean"
the per-example average, kfaclab's scale (DESIGN.md); for "sum" N times that, while ours stays the
per-example average whatever the reduction (grad_scale = N for "mean", 1 for "sum").

Both libraries run on each available device (the ``device`` fixture): curvlinops works on the
model's device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conv_oracle import kronecker_factors
from kfaclab.optim.conv import ConvApprox, check_conv

curvlinops = pytest.importorskip("curvlinops")


def _net(seed: int) -> nn.Sequential:
    # Stride, padding, dilation, a non-square kernel and 'same' (odd kernel: curvlinops' unfold
    # pads symmetrically only), one conv without bias; a Linear head.
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding="same", dilation=2, bias=False),
        nn.Flatten(),
        nn.Linear(3 * 5 * 4, 5),
    ).double()


def _captures(
    net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, reduction: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per conv layer name: (its input, ∂L/∂s) as the engine's hooks would capture them."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    h = x
    for name, module in net.named_children():
        if isinstance(module, nn.Conv2d):
            inputs[name] = h.detach()
            h = outputs[name] = module(h)
        else:
            h = module(h)
    loss = F.cross_entropy(h, y, reduction=reduction)
    grads = torch.autograd.grad(loss, list(outputs.values()))
    return {name: (inputs[name], g) for name, g in zip(outputs, grads, strict=True)}


def _rel(ours: torch.Tensor, peer: torch.Tensor) -> float:
    return float((ours - peer).abs().max() / peer.abs().max())


def peer_errors(
    approx: ConvApprox, reduction: str, device: torch.device
) -> dict[str, tuple[float, float]]:
    """Per conv layer: max relative error of (A, G) against curvlinops, both on ``device``."""
    net = _net(0).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 9, 9, generator=g, dtype=torch.float64).to(device)
    y = torch.randint(0, 5, (6,), generator=g).to(device)
    peer = curvlinops.KFACLinearOperator(
        net,
        nn.CrossEntropyLoss(reduction=reduction),
        list(net.parameters()),
        [(x, y)],
        fisher_type="empirical",
        kfac_approx=approx,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    peer.compute_kronecker_factors()
    grad_scale = float(x.shape[0]) if reduction == "mean" else 1.0
    # curvlinops' G for a sum-reduced loss is the sum over examples: N times ours.
    peer_g_scale = 1.0 if reduction == "mean" else 1.0 / x.shape[0]
    errors = {}
    for name, (x_in, grad_out) in _captures(net, x, y, reduction).items():
        conv = check_conv(net.get_submodule(name), name)
        a, g_factor = kronecker_factors(x_in, grad_out, conv, approx, grad_scale)
        errors[name] = (
            _rel(a, peer._input_covariances[name]),
            _rel(g_factor, peer._gradient_covariances[name] * peer_g_scale),
        )
    return errors


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv_factors_match_curvlinops(
    approx: ConvApprox, reduction: str, device: torch.device
) -> None:
    errors = peer_errors(approx, reduction, device)
    assert set(errors) == {"0", "2", "4"}
    for name, (err_a, err_g) in errors.items():
        assert err_a <= 1e-10, (name, err_a)
        assert err_g <= 1e-10, (name, err_g)
