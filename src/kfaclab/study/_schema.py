"""Strict reading of TOML tables: every key known, every value checked, errors as one line.

The helpers take the dotted path of the value ("search.n_trials") so that each message names
what is wrong, the rule, and the bad value, and unknown keys get the allowed ones and the
closest match (a misspelt key must never be silently ignored: it would change the protocol).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from kfaclab.errors import UsageError

# Every number of a protocol ends up in a float32 trial (the default dtype): a value beyond
# float32's range passes a float64 check and then turns into inf inside the first step.
FLOAT32_MAX = 3.4028234663852886e38
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit value
# Keys of a protocol file that describe the machine rather than the study: they are left out of
# the stored protocol that a resumed or parallel sweep must match (``protocol.stored_form``), and
# ``first_difference`` skips them in protocols stored before that, so the same study runs on
# machines whose dataset folders differ.
MACHINE_KEYS = (("data", "data_dir"),)
_MACHINE_PATHS = frozenset(".".join(k) for k in MACHINE_KEYS)


def check_keys(
    table: Mapping[str, Any], path: str, allowed: Iterable[str], required: Iterable[str] = ()
) -> None:
    """Unknown keys and missing required keys of ``table`` (found at ``path``) are errors."""
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{path}.{key}" if path else key
            raise UsageError(f"unknown key {where!r}; allowed: {', '.join(allowed)}{hint}")
    for key in required:
        if key not in table:
            where = f"{path}.{key}" if path else key
            raise UsageError(f"{where} is required")


def table(parent: Mapping[str, Any], key: str, path: str, required: bool = True) -> dict[str, Any]:
    """The sub-table ``parent[key]`` ({} when optional and absent)."""
    where = f"{path}.{key}" if path else key
    if key not in parent:
        if required:
            raise UsageError(f"[{where}] is required")
        return {}
    value = parent[key]
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table, got {value!r}")
    return value


def string(value: Any, where: str, choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} must be a non-empty string, got {value!r}")
    if choices is not None:
        options = tuple(choices)
        if value not in options:
            raise UsageError(f"{where} must be one of {', '.join(options)}, got {value!r}")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where} must be true or false, got {value!r}")
    return value


def integer(value: Any, where: str, minimum: int | None = None) -> int:
    # bool is an int in Python; `n_trials = true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{where} must be >= {minimum}, got {value!r}")
    return value


def number(
    value: Any,
    where: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    positive: bool = False,
) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UsageError(f"{where} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise UsageError(f"{where} must be finite, got {value!r}")
    if abs(x) > FLOAT32_MAX:
        raise UsageError(f"{where} must be within float32's range (±3.4e38), got {value!r}")
    if positive and not x > 0:
        raise UsageError(f"{where} must be > 0, got {value!r}")
    if minimum is not None and x < minimum:
        raise UsageError(f"{where} must be >= {minimum}, got {value!r}")
    if maximum is not None and x > maximum:
        raise UsageError(f"{where} must be <= {maximum}, got {value!r}")
    if below is not None and not x < below:
        raise UsageError(f"{where} must be < {below}, got {value!r}")
    return x


def int_list(value: Any, where: str, minimum: int = 0, unique: bool = False) -> tuple[int, ...]:
    """A list of integers, increasing without repeats (``unique``: any order, no repeats)."""
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list of integers, got {value!r}")
    items = tuple(integer(v, f"{where}[{i}]", minimum) for i, v in enumerate(value))
    if unique:
        if len(set(items)) != len(items):
            raise UsageError(f"{where} must not repeat a value, got {value!r}")
    elif list(items) != sorted(set(items)):
        raise UsageError(f"{where} must be increasing without repeats, got {value!r}")
    return items


def float_list(value: Any, where: str, *, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list of numbers, got {value!r}")
    items = tuple(number(v, f"{where}[{i}]", positive=positive) for i, v in enumerate(value))
    if len(set(items)) != len(items):
        raise UsageError(f"{where} must not repeat a value, got {value!r}")
    return items


def first_difference(stored: Any, given: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted path, stored value, given value) where two loaded TOML dicts differ.

    Keys are visited in a fixed (sorted) order so the message is the same on every run.
    A key present on one side only shows ``<absent>`` on the other; ``MACHINE_KEYS`` are skipped.
    """
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in sorted(set(stored) | set(given)):
            where = f"{path}.{key}" if path else key
            if where in _MACHINE_PATHS:
                continue
            if key not in stored:
                return where, "<absent>", given[key]
            if key not in given:
                return where, stored[key], "<absent>"
            found = first_difference(stored[key], given[key], where)
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        for i, (a, b) in enumerate(zip(stored, given, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    # 1 and 1.0 are the same TOML number as far as a protocol is concerned.
    same = stored == given and type(stored) is type(given)
    if not same and isinstance(stored, int | float) and isinstance(given, int | float):
        same = not isinstance(stored, bool) and not isinstance(given, bool) and stored == given
    return None if same else (path, stored, given)
