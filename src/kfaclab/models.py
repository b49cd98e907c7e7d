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

from kfaclab.choices import ACTIVATIONS, DEFAULT_INIT, INITS
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
    init: str = DEFAULT_INIT,
) -> nn.Sequential:
    """A stack of ``depth`` nn.Linear layers, ``width`` units in each hidden layer.

    Layers are named ``fc1 … fc<depth>`` (and ``act1 …`` for the activations between them), so
    per-layer diagnostics read as "fc1", not as a position that shifts with the activation.
    Indexing still works: ``model[0]`` is ``fc1``. The last layer returns logits (no activation).

    ``init="torch"`` (the default) is PyTorch's nn.Linear default, untouched: weights by
    ``kaiming_uniform_(a=sqrt(5))`` and biases alike, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for both; "he" and "glorot" redraw the weights afterwards (``initialise``). Seed with
    ``torch.manual_seed`` before calling for a reproducible model; it is built
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
    return initialise(nn.Sequential(layers), init)


def build_cnn(
    activation: str = "relu",
    channels: tuple[int, int] = (6, 16),
    hidden: tuple[int, int] = (120, 84),
    in_channels: int = 1,
    image_size: int = 28,
    out_features: int = 10,
    init: str = DEFAULT_INIT,
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

    Initialisation as ``build_mlp``'s ``init`` (default: PyTorch's, U(±1/sqrt(fan_in)) for
    weights and biases of nn.Conv2d and nn.Linear), built on the CPU in float32 like ``build_mlp``.
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
    return initialise(nn.Sequential(layers), init)


def initialise(model: nn.Sequential, init: str) -> nn.Sequential:
    """Redraw the weights of every nn.Linear and nn.Conv2d of ``model`` (in module order, from
    the global generator) and zero their biases; ``"torch"`` leaves the model untouched.

    fan_in = in_features (in_channels·kh·kw for a conv), fan_out = out_features (·kh·kw):
    - "he" (He et al. 2015, eq. 10, for ReLU): W ~ N(0, 2 / fan_in);
    - "glorot" (Glorot & Bengio 2010, eq. 16): W ~ U(±a), a = sqrt(6 / (fan_in + fan_out)).
    Why offer them: PyTorch's U(±1/sqrt(fan_in)) has fan_in·Var(W) = 1/3, so with ReLU each
    layer roughly sixths the forward variance and the deep layers start dominated by their
    biases; He keeps it near 1 for ReLU, Glorot for tanh.
    """
    if init not in INITS:
        raise UsageError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    if init == "torch":
        return model
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            weight = module.weight  # (out, in) or (out, in, kh, kw)
            field = weight[0, 0].numel()  # kh·kw for a conv, 1 for a linear layer
            fan_in, fan_out = weight.shape[1] * field, weight.shape[0] * field
            if init == "he":
                weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            else:
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                weight.uniform_(-bound, bound)
            if module.bias is not None:
                module.bias.zero_()
    return model


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
