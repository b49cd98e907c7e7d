"""Half-precision models: factors and decompositions stay in float32 (eigh has no bfloat16
kernels), the step is computed there and written back in the parameters' dtype.

On each available device (the ``device`` fixture): bfloat16 everywhere, and on CUDA float16 too
(the half type GPUs train in; the CPU's float16 matmuls are too slow and rare to be the use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.optim import KFAC


def _half_dtypes(device: torch.device) -> list[torch.dtype]:
    return [torch.bfloat16, *([torch.float16] if device.type == "cuda" else [])]


def _model(dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def _data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return x.to(device), y.to(device)


def _factors_from(x: torch.Tensor) -> torch.Tensor:
    """Layer 1's A from the inputs as the layer saw them, in float32 on the CPU."""
    rows = torch.cat([x.float().cpu(), torch.ones(len(x), 1)], 1)
    return rows.T @ rows / len(x)


def test_a_half_precision_model_trains_with_float32_factors(device: torch.device) -> None:
    for dtype in _half_dtypes(device):
        model = _model(dtype).to(device)
        opt = KFAC(model, lr=0.05, damping=1e-2, momentum=0.9)
        x, y = _data(device)
        losses = []
        for _ in range(30):
            loss = F.cross_entropy(model(x.to(dtype)).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step(loss=loss)
            losses.append(loss.item())
        layer = opt.engine.layers[0]
        assert layer.factor_a is not None and layer.factor_a.dtype == torch.float32, dtype
        assert all(p.dtype == dtype for p in model.parameters())
        assert losses[-1] < 0.7 * losses[0], dtype  # it learns
        diagnostics = opt.diagnostics()["0"]
        assert diagnostics["eig_A_max"] > 0


def test_autocast_builds_float32_factors_from_the_modules_inputs(device: torch.device) -> None:
    for dtype in _half_dtypes(device):
        model = _model(torch.float32).to(device)
        opt = KFAC(model, lr=0.05, damping=1e-2)
        x, y = _data(device)
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss)
        factor = opt.engine.layers[0].factor_a
        assert factor is not None and factor.dtype == torch.float32, dtype
        # The hook sees the module's input (autocast casts inside the op): A is built from it,
        # while G comes from the half-precision output gradients, cast to float32.
        torch.testing.assert_close(factor.cpu(), _factors_from(x), rtol=1e-6, atol=1e-7)
        factor_g = opt.engine.layers[1].factor_g
        assert factor_g is not None and factor_g.dtype == torch.float32, dtype
        assert all(torch.isfinite(p).all() for p in model.parameters())
