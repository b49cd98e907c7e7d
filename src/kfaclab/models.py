"""The study's models: the paper's fully connected network (784 → 100 ×5 → 10 by default) and a
small LeNet-like CNN for the CNN study.

The paper calls its model a "linear NN" and names no activation, so ``activation="identity"`` (a
deep linear network) is as first-class as ``"relu"``: it adds no activation modules at all, so the
MLP is exactly a product of affine maps.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kfaclab.choices import ACTIVATIONS
from kfaclab.errors import UsageError

# The module of each activation in kfaclab.choices.ACTIVATIONS (None: no module at all).
ACTIVATION_MODULES: dict[str, type[nn.Module] | None] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "identity": None,
}


def build_mlp(
    depth: int = 6,
    width: int = 100,
    activation: str = "relu",
    in_features: int = 784,
    out_features: int = 10,
) -> nn.Sequential:
    """A stack of ``depth`` nn.Linear layers, ``width`` units in each hidden layer.

    Layers are named ``fc1 … fc<depth>`` (and ``act1 …`` for the activations between them), so
    per-layer diagnostics read as "fc1", not as a position that shifts with the activation.
    Indexing still works: ``model[0]`` is ``fc1``. The last layer returns logits (no activation).

    Initialisation is PyTorch's nn.Linear default, untouched: weights by
    ``kaiming_uniform_(a=sqrt(5))`` and biases alike, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for both. Seed with ``torch.manual_seed`` before calling for a reproducible model; it is built
    on the CPU in float32 (move it with ``.to(device, dtype)``) so the same seed gives the same
    weights whatever device trains it.
    """
    _check_positive("depth", depth)
    _check_positive("width", width)
    _check_positive("in_features", in_features)
    _check_positive("out_features", out_features)
    act = _activation(activation)

    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(depth):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if act is not None and i < depth - 1:
            layers[f"act{i + 1}"] = act()
    return nn.Sequential(layers)


def build_cnn(
    activation: str = "relu",
    channels: tuple[int, int] = (6, 16),
    hidden: tuple[int, int] = (120, 84),
    in_channels: int = 1,
    image_size: int = 28,
    out_features: int = 10,
) -> nn.Sequential:
    """A LeNet-5-like CNN for square images, taking flat (N, in_channels·image_size²) batches.

    Layers, for the defaults on 28×28×1 (shapes per example):
        image (1, 28, 28) → conv1 5×5 pad 2 (6, 28, 28) → act1 → pool1 max 2 (6, 14, 14)
        → conv2 5×5 (16, 10, 10) → act2 → pool2 max 2 (16, 5, 5) → flatten (400)
        → fc1 (120) → act3 → fc2 (84) → act4 → fc3 (10 logits)
    The first module, ``image``, reshapes kfaclab's flat dataset rows (N, 784) into images; it
    accepts (N, 1, 28, 28) batches too. Names are stable ("conv2", "fc1"), so per-layer
    diagnostics read the same whatever the activation; ``activation="identity"`` adds no
    activation modules (the max-pooling keeps the network non-linear).

    Initialisation is PyTorch's default for nn.Conv2d and nn.Linear (U(±1/sqrt(fan_in)) for
    weights and biases), built on the CPU in float32 like ``build_mlp``.
    """
    for name, value in (
        ("in_channels", in_channels),
        ("image_size", image_size),
        ("out_features", out_features),
    ):
        _check_positive(name, value)
    for name, pair in (("channels", channels), ("hidden", hidden)):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise UsageError(f"{name} must be a pair of integers >= 1, got {pair!r}")
        for value in pair:
            _check_positive(name, value)
    # 5×5 'same' conv, pool, 5×5 valid conv, pool: the second conv needs a 5×5 input.
    if image_size < 10:
        raise UsageError(
            f"image_size must be >= 10 (two 5×5 convs and 2×2 pools), got {image_size}"
        )
    act = _activation(activation)
    side = (image_size // 2 - 4) // 2  # spatial size after pool2

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["image"] = ToImage(in_channels, image_size)
    layers["conv1"] = nn.Conv2d(in_channels, channels[0], 5, padding=2)
    _add_activation(layers, act, "act1")
    layers["pool1"] = nn.MaxPool2d(2)
    layers["conv2"] = nn.Conv2d(channels[0], channels[1], 5)
    _add_activation(layers, act, "act2")
    layers["pool2"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(channels[1] * side * side, hidden[0])
    _add_activation(layers, act, "act3")
    layers["fc2"] = nn.Linear(hidden[0], hidden[1])
    _add_activation(layers, act, "act4")
    layers["fc3"] = nn.Linear(hidden[1], out_features)
    return nn.Sequential(layers)


class ToImage(nn.Module):
    """(N, C·S·S) or (N, C, S, S) → (N, C, S, S): flat dataset rows as images (a view)."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.channels, self.size = channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.channels, self.size, self.size)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}"


def _activation(activation: str) -> type[nn.Module] | None:
    if activation not in ACTIVATIONS:
        choices = ", ".join(repr(a) for a in ACTIVATIONS)
        raise UsageError(f"activation must be one of {choices}, got {activation!r}")
    return ACTIVATION_MODULES[activation]


def _add_activation(
    layers: OrderedDict[str, nn.Module], act: type[nn.Module] | None, name: str
) -> None:
    if act is not None:
        layers[name] = act()


def _check_positive(name: str, value: object) -> None:
    # bool is an int subclass; depth=True is a bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")
