"""The MLP builder: layer count and shapes, activations, PyTorch's default init, argument checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from kfaclab.errors import UsageError
from kfaclab.models import build_mlp


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_depth_counts_linear_layers_with_expected_shapes(depth: int) -> None:
    model = build_mlp(depth=depth, width=32, in_features=20, out_features=7)
    layers = linears(model)
    assert len(layers) == depth
    sizes = [20] + [32] * (depth - 1) + [7]
    assert [(m.in_features, m.out_features) for m in layers] == list(itertools.pairwise(sizes))
    assert all(m.bias is not None for m in layers)
    assert model(torch.zeros(5, 20)).shape == (5, 7)


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


def test_identity_is_a_deep_linear_network_without_activation_modules() -> None:
    model = build_mlp(depth=6, activation="identity")
    assert all(isinstance(m, nn.Linear) for m in model.children())
    assert len(list(model.children())) == 6
    # A product of affine maps: f(x + y) - f(y) = f(x) - f(0).
    x, y = torch.randn(3, 784, dtype=torch.float64), torch.randn(3, 784, dtype=torch.float64)
    model = model.double()
    zero = model(torch.zeros(1, 784, dtype=torch.float64))
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
