"""Checks a ``TrialConfig`` before any work starts, so a bad value fails in milliseconds with a
message that names the field, the rule and the value (the CLI prints it as one line, exit 2).

Beyond the documented ranges, values are refused that pass every range yet would crash or hang
later: numbers the trial's dtype cannot hold (lr = 1e39 is inf in float32), a device torch does
not know or this machine lacks, a seed torch's generators refuse, and models too large for the
machine (width 1e8, depth 1e5) — each as a one-line error rather than a traceback or an
out-of-memory kill an hour into a sweep.
"""

from __future__ import annotations

import math
import os
from itertools import pairwise
from typing import Any

import torch

from kfaclab import choices as ch
from kfaclab.data.loader import resolve_device
from kfaclab.errors import UsageError
from kfaclab.trial_types import TrialConfig

_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ch.OPTIMIZERS,
    "damping_form": ch.DAMPING_FORMS,
    "fisher": ch.FISHER_TYPES,
    "factor_init": ch.FACTOR_INITS,
    "conv_approx": ch.CONV_APPROXIMATIONS,
    "model": ch.MODELS,
    "dataset": ch.DATASETS,
    "activation": ch.ACTIVATIONS,
    "init": ch.INITS,
    "dtype": ch.DTYPES,
}
# Resource bounds: far above any model this laboratory studies (the paper's is 6 × 100), far
# below what would exhaust a machine before the memory estimate below even gets a say.
MAX_DEPTH = 1000
MAX_WIDTH = 65536
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit value
MAX_BINS = 100_000
_DTYPE_MAX = {"float32": float(torch.finfo(torch.float32).max), "float64": math.inf}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UsageError(f"{name} must be a number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def _finite_positive(name: str, value: Any, dtype: str) -> float:
    """A number > 0 that the trial's dtype holds as a finite value."""
    x = _number(name, value)
    if not x > 0:
        raise UsageError(f"{name} must be > 0, got {value!r}")
    if not x <= _DTYPE_MAX[dtype]:
        raise UsageError(
            f"{name} must be finite in {dtype} (<= {_DTYPE_MAX[dtype]:.3g}), got {value!r}"
        )
    return x


def _steps(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple | list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value
    ):
        raise UsageError(f"{name} must be a list of integers >= 0, got {value!r}")


def validate_config(config: TrialConfig) -> None:
    """Raise ``UsageError`` for the first invalid field; return None when the config is usable."""
    for name, allowed in _CHOICES.items():
        value = getattr(config, name)
        if value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    _finite_positive("lr", config.lr, config.dtype)
    # α is the final fraction of the learning rate: 1 keeps it constant, 0 decays to 0 at the end.
    if not 0.0 <= _number("lr_decay", config.lr_decay) <= 1.0:
        raise UsageError(f"lr_decay must be in [0, 1], got {config.lr_decay!r}")
    if not 0.0 <= _number("momentum", config.momentum) < 1.0:
        raise UsageError(f"momentum must be in [0, 1), got {config.momentum!r}")
    if config.optimizer == "kfac":
        _validate_kfac(config)
    elif config.lr_per_damping is not False:
        raise UsageError(
            f"lr_per_damping needs optimizer kfac (SGD has no λ), got {config.optimizer!r}"
        )

    depth = _positive_int("depth", config.depth, MAX_DEPTH)
    width = _positive_int("width", config.width, MAX_WIDTH)
    for name in ("batch_size", "epochs"):
        _positive_int(name, getattr(config, name))
    if config.steps is not None:
        _positive_int("steps", config.steps)
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    _steps("eval_steps", config.eval_steps)
    _steps("histogram_steps", config.histogram_steps)
    bins = config.histogram_bins
    lo, hi = _number("histogram_bins.log10_min", bins.log10_min), bins.log10_max
    if not (
        isinstance(bins.n_bins, int)
        and 1 <= bins.n_bins <= MAX_BINS
        and math.isfinite(lo)
        and math.isfinite(_number("histogram_bins.log10_max", hi))
        and hi > lo
    ):
        raise UsageError(
            f"histogram_bins must have 1 <= n_bins <= {MAX_BINS} and finite "
            f"log10_max > log10_min, got {bins}"
        )
    if not _number("divergence_loss", config.divergence_loss) > 0:
        raise UsageError(f"divergence_loss must be > 0, got {config.divergence_loss!r}")
    device = resolve_device(config.device)
    check_model_fits(config, depth, width, device)


def _validate_kfac(config: TrialConfig) -> None:
    # A mapping spec is checked by build_damping itself (it knows every strategy's constants);
    # a bare float is the common case, checked here so the message is the documented one.
    if not isinstance(config.damping, dict):
        _finite_positive("damping", config.damping, config.dtype)
    if not 0.0 <= _number("factor_decay", config.factor_decay) < 1.0:
        raise UsageError(f"factor_decay must be in [0, 1), got {config.factor_decay!r}")
    _positive_int("factor_every", config.factor_every)
    _positive_int("inverse_every", config.inverse_every)
    if config.kl_clip is not None:
        _finite_positive("kl_clip", config.kl_clip, config.dtype)
    if not isinstance(config.lr_per_damping, bool):
        raise UsageError(f"lr_per_damping must be true or false, got {config.lr_per_damping!r}")
    floor = _number("eigen_floor", config.eigen_floor)
    if not (floor >= 0 and math.isfinite(floor)):
        raise UsageError(f"eigen_floor must be a finite number >= 0, got {config.eigen_floor!r}")
    if floor and config.damping_form != "exact":
        raise UsageError(
            "eigen_floor needs damping_form='exact' (the factored form never decomposes), got "
            f"eigen_floor={config.eigen_floor!r} with damping_form={config.damping_form!r}"
        )


def estimated_bytes(config: TrialConfig, depth: int, width: int) -> int:
    """A lower estimate of a trial's memory: parameters with their gradient, momentum and update;
    for K-FAC the two factors per layer with their eigenbases and a decomposition's workspace;
    the activations of one batch. The dataset itself is not counted (it is shared)."""
    itemsize = 4 if config.dtype == "float32" else 8
    dims = [784, *([width] * (depth - 1)), 10]
    params = sum((i + 1) * o for i, o in pairwise(dims))
    factors = sum((i + 1) ** 2 + o**2 for i, o in pairwise(dims))
    kfac = 3 * factors if config.optimizer == "kfac" else 0
    activations = 3 * config.batch_size * sum(dims)
    return itemsize * (4 * params + kfac + activations)


def _device_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform reports it
        return None


def check_model_fits(config: TrialConfig, depth: int, width: int, device: torch.device) -> None:
    need = estimated_bytes(config, depth, width)
    have = _device_memory(device)
    if have is not None and need > have:
        raise UsageError(
            f"depth × width must fit in memory: depth {depth}, width {width} need about "
            f"{need / 2**30:.1f} GiB, the {device.type} device has {have / 2**30:.1f} GiB"
        )
