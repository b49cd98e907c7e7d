"""First-principles K-FAC factors for small nn.Sequential nets of Conv2d and Linear layers.

Independent of kfaclab.optim.conv: patches from explicit loops over output locations and kernel
taps (no F.unfold, padding resolved by PyTorch's documented rule), per-example output gradients
gₙ = ∂ℓₙ/∂sₙ from torch.func on a per-example loss (no reduction, no rescaling). Used by
tests/test_conv.py and tests/test_conv_step.py, float64 throughout.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, vmap

from kfaclab.optim.conv import ConvApprox, input_factor, output_factor

# ℓ(outputs (1, …), target (1, …)) → scalar: one example's loss.
ExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def loop_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(N, T, C·kh·kw): the input pixel under each kernel tap at each output location, 0 where
    the tap falls in the zero padding. T runs row by row over the output."""
    (kh, kw), (sh, sw), (dh, dw) = (
        _pair(conv.kernel_size),
        _pair(conv.stride),
        _pair(conv.dilation),
    )
    n, c, h, w = x.shape
    if conv.padding == "same":  # total d·(k−1), the extra one at the end (PyTorch's rule)
        top, left = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        pad_h, pad_w = dh * (kh - 1), dw * (kw - 1)
    elif conv.padding == "valid":
        top = left = pad_h = pad_w = 0
    else:
        top, left = _pair(conv.padding)  # type: ignore[arg-type]
        pad_h, pad_w = 2 * top, 2 * left
    oh = (h + pad_h - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pad_w - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i, j in itertools.product(range(oh), range(ow)):
        taps = torch.zeros(n, c, kh, kw, dtype=x.dtype)
        for ki, kj in itertools.product(range(kh), range(kw)):
            r, s = i * sh - top + ki * dh, j * sw - left + kj * dw
            if 0 <= r < h and 0 <= s < w:
                taps[:, :, ki, kj] = x[:, :, r, s]
        rows.append(taps.reshape(n, -1))
    return torch.stack(rows, dim=1)


def layer_input_and_output_grads(
    net: nn.Sequential, index: int, x: torch.Tensor, y: torch.Tensor, loss: ExampleLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of net[index], per-example ∂ℓₙ/∂sₙ of its output, shaped like the output)."""
    prefix, layer, suffix = net[:index], net[index], net[index + 1 :]
    with torch.no_grad():
        h = prefix(x)
        s = layer(h)

    def loss_one(s_one: torch.Tensor, y_one: torch.Tensor) -> torch.Tensor:
        return loss(suffix(s_one[None]), y_one[None])

    return h, vmap(grad(loss_one))(s, y).detach()


def oracle_factors(
    net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, loss: ExampleLoss, approx: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per Conv2d/Linear child (by name): (A, G) from their definitions (kfaclab.optim.conv's
    module docstring for convolutions, DESIGN.md for nn.Linear); the bias entry last in A."""
    out = {}
    names = [name for name, _ in net.named_children()]
    for index, layer in enumerate(net):
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        h, g = layer_input_and_output_grads(net, index, x, y, loss)
        n = x.shape[0]
        if isinstance(layer, nn.Linear):
            a, g_rows = h.reshape(n, 1, -1), g.reshape(n, 1, -1)  # one "location"
        else:
            a, g_rows = loop_patches(h, layer), g.flatten(2).transpose(1, 2)  # (N, T, ·)
        if layer.bias is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        t = a.shape[1]
        if approx == "expand":
            a_factor = torch.einsum("ntd,nte->de", a, a) / (n * t)
            g_factor = torch.einsum("nto,ntp->op", g_rows, g_rows) / n
        elif approx == "reduce":
            a_mean, g_sum = a.mean(dim=1), g_rows.sum(dim=1)
            a_factor, g_factor = a_mean.T @ a_mean / n, g_sum.T @ g_sum / n
        else:
            raise ValueError(f"approx must be 'expand' or 'reduce', got {approx!r}")
        out[names[index]] = (a_factor, g_factor)
    return out


def kronecker_factors(
    x: torch.Tensor,
    grad_output: torch.Tensor,
    conv: nn.Conv2d,
    approx: ConvApprox,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) of one Conv2d layer from kfaclab.optim.conv's two factor functions."""
    return input_factor(x, conv, approx), output_factor(grad_output, approx, grad_scale)
