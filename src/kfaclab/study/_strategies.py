"""The damping-strategy cells and search ranges of a protocol: their frozen specs and checks.

Split from protocol.py (which reads the whole file) because a strategy entry is checked
against the damping package itself: its constant names and values are those
``kfaclab.damping.build_damping`` accepts, so a bad one fails when the protocol is read, not
in the first trial of a long sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfaclab.errors import UsageError
from kfaclab.study import _schema as s

# Keys of a strategy entry that are not constants of the damping strategy itself.
_STRATEGY_META = ("name", "kind", "search")


@dataclass(frozen=True)
class Range:
    """A search range of one hyperparameter (inclusive; ``log`` samples log-uniformly)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class StrategySpec:
    """A damping strategy run as a cell. ``constants`` are fixed for every trial of the cell;
    the constants named in ``search`` are sampled per trial, like the learning rate."""

    name: str
    kind: str
    constants: tuple[tuple[str, Any], ...]
    search: tuple[tuple[str, Range], ...] = ()


def strategy(x: Any, where: str) -> StrategySpec:
    if not isinstance(x, dict):
        raise UsageError(f"{where} must be a table, got {x!r}")
    s.check_keys(x, where, (*_STRATEGY_META, *_strategy_constants(x)), required=("name", "kind"))
    name = s.string(x["name"], f"{where}.name")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"{where}.name must use letters, digits, '-', '_', '.', got {name!r}")
    kind = s.string(x["kind"], f"{where}.kind")
    constants = {k: v for k, v in x.items() if k not in _STRATEGY_META}
    search_table = x.get("search", {})
    if not isinstance(search_table, dict):
        raise UsageError(f"{where}.search must be a table, got {search_table!r}")
    search = tuple(
        (key, search_range(value, f"{where}.search.{key}")) for key, value in search_table.items()
    )
    for key, _ in search:
        if key in constants:
            raise UsageError(f"{where}.{key} is both fixed and searched; keep one")
    _check_damping(kind, constants, search, where)
    return StrategySpec(name, kind, tuple(sorted(constants.items())), search)


def _strategy_constants(x: dict[str, Any]) -> tuple[str, ...]:
    """The constant names the strategy's kind accepts (from the damping package), so a misspelt
    constant is caught here with the allowed ones; if the kind is unknown, build_damping says so."""
    try:
        from kfaclab.damping.spec import KINDS, allowed_keys
    except ImportError:  # the damping package is optional for reading a protocol
        return tuple(k for k in x if k not in _STRATEGY_META)
    kind = x.get("kind")
    if isinstance(kind, str) and kind in KINDS:
        return allowed_keys(kind)
    return tuple(k for k in x if k not in _STRATEGY_META)


def _check_damping(
    kind: str, constants: dict[str, Any], search: tuple[tuple[str, Range], ...], where: str
) -> None:
    """Build the strategy once (searched constants at their low end) so a bad constant is an
    error now, not in the first trial of a long sweep."""
    try:
        from kfaclab.damping import build_damping
    except ImportError:
        return
    spec = {"kind": kind, **constants, **{k: r.low for k, r in search}}
    try:
        build_damping(spec)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def search_range(value: Any, where: str) -> Range:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table {{low, high, log}}, got {value!r}")
    s.check_keys(value, where, ("low", "high", "log"), required=("low", "high"))
    low = s.number(value["low"], f"{where}.low")
    high = s.number(value["high"], f"{where}.high")
    log = s.boolean(value.get("log", False), f"{where}.log")
    if not low < high:
        raise UsageError(f"{where}.low must be < {where}.high, got low={low}, high={high}")
    if log and low <= 0:
        raise UsageError(f"{where}.low must be > 0 when log = true, got {low}")
    return Range(low, high, log)
