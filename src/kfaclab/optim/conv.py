"""Kronecker factors of nn.Conv2d layers (Grosse & Martens' KFC), as pure functions.

Notation, for one Conv2d layer with weight W (O, C, kh, kw) and bias b (O,), batch of N examples:

- d = C·kh·kw, and W is used as the matrix W̃ = W.reshape(O, d) (channel-major, then kernel row,
  then kernel column: the order of ``F.unfold`` and of ``weight.reshape``).
- T = H'·W' output locations. a_{n,t} ∈ ℝᵈ is the input patch that output location t of example
  n sees (zeros where it overlaps the padding), ā_{n,t} = [a_{n,t}; 1] (the 1 for the bias, last,
  as for nn.Linear). The layer computes s_{n,:,t} = [W̃ | b] ā_{n,t}.
- g_{n,t} = ∂ℓₙ/∂s_{n,:,t} ∈ ℝᴼ: the per-example output gradient at location t. Autograd gives
  ∂L/∂s; g = grad_scale · ∂L/∂s with grad_scale = N for a loss with reduction "mean" and 1 for
  "sum" (and 1 for a Monte-Carlo Fisher's sampled loss summed over the batch).
- The per-example gradient of [W̃ | b] is the sum over locations  ∇ₙ = Σ_t g_{n,t} ā_{n,t}ᵀ,
  (O, d+1), and the minibatch loss's gradient is (1/N) Σₙ ∇ₙ (mean) or Σₙ ∇ₙ (sum): exactly
  ``gradient_block(conv)`` after ``loss.backward()``.

The layer's Fisher block is F = (1/N) Σₙ vec(∇ₙ) vec(∇ₙ)ᵀ, the per-example average, as for
nn.Linear (DESIGN.md). Both approximations below replace F by G⊗A on that same scale:

``expand`` (Grosse & Martens 2016 "KFC"; Eschenhagen et al. 2023's KFAC-expand) treats the T
locations like extra examples: it drops the cross-location terms of F (spatially uncorrelated
derivatives) and factorises the rest,
    A = (1/(N·T)) Σ_{n,t} ā_{n,t} ā_{n,t}ᵀ        (a *mean* over examples and locations)
    G = (1/N)     Σ_{n,t} g_{n,t} g_{n,t}ᵀ        (a mean over examples, a *sum* over locations)
so that G⊗A = T·E[ggᵀ]⊗E[āāᵀ] ≈ (1/N) Σ_{n,t} vec(g āᵀ) vec(g āᵀ)ᵀ — exact when every g_{n,t}
is one vector c for all n and t (tests/test_conv.py checks this against dense per-location
gradients).

``reduce`` (Eschenhagen et al. 2023's KFAC-reduce) sums the output gradients and averages the
patches over the locations first, then proceeds as for nn.Linear with one row per example,
    A = (1/N) Σₙ ā̄ₙ ā̄ₙᵀ,  ā̄ₙ = (1/T) Σ_t ā_{n,t}    (its last entry stays 1)
    G = (1/N) Σₙ ḡₙ ḡₙᵀ,   ḡₙ = Σ_t g_{n,t}
which is F itself when every g_{n,t} is one vector c (∇ₙ = T·c ā̄ₙᵀ then). It needs no unfold
(the patch means are kh·kw strided sums of the padded input) and its factors have N rows, not N·T.

These are curvlinops-for-pytorch's KFAC conventions for Conv2d (``kfac_approx="expand"|"reduce"``,
``separate_weight_and_bias=False``, one batch as the data set) for a loss with reduction "mean";
for "sum" its G is N times ours (the curvature of the summed loss), while ours stays the
per-example average whatever the reduction (tests/test_conv_peer.py compares, to ~1e-15).

What λ means: the same as for nn.Linear. Exact damping is (G⊗A + λI)⁻¹ ∇ with ∇ the minibatch
gradient block, and G⊗A estimates the per-example Fisher average F of the layer's [W̃ | b], so λ
is measured against per-example curvature, whatever T is. In particular λ is *not* per location:
with expand, G grows with T (it sums over locations) while A does not, so a layer whose outputs
cover more locations has proportionally larger curvature and the same λ damps it relatively less —
as it would damp the true F. Factored damping's π = sqrt((tr A/dim A)/(tr G/dim G)) takes these
factors as they are. The running factors (EMA, first update sets them) are the engine's, as for
nn.Linear; the statistics here are one batch's.

Cost: expand's rows are the unfolded patches, N·T × C·kh·kw (LeNet's conv1 at batch 128: 100 352
× 25); ``input_factor`` builds A in batch chunks instead. Reduce never unfolds.

Rows for the engine. The engine builds A = (1/R) Σ_r [x_r; 1][x_r; 1]ᵀ and
G = (scale²/R) Σ_r y_r y_rᵀ from R rows (``ConvRows``). For expand R = N·T: x_r are the patches,
y_r the raw ∂L/∂s rows and scale = grad_scale·√T (dividing by R = N·T must leave a 1/N in G). For
reduce R = N: x_n = patch means, y_n = Σ_t ∂L/∂s_{n,t}, scale = grad_scale. Only for expand is
yᵀx (summed over rows) the weight gradient; for reduce it is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.choices import CONV_APPROXIMATIONS, DEFAULT_CONV_APPROX, ConvApprox

# Expand's A is accumulated over batch chunks whose unfolded patches hold at most this many
# entries (32 MiB in float64), so the whole (N, d, T) unfold never exists at once.
_CHUNK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class ConvGeometry:
    """Where a Conv2d's kernel lands on an (H, W) input, with padding resolved to numbers."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order
    output: tuple[int, int]  # (H', W')

    @property
    def locations(self) -> int:
        """T = H'·W'."""
        return self.output[0] * self.output[1]


