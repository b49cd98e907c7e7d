"""Per-layer running state of K-FAC and its (de)serialisation for ``state_dict``.

Kept outside ``Optimizer.state`` on purpose: torch's ``load_state_dict`` casts every tensor in
per-parameter state to the parameter's dtype, which would turn index tensors into floats. Here each
tensor keeps its dtype and only moves to the layer's device, so a resumed run is bit-for-bit the
run that was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kfaclab.curvature.eigen import FactorEigen
from kfaclab.curvature.exact import ExactInverse
from kfaclab.curvature.factored import FactoredInverse
from kfaclab.errors import UsageError

# Half-precision models keep their curvature in float32: eigh has no bfloat16/float16 kernels,
# and the factors' small eigenvalues would not survive 8 bits of mantissa anyway.
_FACTOR_DTYPES = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def factor_dtype_of(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a layer's factors: the weight's, or float32 for a half-precision weight."""
    return _FACTOR_DTYPES.get(weight_dtype, weight_dtype)


Preconditioned = nn.Linear | nn.Conv2d


@dataclass
class LayerState:
    """One preconditioned layer: an nn.Linear, or an nn.Conv2d whose weight (O, C, kh, kw) is
    read as the matrix (O, C·kh·kw) (``kfaclab.optim.conv``); its block is [W̃ | b]."""

    name: str
    module: Preconditioned
    factor_a: torch.Tensor | None = None  # (in[+1], in[+1])
    factor_g: torch.Tensor | None = None  # (out, out)
    inverse: ExactInverse | FactoredInverse | None = None
    damping: float | None = None  # λ used for this layer at the last step
    # True while every captured input was independent of θ (raw data): A then depends only on
    # the data stream and its decompositions may be shared (curvature.cache).
    input_is_data: bool = True
    # True while the layer has a gradient but no capture has ever reached it (its module's
    # forward never ran, e.g. a weight used through F.linear): it then gets the plain gradient.
    plain: bool = False

    def __post_init__(self) -> None:
        # Read on every step of every layer: plain attributes, not nn.Module.__getattr__ (which
        # costs ~1 µs a call). Parameters are updated in place, so the references stay valid.
        self.weight: torch.Tensor = self.module.weight
        self.bias: torch.Tensor | None = self.module.bias
        self.has_bias = self.bias is not None
        # What split_block must undo: a conv weight's shape, a half-precision parameter's dtype.
        self._linear = isinstance(self.module, nn.Linear)
        self._reshaped = self.weight.dim() != 2
        self._cast = self.weight.dtype != factor_dtype_of(self.weight.dtype)

    @property
    def needs_inverse(self) -> bool:
        """Factors but no inverse (a first factorisation failed, or factors just arrived)."""
        has_factors = self.factor_a is not None and self.factor_g is not None
        return self.inverse is None and has_factors and not self.plain

    @property
    def is_linear(self) -> bool:
        return self._linear

    @property
    def casts(self) -> bool:
        """Whether ``split_block`` converts to the parameters' dtype (a copy, not a view)."""
        return self._cast

    @property
    def size_a(self) -> int:
        """Rows of A: the layer's inputs (a conv's patch size C·kh·kw), plus one for the bias."""
        return self.weight[0].numel() + (1 if self.has_bias else 0)

    @property
    def size_g(self) -> int:
        return self.weight.shape[0]

    @property
    def factor_dtype(self) -> torch.dtype:
        """The weight's dtype, or float32 for a float16/bfloat16 weight."""
        return factor_dtype_of(self.weight.dtype)

    def identity_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(I, I) of A's and G's sizes, in the factor dtype and the weight's device."""
        dtype, device = self.factor_dtype, self.weight.device
        eye_a = torch.eye(self.size_a, dtype=dtype, device=device)
        return eye_a, torch.eye(self.size_g, dtype=dtype, device=device)

    def gradient_block(self, weight_grad: torch.Tensor | None = None) -> torch.Tensor | None:
        """[∇W̃ | ∇b] as one (out, in[+1]) matrix in the factor dtype (∇W: ``weight_grad`` if
        given, else the weight's ``.grad``); None if the weight got no gradient."""
        if weight_grad is None:
            weight_grad = self.weight.grad
        if weight_grad is None:
            return None
        weight_grad = weight_grad.reshape(weight_grad.shape[0], -1)
        bias = self.bias
        if bias is None:
            block = weight_grad
        else:
            bias_grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
            block = torch.cat([weight_grad, bias_grad.unsqueeze(1).to(weight_grad.dtype)], dim=1)
        return block.to(self.factor_dtype) if self._cast else block

    def split_block(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inverse of ``gradient_block``: (weight-shaped part, bias part or None), in the
        parameters' dtype."""
        weight, bias = self.weight, self.bias
        weight_part = block if bias is None else block[:, :-1]
        if self._reshaped:
            weight_part = weight_part.reshape(weight.shape)
        if bias is None:
            return (weight_part.to(weight.dtype) if self._cast else weight_part), None
        if self._cast:
            return weight_part.to(weight.dtype), block[:, -1].to(bias.dtype)
        return weight_part, block[:, -1]

    def parameter_block(self) -> torch.Tensor:
        """[W̃ | b] as a new (out, in[+1]) tensor in the factor dtype."""
        weight, bias = self.weight.detach(), self.bias
        weight = weight.reshape(weight.shape[0], -1).to(self.factor_dtype)
        if bias is None:
            return weight.clone()
        return torch.cat([weight, bias.detach().unsqueeze(1).to(weight.dtype)], dim=1)

    def write_parameter_block(self, block: torch.Tensor) -> None:
        """Copy an (out, in[+1]) block into W and b."""
        weight_part, bias_part = self.split_block(block)
        with torch.no_grad():
            self.weight.copy_(weight_part)
            if bias_part is not None and self.bias is not None:
                self.bias.copy_(bias_part)

    # --- serialisation -------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "name": self.name,
            "factor_a": _clone(self.factor_a),
            "factor_g": _clone(self.factor_g),
            "damping": self.damping,
            "input_is_data": self.input_is_data,
        }
        if isinstance(self.inverse, ExactInverse):
            state["inverse"] = {
                "form": "exact",
                "a": _eigen_to_state(self.inverse.a),
                "g": _eigen_to_state(self.inverse.g),
            }
        elif isinstance(self.inverse, FactoredInverse):
            state["inverse"] = {
                "form": "factored",
                "inv_a": self.inverse.inv_a.clone(),
                "inv_g": self.inverse.inv_g.clone(),
                "damping": self.inverse.damping,
                "pi": self.inverse.pi,
            }
        else:
            state["inverse"] = None
        return state

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse a saved layer that is not this one (another name, or factors of another
        shape: a model of the same depth but another width)."""
        if canonical_name(state["name"]) != canonical_name(self.name):
            raise UsageError(
                f"state_dict layer must match the model's, got {state['name']!r} for {self.name!r}"
            )
        for key, size in (("factor_a", self.size_a), ("factor_g", self.size_g)):
            factor = state[key]
            if factor is not None and tuple(factor.shape) != (size, size):
                raise UsageError(
                    f"state_dict layer {self.name!r} must have {key} of shape ({size}, {size}), "
                    f"got {tuple(factor.shape)} (saved from a model of another width?)"
                )

    def load_state(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        device = self.weight.device
        self.factor_a = _to(state["factor_a"], device)
        self.factor_g = _to(state["factor_g"], device)
        self.damping = state["damping"]
        self.input_is_data = bool(state["input_is_data"])
        inverse = state["inverse"]
        if inverse is None:
            self.inverse = None
        elif inverse["form"] == "exact":
            self.inverse = ExactInverse(
                _eigen_from_state(inverse["a"], device), _eigen_from_state(inverse["g"], device)
            )
        else:
            self.inverse = FactoredInverse(
                inverse["inv_a"].to(device),
                inverse["inv_g"].to(device),
                inverse["damping"],
                inverse["pi"],
            )


class SplitViews:
    """``layer.split_block(block)`` per key, kept while ``block`` is the same tensor (a momentum
    buffer, updated in place from step to step): its weight and bias views stay valid, and
    making them anew costs two view operations per layer and step. A layer whose split converts
    dtypes (a copy, not a view) is split anew every time."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[object, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def __call__(
        self, key: object, layer: LayerState, block: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        held = self._held.get(key)
        if held is not None and held[0] is block:
            return held[1], held[2]
        weight_part, bias_part = layer.split_block(block)
        if not layer.casts:
            self._held[key] = (block, weight_part, bias_part)
        return weight_part, bias_part


# What wrappers put in front of a model's module names: torch.compile's OptimizedModule and
# DistributedDataParallel / DataParallel. A state saved under one wrapper loads under another.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def canonical_name(name: str) -> str:
    """A layer's name without the wrappers' prefixes (any number, in any order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device).clone()


def _eigen_to_state(e: FactorEigen) -> dict[str, Any]:
    return {
        "active": None if e.active is None else e.active.clone(),
        "values": e.values.clone(),
        "vectors": e.vectors.clone(),
    }


def _eigen_from_state(state: dict[str, Any], device: torch.device) -> FactorEigen:
    active = state["active"]
    return FactorEigen(
        None if active is None else active.to(device),
        state["values"].to(device).clone(),
        state["vectors"].to(device).clone(),
    )
