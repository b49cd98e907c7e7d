"""The model builders: shapes and layer names, activations, default init, argument checks.

Tests that run a forward pass do so on each available device (the ``device`` fixture). The rest
inspect modules built on the CPU, where the builders always build (same seed, same weights on
every device), or check arguments: no device is involved.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from kfaclab.choices import ACTIVATIONS
from kfaclab.errors import UsageError
from kfaclab.models import ACTIVATION_MODULES, ToImage, build_cnn, build_mlp
from rerun import assert_same


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_depth_counts_linear_layers_with_expected_shapes(depth: int, device: torch.device) -> None:
    model = build_mlp(depth=depth, width=32, in_features=20, out_features=7).to(device)
    layers = linears(model)
    assert len(layers) == depth
    sizes = [20] + [32] * (depth - 1) + [7]
    assert [(m.in_features, m.out_features) for m in layers] == list(itertools.pairwise(sizes))
    assert all(m.bias is not None for m in layers)
    assert model(torch.zeros(5, 20, device=device)).shape == (5, 7)


def test_default_is_the_paper_model() -> None:
    model = build_mlp()
    shapes = [tuple(m.weight.shape) for m in linears(model)]
    assert shapes == [(100, 784), (100, 100), (100, 100), (100, 100), (100, 100), (10, 100)]
    # Named layers, so diagnostics read "fc3"; positional indexing still works.
    assert [name for name, _ in model.named_children()][:3] == ["fc1", "act1", "fc2"]
    assert model[0] is model.fc1
    assert isinstance(model[-1], nn.Linear)


@pytest.mark.parametrize(("activation", "cls"), [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_activation_between_layers_never_after_the_last(activation: str, cls: type) -> None:
    model = build_mlp(depth=4, width=8, activation=activation)
    kinds = [type(m) for m in model.children()]
    assert kinds == [nn.Linear, cls, nn.Linear, cls, nn.Linear, cls, nn.Linear]


def test_identity_is_a_deep_linear_network_without_activation_modules(
    device: torch.device,
) -> None:
    model = build_mlp(depth=6, activation="identity")
    assert all(isinstance(m, nn.Linear) for m in model.children())
    assert len(list(model.children())) == 6
    # A product of affine maps: f(x + y) - f(y) = f(x) - f(0).
    x, y = torch.randn(3, 784, dtype=torch.float64), torch.randn(3, 784, dtype=torch.float64)
    x, y = x.to(device), y.to(device)
    model = model.to(device, torch.float64)
    zero = model(torch.zeros(1, 784, dtype=torch.float64, device=device))
    torch.testing.assert_close(model(x + y) - model(y), model(x) - zero)


def test_pytorch_default_init_bounds() -> None:
    torch.manual_seed(0)
    for layer in linears(build_mlp(depth=6, width=100)):
        bound = 1.0 / math.sqrt(layer.in_features)
        for param in (layer.weight, layer.bias):
            assert param.abs().max().item() <= bound
        # Uniform over the whole interval, not some narrower scheme: the extremes come close.
        assert layer.weight.abs().max().item() > 0.95 * bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_seed_gives_identical_models() -> None:
    torch.manual_seed(123)
    a = build_mlp(depth=3, width=16)
    torch.manual_seed(123)
    b = build_mlp(depth=3, width=16)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"width": -3}, "width must be >= 1, got -3"),
        ({"in_features": 0}, "in_features must be >= 1, got 0"),
        ({"out_features": 0}, "out_features must be >= 1, got 0"),
        ({"depth": 2.5}, "depth must be an integer >= 1, got 2.5"),
        ({"depth": True}, "depth must be an integer >= 1, got True"),
        (
            {"activation": "gelu"},
            "activation must be one of 'relu', 'tanh', 'identity', got 'gelu'",
        ),
    ],
)
def test_bad_arguments_are_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        build_mlp(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


# --- build_cnn ---------------------------------------------------------------------------------


def test_every_activation_choice_has_a_module() -> None:
    assert tuple(ACTIVATION_MODULES) == ACTIVATIONS


def _child(model: nn.Module, name: str, kind: type[nn.Module] = nn.Conv2d) -> Any:
    module = model.get_submodule(name)
    assert isinstance(module, kind)
    return module


def test_cnn_default_is_lenet_with_readable_names() -> None:
    model = build_cnn()
    conv1, conv2 = _child(model, "conv1"), _child(model, "conv2")
    names = [name for name, _ in model.named_children()]
    assert names == [
        "image",
        "conv1",
        "act1",
        "pool1",
        "conv2",
        "act2",
        "pool2",
        "flatten",
        "fc1",
        "act3",
        "fc2",
        "act4",
        "fc3",
    ]
    assert (conv1.in_channels, conv1.out_channels) == (1, 6)
    assert conv1.kernel_size == (5, 5) and conv1.padding == (2, 2)
    assert (conv2.in_channels, conv2.out_channels) == (6, 16)
    assert conv2.padding == (0, 0)
    assert [tuple(m.weight.shape) for m in linears(model)] == [(120, 400), (84, 120), (10, 84)]
    assert all(
        isinstance(model.get_submodule(n), nn.ReLU) for n in ("act1", "act2", "act3", "act4")
    )
    assert sum(p.numel() for p in model.parameters()) == 61706  # LeNet-5 with 28×28 inputs


def test_cnn_takes_flat_rows_and_images_alike(device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_cnn().to(device, torch.float64)
    x = torch.rand(5, 784, dtype=torch.float64).to(device)
    out = model(x)
    assert out.shape == (5, 10)
    # The same computation twice: bitwise on the CPU, tests/rerun.py's tolerance on CUDA.
    assert_same(model(x.reshape(5, 1, 28, 28)), out)
    # The flat row is the image read row by row: conv1 sees pixel (r, c) at index 28r + c.
    image = x.reshape(5, 1, 28, 28)
    as_image = _child(model, "image", ToImage)(x)
    assert torch.equal(as_image, image)
    assert torch.equal(as_image[2, 0, 3, 7], x[2, 28 * 3 + 7])


def test_cnn_intermediate_shapes(device: torch.device) -> None:
    model = build_cnn(
        channels=(4, 8), hidden=(32, 16), in_channels=3, image_size=32, out_features=7
    ).to(device)
    shapes = {}
    h = torch.zeros(2, 3 * 32 * 32, device=device)
    for name, module in model.named_children():
        h = module(h)
        shapes[name] = tuple(h.shape[1:])
    assert shapes["conv1"] == (4, 32, 32)
    assert shapes["pool1"] == (4, 16, 16)
    assert shapes["conv2"] == (8, 12, 12)
    assert shapes["pool2"] == (8, 6, 6)
    assert shapes["flatten"] == (8 * 6 * 6,)
    assert shapes["fc3"] == (7,)


@pytest.mark.parametrize(("activation", "cls"), [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_cnn_activations(activation: str, cls: type) -> None:
    model = build_cnn(activation=activation)
    acts = [m for m in model.children() if isinstance(m, (nn.ReLU, nn.Tanh))]
    assert len(acts) == 4 and all(type(m) is cls for m in acts)
    assert isinstance(model[-1], nn.Linear)


def test_cnn_identity_has_no_activation_modules(device: torch.device) -> None:
    model = build_cnn(activation="identity").to(device)
    assert not any(name.startswith("act") for name, _ in model.named_children())
    assert model(torch.zeros(1, 784, device=device)).shape == (1, 10)


def test_cnn_pytorch_default_init_and_seed() -> None:
    torch.manual_seed(7)
    a = build_cnn()
    torch.manual_seed(7)
    b = build_cnn()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for conv in (_child(a, "conv1"), _child(a, "conv2")):
        bound = 1.0 / math.sqrt(conv.weight[0].numel())  # fan_in = C·kh·kw
        assert conv.weight.abs().max().item() <= bound
        assert conv.weight.abs().max().item() > 0.9 * bound
        assert conv.bias is not None and conv.bias.abs().max().item() <= bound


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 8}, "image_size must be >= 10 (two 5×5 convs and 2×2 pools), got 8"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"channels": (6,)}, "channels must be a pair of integers >= 1, got (6,)"),
        ({"hidden": (120, 0)}, "hidden must be >= 1, got 0"),
        (
            {"activation": "gelu"},
            "activation must be one of 'relu', 'tanh', 'identity', got 'gelu'",
        ),
    ],
)
def test_cnn_bad_arguments_are_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        build_cnn(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