@dataclass(frozen=True)
class ConvRows:
    """One layer's capture, as rows for the engine: A = (1/R) Σ [x;1][x;1]ᵀ (bias column appended
    by the engine when the layer has a bias), G = (grad_scale²/R) Σ y yᵀ, R = rows."""

    inputs: torch.Tensor  # (R, C·kh·kw), no bias column
    output_grads: torch.Tensor  # (R, O): raw ∂L/∂s rows (expand) or their location sums (reduce)
    grad_scale: float  # includes √T for expand
    examples: int  # N
    locations: int  # T


def check_conv(module: nn.Module, name: str) -> nn.Conv2d:
    """``module`` as a Conv2d this file supports, else a ValueError naming it and the rule."""
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"{name}: expected an nn.Conv2d, got {type(module).__name__}")
    if module.groups != 1:
        raise ValueError(
            f"{name}: K-FAC supports nn.Conv2d with groups=1 only, got groups={module.groups}"
        )
    if module.padding_mode != "zeros":
        raise ValueError(
            f"{name}: K-FAC supports nn.Conv2d with padding_mode='zeros' only, "
            f"got padding_mode={module.padding_mode!r}"
        )
    return module


def conv_geometry(conv: nn.Conv2d, input_size: tuple[int, int]) -> ConvGeometry:
    """The geometry of ``conv`` on an input of spatial size ``input_size`` = (H, W).

    Every function here goes through this one, so an unsupported layer (``check_conv``) is refused
    here too, named by its repr when the caller has no module name for it."""
    check_conv(conv, f"Conv2d({conv.extra_repr()})")
    kernel = _pair(conv.kernel_size)
    stride = _pair(conv.stride)
    dilation = _pair(conv.dilation)
    pads: list[tuple[int, int]] = []
    for axis in range(2):
        if conv.padding == "valid":
            pads.append((0, 0))
        elif conv.padding == "same":
            # PyTorch's rule: total d·(k−1), the odd one out goes to the end (right/bottom).
            total = dilation[axis] * (kernel[axis] - 1)
            pads.append((total // 2, total - total // 2))
        else:
            p = _pair(conv.padding)[axis]  # type: ignore[arg-type]
            pads.append((p, p))
    output = tuple(
        (input_size[i] + sum(pads[i]) - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )
    (top, bottom), (left, right) = pads
    return ConvGeometry(
        kernel, stride, dilation, (left, right, top, bottom), (output[0], output[1])
    )


def patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """x (N, C, H, W) → the unfolded patches (N, C·kh·kw, T), T = H'·W'.

    Padding is applied with F.pad first, so the asymmetric padding of padding='same' with an even
    kernel works (F.unfold itself only pads symmetrically)."""
    x = _batched(x)
    geo = conv_geometry(conv, (x.shape[-2], x.shape[-1]))
    padded = F.pad(x, geo.padding)
    return F.unfold(padded, geo.kernel, dilation=geo.dilation, stride=geo.stride)


def mean_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """x (N, C, H, W) → (1/T) Σ_t a_{n,t}, (N, C·kh·kw), without unfolding.

    Entry (c, i, j) of the patch sum is the sum of the padded input over the strided grid that
    kernel offset (i, j) visits: kh·kw strided sums, memory O(N·C·kh·kw) beyond the padded input."""
    x = _batched(x)
    geo = conv_geometry(conv, (x.shape[-2], x.shape[-1]))
    padded = F.pad(x, geo.padding)
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo.kernel, geo.stride, geo.dilation, geo.output
    sums = [
        padded[
            :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
        ].sum(dim=(-2, -1))
        for i in range(kh)
        for j in range(kw)
    ]  # kh·kw tensors of shape (N, C)
    stacked = torch.stack(sums, dim=-1)  # (N, C, kh·kw): channel-major, as unfold
    return stacked.reshape(x.shape[0], -1).div_(geo.locations)


def conv_rows(
    x: torch.Tensor,
    grad_output: torch.Tensor,
    conv: nn.Conv2d,
    approx: ConvApprox = DEFAULT_CONV_APPROX,
    grad_scale: float = 1.0,
) -> ConvRows:
    """The engine's rows for one layer from its input x (N, C, H, W) and ∂L/∂s (N, O, H', W').

    ``grad_scale``: g = grad_scale · ∂L/∂s is the per-example gradient (N for reduction "mean",
    1 for "sum"); see the module docstring for how the rows encode A and G."""
    _check_approx(approx)
    x, grad_output = _batched(x), _batched(grad_output)
    n, o = grad_output.shape[0], grad_output.shape[1]
    t = grad_output.shape[2] * grad_output.shape[3]
    if approx == "expand":
        inputs = patches(x, conv).transpose(1, 2).reshape(n * t, -1)  # (N·T, d)
        grads = grad_output.permute(0, 2, 3, 1).reshape(n * t, o)  # (N·T, O)
        return ConvRows(inputs, grads, grad_scale * math.sqrt(t), n, t)
    return ConvRows(mean_patches(x, conv), grad_output.sum(dim=(2, 3)), grad_scale, n, t)


def input_factor(
    x: torch.Tensor,
    conv: nn.Conv2d,
    approx: ConvApprox = DEFAULT_CONV_APPROX,
    *,
    chunk_entries: int = _CHUNK_ENTRIES,
) -> torch.Tensor:
    """The batch statistic A, (d+1, d+1) with a bias (its row/column last), else (d, d).

    Expand accumulates the patch Gram matrix over batch chunks, so at most ``chunk_entries``
    unfolded entries exist at a time; its bias row is N·T times the patch mean, no unfold needed."""
    _check_approx(approx)
    x = _batched(x)
    n = x.shape[0]
    means = mean_patches(x, conv)  # (N, d)
    d = means.shape[1]
    with_bias = conv.bias is not None
    if approx == "reduce":
        rows = torch.cat([means, means.new_ones(n, 1)], dim=1) if with_bias else means
        return rows.T @ rows / n
    t = conv_geometry(conv, (x.shape[-2], x.shape[-1])).locations
    per_example = d * t
    chunk = max(1, chunk_entries // max(per_example, 1))
    gram = x.new_zeros(d, d)
    for start in range(0, n, chunk):
        unfolded = patches(x[start : start + chunk], conv)  # (n_c, d, T)
        flat = unfolded.transpose(0, 1).reshape(d, -1)  # (d, n_c·T)
        gram.addmm_(flat, flat.T)
    n_rows = n * t
    if not with_bias:
        return gram / n_rows
    factor = x.new_empty(d + 1, d + 1)
    factor[:d, :d] = gram / n_rows
    mean = means.mean(dim=0)  # (1/(N·T)) Σ_{n,t} a_{n,t}
    factor[:d, d] = mean
    factor[d, :d] = mean
    factor[d, d] = 1.0
    return factor


def output_factor(
    grad_output: torch.Tensor,
    approx: ConvApprox = DEFAULT_CONV_APPROX,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """The batch statistic G (O, O) from ∂L/∂s (N, O, H', W'), g = grad_scale · ∂L/∂s."""
    _check_approx(approx)
    grad_output = _batched(grad_output)
    n, o = grad_output.shape[0], grad_output.shape[1]
    if approx == "expand":
        flat = grad_output.transpose(0, 1).reshape(o, -1)  # (O, N·T)
    else:
        flat = grad_output.sum(dim=(2, 3)).T  # (O, N)
    return (flat @ flat.T).mul_(grad_scale * grad_scale / n)


def gradient_block(conv: nn.Conv2d, weight_grad: torch.Tensor | None = None) -> torch.Tensor | None:
    """[∇W̃ | ∇b] as one (O, C·kh·kw[+1]) matrix (∇W: ``weight_grad`` if given, else the weight's
    ``.grad``); None if the weight got no gradient. A bias without a gradient counts as zero."""
    if weight_grad is None:
        weight_grad = conv.weight.grad
    if weight_grad is None:
        return None
    flat = weight_grad.reshape(weight_grad.shape[0], -1)
    if conv.bias is None:
        return flat
    bias_grad = conv.bias.grad if conv.bias.grad is not None else torch.zeros_like(conv.bias)
    return torch.cat([flat, bias_grad.unsqueeze(1)], dim=1)


def split_gradient_block(
    conv: nn.Conv2d, block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of ``gradient_block``: (weight-shaped (O, C, kh, kw) part, bias part or None)."""
    weight_part = block[:, :-1] if conv.bias is not None else block
    bias_part = block[:, -1] if conv.bias is not None else None
    return weight_part.reshape(conv.weight.shape), bias_part


def _check_approx(approx: str) -> None:
    if approx not in CONV_APPROXIMATIONS:
        choices = ", ".join(repr(a) for a in CONV_APPROXIMATIONS)
        raise ValueError(f"conv approximation must be one of {choices}, got {approx!r}")


def _batched(t: torch.Tensor) -> torch.Tensor:
    # nn.Conv2d also accepts one unbatched (C, H, W) example.
    if t.dim() == 3:
        return t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(t.shape)}")
    return t


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))
