"""Conv2d K-FAC math (kfaclab.optim.conv) against independent float64 oracles.

The oracles never use F.unfold: patches come from explicit loops over output locations and kernel
offsets (tests/conv_oracle.py), per-example output gradients from torch.func on a per-example
loss, and per-example parameter gradients from torch.func.vmap(grad) over the whole network.

The library's functions run on each available device (the ``device`` fixture, issue 16); the
oracles run on the CPU, and the results meet them there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from conv_oracle import kronecker_factors, loop_patches, oracle_factors
from kfaclab.optim.conv import (
    ConvApprox,
    check_conv,
    conv_geometry,
    conv_rows,
    gradient_block,
    input_factor,
    mean_patches,
    output_factor,
    patches,
    split_gradient_block,
)

CONFIGS: list[dict[str, Any]] = [
    {"kernel_size": 3, "stride": 1, "padding": 0},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (2, 3), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
    {"kernel_size": 3, "padding": "same", "dilation": 2},
    {"kernel_size": (2, 4), "padding": "same"},  # even kernels: asymmetric padding
    {"kernel_size": 2, "padding": "valid", "bias": False},
]


def _conv(seed: int, c_in: int = 2, c_out: int = 3, **kwargs: Any) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, **kwargs).double()


# PyTorch warns that 'same' with an even kernel pads a copy of the input: expected here.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("config", CONFIGS)
def test_patches_reproduce_the_convolution(config: dict[str, Any], device: torch.device) -> None:
    conv = _conv(0, **config).to(device)
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64).to(device)
    out = conv(x)  # (N, O, H', W')
    unfolded = patches(x, conv)  # (N, d, T)
    geo = conv_geometry(conv, (7, 6))
    assert geo.output == tuple(out.shape[2:])
    weight = conv.weight.reshape(conv.out_channels, -1)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
    rebuilt = (weight @ unfolded + bias[:, None]).reshape(out.shape)
    torch.testing.assert_close(rebuilt, out, rtol=0, atol=1e-13)
    # Patches are copies of input pixels: equal to the CPU loops' to the last bit on any device.
    looped = loop_patches(x.cpu(), conv)  # reads only the conv's geometry
    torch.testing.assert_close(unfolded.transpose(1, 2).cpu(), looped, rtol=0, atol=0)
    torch.testing.assert_close(mean_patches(x, conv), unfolded.mean(dim=2), rtol=0, atol=1e-15)


def test_unbatched_input_is_one_example(device: torch.device) -> None:
    conv = _conv(1, kernel_size=3, padding=1).to(device)
    x = torch.randn(2, 5, 5, dtype=torch.float64).to(device)
    torch.testing.assert_close(input_factor(x, conv), input_factor(x[None], conv))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            nn.Conv2d(4, 4, 3, groups=2),
            "conv3: K-FAC supports nn.Conv2d with groups=1 only, got groups=2",
        ),
        (
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
            "conv3: K-FAC supports nn.Conv2d with padding_mode='zeros' only, "
            "got padding_mode='reflect'",
        ),
        (nn.Linear(3, 3), "conv3: expected an nn.Conv2d, got Linear"),
    ],
)
def test_unsupported_layers_are_refused_by_name(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_conv(module, "conv3")
    assert str(info.value) == message


def test_every_function_refuses_unsupported_layers(device: torch.device) -> None:
    grouped = nn.Conv2d(4, 4, 3, groups=2).to(device)
    x = torch.randn(1, 4, 5, 5).to(device)
    rule = "groups=1 only, got groups=2"
    with pytest.raises(ValueError, match=rf"^Conv2d\(4, 4, kernel_size=\(3, 3\).*{rule}$"):
        input_factor(x, grouped, "reduce")
    with pytest.raises(ValueError, match=rule):
        conv_rows(x, grouped(x).detach(), grouped, "expand")


def test_unknown_approximation_is_refused(device: torch.device) -> None:
    conv = _conv(0, kernel_size=3).to(device)
    x = torch.zeros(1, 2, 5, 5, dtype=torch.float64, device=device)
    with pytest.raises(
        ValueError, match="conv approximation must be one of 'expand', 'reduce', got 'mean'"
    ):
        input_factor(x, conv, "mean")  # type: ignore[arg-type]


def test_expand_input_factor_is_the_same_in_chunks(device: torch.device) -> None:
    conv = _conv(2, kernel_size=3, padding=1).to(device)
    x = torch.randn(7, 2, 6, 6, dtype=torch.float64).to(device)
    whole = input_factor(x, conv, "expand")
    chunked = input_factor(x, conv, "expand", chunk_entries=2 * 18 * 36)  # two examples a chunk
    torch.testing.assert_close(chunked, whole, rtol=1e-14, atol=1e-15)


# --- a tiny conv net, its per-example and per-location gradients --------------------------------


def _net(seed: int, readout: bool = False) -> nn.Sequential:
    """Two convolutions (stride/padding, then 'same' with an even kernel and dilation). With
    ``readout`` the second conv's output goes straight into a linear loss (see _losses)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(1, 2)),
    ]
    if not readout:
        layers += [nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)]
    return nn.Sequential(*layers).double()


