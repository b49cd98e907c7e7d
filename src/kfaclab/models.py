"""The study's model: a fully connected network of nn.Linear layers (784 → 100 ×5 → 10 by default).

The paper calls its model a "linear NN" and names no activation, so ``activation="identity"`` (a
deep linear network) is as first-class as ``"relu"``: it adds no activation modules at all, so the
model is exactly a product of affine maps.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kfaclab.errors import UsageError

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
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
    if activation not in ACTIVATIONS:
        choices = ", ".join(repr(a) for a in ACTIVATIONS)
        raise UsageError(f"activation must be one of {choices}, got {activation!r}")
    act = ACTIVATIONS[activation]

    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(depth):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if act is not None and i < depth - 1:
            layers[f"act{i + 1}"] = act()
    return nn.Sequential(layers)


def _check_positive(name: str, value: object) -> None:
    # bool is an int subclass; depth=True is a bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")
