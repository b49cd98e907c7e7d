"""Checks a ``TrialConfig`` before any work starts, so a bad value fails in milliseconds with a
message that names the field, the rule and the value (the CLI prints it as one line, exit 2)."""

from __future__ import annotations

import math
from typing import Any

from kfaclab.errors import UsageError
from kfaclab.trial_types import TrialConfig

_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "kfac"),
    "damping_form": ("exact", "factored"),
    "fisher": ("empirical", "mc"),
    "dataset": ("mnist", "fashion-mnist"),
    "activation": ("relu", "tanh", "identity"),
    "dtype": ("float32", "float64"),
}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UsageError(f"{name} must be a number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")


def _steps(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple | list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value
    ):
        raise UsageError(f"{name} must be a list of integers >= 0, got {value!r}")


def validate_config(config: TrialConfig) -> None:
    """Raise ``UsageError`` for the first invalid field; return None when the config is usable."""
    for name, choices in _CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    lr = _number("lr", config.lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"lr must be > 0, got {config.lr!r}")
    # α is the final fraction of the learning rate: 1 keeps it constant, 0 decays to 0 at the end.
    if not 0.0 <= _number("lr_decay", config.lr_decay) <= 1.0:
        raise UsageError(f"lr_decay must be in [0, 1], got {config.lr_decay!r}")
    if not 0.0 <= _number("momentum", config.momentum) < 1.0:
        raise UsageError(f"momentum must be in [0, 1), got {config.momentum!r}")
    if config.optimizer == "kfac":
        _validate_kfac(config)

    for name in ("depth", "width", "batch_size", "epochs"):
        _positive_int(name, getattr(config, name))
    if config.steps is not None:
        _positive_int("steps", config.steps)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise UsageError(f"seed must be an integer >= 0, got {config.seed!r}")
    _steps("eval_steps", config.eval_steps)
    _steps("histogram_steps", config.histogram_steps)
    bins = config.histogram_bins
    if not (bins.n_bins >= 1 and bins.log10_max > bins.log10_min):
        raise UsageError(
            f"histogram_bins must have n_bins >= 1 and log10_max > log10_min, got {bins}"
        )
    if not _number("divergence_loss", config.divergence_loss) > 0:
        raise UsageError(f"divergence_loss must be > 0, got {config.divergence_loss!r}")


def _validate_kfac(config: TrialConfig) -> None:
    # A mapping spec is checked by build_damping itself (it knows every strategy's constants);
    # a bare float is the common case, checked here so the message is the documented one.
    if not isinstance(config.damping, dict):
        lam = _number("damping", config.damping)
        if not (lam > 0 and math.isfinite(lam)):
            raise UsageError(f"damping must be > 0, got {config.damping!r}")
    if not 0.0 <= _number("factor_decay", config.factor_decay) < 1.0:
        raise UsageError(f"factor_decay must be in [0, 1), got {config.factor_decay!r}")
    _positive_int("factor_every", config.factor_every)
    _positive_int("inverse_every", config.inverse_every)
    if config.kl_clip is not None and not _number("kl_clip", config.kl_clip) > 0:
        raise UsageError(f"kl_clip must be > 0 or None, got {config.kl_clip!r}")