def _at(net: nn.Sequential, index: int) -> nn.Conv2d:
    return check_conv(net[index], f"net[{index}]")


def _losses(
    net: nn.Sequential, out: torch.Tensor, y: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Per-example losses: cross-entropy, or ℓₙ = ⟨c, Σ_t s_{n,:,t}⟩ for a readout net, whose
    output gradient g_{n,t} = c is the same at every example and location."""
    if isinstance(net[-1], nn.Linear):
        return F.cross_entropy(out, y, reduction="none")
    return torch.einsum("nohw,o->n", out, c)


def _setup(
    readout: bool = False,
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor]:
    net = _net(3, readout)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=g)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    return net, x, y, c


def _captures(
    net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """What the engine's hooks would see after loss.backward() on the *mean* loss: per conv
    layer index, (input, ∂L/∂s)."""
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    h = x
    for i, module in enumerate(net):
        if isinstance(module, nn.Conv2d):
            inputs[i] = h.detach()
            h = outputs[i] = module(h)
            h.retain_grad()
        else:
            h = module(h)
    net.zero_grad()
    _losses(net, h, y, c).mean().backward()
    return {i: (inputs[i], _grad(outputs[i])) for i in outputs}


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def _per_location(
    net: nn.Sequential, index: int, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """∇_{n,t} = g_{n,t} ā_{n,t}ᵀ for conv ``net[index]``: (N, T, O, d+1), g from torch.func."""
    prefix, conv, suffix = net[:index], _at(net, index), net[index + 1 :]
    with torch.no_grad():
        a = loop_patches(prefix(x), conv)  # (N, T, d)
        s = conv(prefix(x))  # (N, O, H', W')

    def loss_one(s_one: torch.Tensor, y_one: torch.Tensor) -> torch.Tensor:
        out = suffix(s_one[None])
        return _losses(net, out, y_one[None], c).sum()

    g = vmap(grad(loss_one))(s, y)  # (N, O, H', W'): ∂ℓₙ/∂s_{n}
    g = g.flatten(2).transpose(1, 2)  # (N, T, O)
    a_bar = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return torch.einsum("nto,ntd->ntod", g, a_bar)


def _per_example(
    net: nn.Sequential, index: int, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """∇ₙ of [W̃ | b] of conv ``net[index]`` by torch.func over the whole network: (N, O, d+1)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_one(
        p: dict[str, torch.Tensor], x_one: torch.Tensor, y_one: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(net, p, (x_one[None],))
        return _losses(net, out, y_one[None], c).sum()

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    w, b = grads[f"{index}.weight"], grads[f"{index}.bias"]
    return torch.cat([w.flatten(2), b[..., None]], dim=2)


def _rel(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    ours, oracle = ours.detach(), oracle.detach()
    return float((ours - oracle).abs().max() / oracle.abs().max())


@pytest.mark.parametrize("index", [0, 2])
def test_per_location_oracle_sums_to_the_per_example_gradient(index: int) -> None:
    # The two oracles against each other: no library code runs, so on the CPU only.
    net, x, y, c = _setup()
    torch.testing.assert_close(
        _per_location(net, index, x, y, c).sum(dim=1),
        _per_example(net, index, x, y, c),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("index", [0, 2])
def test_factors_equal_their_definitions_from_per_location_gradients(
    approx: ConvApprox, index: int, device: torch.device
) -> None:
    net, x, y, c = _setup()
    x_in, grad_out = _captures(net, x, y, c)[index]
    n = x.shape[0]
    per_loc = _per_location(net, index, x, y, c)  # (N, T, O, d+1)
    g = per_loc[:, :, :, -1]  # the bias part of ∇_{n,t} is g_{n,t}: (N, T, O)
    a_bar = torch.cat(
        [loop_patches(x_in, _at(net, index)), torch.ones(*g.shape[:2], 1).double()], -1
    )
    t = g.shape[1]
    if approx == "expand":
        a_oracle = torch.einsum("ntd,nte->de", a_bar, a_bar) / (n * t)
        g_oracle = torch.einsum("nto,ntp->op", g, g) / n
    else:
        a_mean, g_sum = a_bar.mean(dim=1), g.sum(dim=1)
        a_oracle, g_oracle = a_mean.T @ a_mean / n, g_sum.T @ g_sum / n
    # Ours on the device under test (the oracle stays on the CPU).
    conv = _at(net, index).to(device)
    x_in, grad_out = x_in.to(device), grad_out.to(device)
    a_ours, g_ours = kronecker_factors(x_in, grad_out, conv, approx, grad_scale=n)
    assert a_ours.device.type == g_ours.device.type == device.type
    assert _rel(a_ours.cpu(), a_oracle) < 1e-13
    assert _rel(g_ours.cpu(), g_oracle) < 1e-12

    # The engine's form: A = (1/R) Σ [x;1][x;1]ᵀ, G = (scale²/R) Σ y yᵀ over R rows.
    rows = conv_rows(x_in, grad_out, conv, approx, grad_scale=n)
    r = rows.inputs.shape[0]
    assert r == rows.output_grads.shape[0] == (n * t if approx == "expand" else n)
    assert (rows.examples, rows.locations) == (n, t)
    x_bar = torch.cat([rows.inputs, rows.inputs.new_ones(r, 1)], dim=1).cpu()
    assert _rel(x_bar.T @ x_bar / r, a_oracle) < 1e-13
    y_rows = rows.output_grads.cpu()
    assert _rel(y_rows.T @ y_rows * rows.grad_scale**2 / r, g_oracle) < 1e-12


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_oracle_module_factors_agree(approx: ConvApprox, device: torch.device) -> None:
    """tests/conv_oracle.py (used by the whole-step test) gives the same factors as the
    per-location construction above, for the convolutions and for the Linear head (the oracles
    on the CPU, the library's factors of the device's captures on ``device``)."""
    net, x, y, c = _setup()
    n = x.shape[0]

    def ce_one(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target, reduction="sum")

    factors = oracle_factors(net, x, y, ce_one, approx)
    assert set(factors) == {"0", "2", "5"}
    head = net[5]
    assert isinstance(head, nn.Linear)
    h = net[:5](x).detach()
    h_bar = torch.cat([h, torch.ones(n, 1).double()], dim=1)
    s = net[:6](x)
    g_head = torch.autograd.grad(F.cross_entropy(s, y, reduction="sum"), s)[0]
    assert _rel(factors["5"][0], h_bar.T @ h_bar / n) < 1e-14
    assert _rel(factors["5"][1], g_head.T @ g_head / n) < 1e-13
    net.to(device)
    captures = _captures(net, x.to(device), y.to(device), c.to(device))
    for index, (x_in, grad_out) in captures.items():
        a, g = kronecker_factors(x_in, grad_out, _at(net, index), approx, grad_scale=n)
        assert a.device.type == g.device.type == device.type
        assert _rel(a.cpu(), factors[str(index)][0]) < 1e-13
        assert _rel(g.cpu(), factors[str(index)][1]) < 1e-12


def test_readout_net_expand_is_the_location_diagonal_fisher_and_reduce_the_fisher(
    device: torch.device,
) -> None:
    """With g_{n,t} = c everywhere, both Kronecker products are exact (module docstring):
    expand = (1/N) Σ_{n,t} vec ∇_{n,t} vec ∇_{n,t}ᵀ, reduce = (1/N) Σₙ vec ∇ₙ vec ∇ₙᵀ = F.
    So G⊗A sits on the per-example Fisher's scale and λ means what it means for nn.Linear.
    (The torch.func oracles on the CPU; the captures, factors and gradient block on ``device``.)"""
    net, x, y, c = _setup(readout=True)
    n = x.shape[0]
    per_loc = _per_location(net, 2, x, y, c).flatten(2)  # (N, T, O·(d+1)), row-major vec
    dense_expand = torch.einsum("ntp,ntq->pq", per_loc, per_loc) / n
    per_ex = _per_example(net, 2, x, y, c).flatten(1)  # (N, O·(d+1))
    fisher = per_ex.T @ per_ex / n
    net.to(device)
    x_in, grad_out = _captures(net, x.to(device), y.to(device), c.to(device))[2]
    conv = _at(net, 2)
    a, g = (f.cpu() for f in kronecker_factors(x_in, grad_out, conv, "expand", grad_scale=n))
    assert _rel(torch.kron(g, a), dense_expand) < 1e-12
    a, g = (f.cpu() for f in kronecker_factors(x_in, grad_out, conv, "reduce", grad_scale=n))
    assert _rel(torch.kron(g, a), fisher) < 1e-12

    # Exact damping on this block: (G⊗A + λI)⁻¹∇ through the factors' eigenbases equals the
    # dense solve with the true per-example Fisher.
    lam = 1e-2
    block = gradient_block(conv)
    assert block is not None
    block = block.cpu()
    ea, qa = torch.linalg.eigh(a)
    eg, qg = torch.linalg.eigh(g)
    rotated = qg.T @ block @ qa
    step = qg @ (rotated / (eg[:, None] * ea[None, :] + lam)) @ qa.T
    dense = torch.linalg.solve(fisher + lam * torch.eye(fisher.shape[0]).double(), block.flatten())
    assert _rel(step.flatten(), dense) < 1e-9


def test_gradient_block_is_autograd_and_expand_rows_rebuild_it(device: torch.device) -> None:
    net, x, y, c = _setup()
    net.to(device)
    # Leaves .grad of the mean loss on every parameter.
    captures = _captures(net, x.to(device), y.to(device), c.to(device))
    for index, (x_in, grad_out) in captures.items():
        conv = _at(net, index)
        block = gradient_block(conv)
        assert block is not None
        assert block.shape == (conv.out_channels, conv.weight[0].numel() + 1)
        weight_part, bias_part = split_gradient_block(conv, block)
        assert conv.weight.grad is not None and conv.bias is not None and conv.bias.grad is not None
        assert torch.equal(weight_part, conv.weight.grad)
        assert bias_part is not None and torch.equal(bias_part, conv.bias.grad)
        # Expand's rows are the raw ∂L/∂s rows: yᵀ[x; 1] summed over rows is the gradient.
        rows = conv_rows(x_in, grad_out, conv, "expand", grad_scale=x.shape[0])
        x_bar = torch.cat([rows.inputs, rows.inputs.new_ones(rows.inputs.shape[0], 1)], dim=1)
        assert _rel(rows.output_grads.T @ x_bar, block) < 1e-12


def test_gradient_block_without_bias(device: torch.device) -> None:
    conv = _conv(5, kernel_size=2, bias=False).to(device)
    assert gradient_block(conv) is None
    conv(torch.randn(2, 2, 4, 4, dtype=torch.float64).to(device)).pow(2).sum().backward()
    block = gradient_block(conv)
    assert block is not None and block.shape == (3, 8)
    weight_part, bias_part = split_gradient_block(conv, block)
    assert conv.weight.grad is not None
    assert bias_part is None and torch.equal(weight_part, conv.weight.grad)


def test_reduce_output_factor_sums_locations_and_averages_examples(device: torch.device) -> None:
    # ∂L/∂s = 1 at 9 locations, grad_scale 2, N = 2: ḡ = 2·9 per entry, G = (1/2)·2·ḡḡᵀ.
    ones = torch.ones(2, 3, 3, 3, dtype=torch.float64, device=device)
    g_sum = output_factor(ones, "reduce", 2.0)
    torch.testing.assert_close(g_sum.cpu(), torch.full((3, 3), 9.0 * 9.0 * 4.0).double())
