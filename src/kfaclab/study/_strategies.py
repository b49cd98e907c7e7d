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
from kfaclab.study.bounds import name_problem

CONVENTIONS = ("ours", "b2_scaled")  # cells.lambda_convention
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


@dataclass(frozen=True)
class CellsSpec:
    sgd: bool
    lambdas: tuple[float, ...]  # as written in the file
    lambda_convention: str  # "ours" or "b2_scaled"
    strategies: tuple[StrategySpec, ...]


def strategy(x: Any, where: str) -> StrategySpec:
    if not isinstance(x, dict):
        s.fail(f"{where} must be a table, got {x!r}", where)
        return StrategySpec(where, "?", ())  # a placeholder: the problem is recorded
    before = s.problem_count()
    s.check_keys(x, where, (*_STRATEGY_META, *_strategy_constants(x)), required=("name", "kind"))
    name = s.string(x.get("name", s.MISSING), f"{where}.name")
    problem = name_problem(name)  # it names a cell study, "<protocol>/kfac-<name>"
    if problem is not None:
        s.fail(f"{where}.name {problem}", f"{where}.name")
    kind = s.string(x.get("kind", s.MISSING), f"{where}.kind")
    constants = {k: v for k, v in x.items() if k not in _STRATEGY_META}
    search_table = x.get("search", {})
    if not isinstance(search_table, dict):
        s.fail(f"{where}.search must be a table, got {search_table!r}", f"{where}.search")
        search_table = {}
    search = tuple(
        (key, search_range(value, f"{where}.search.{key}")) for key, value in search_table.items()
    )
    for key, _ in search:
        if key in constants:
            s.fail(f"{where}.{key} is both fixed and searched; keep one", f"{where}.{key}")
    if s.problem_count() == before:  # building it from placeholders would only repeat them
        _check_damping(kind, constants, search, where)
    if not all(c.isalnum() or c in "-_." for c in name):  # after: the build does not read it
        s.fail(
            f"{where}.name must use letters, digits, '-', '_', '.', got {name!r}", f"{where}.name"
        )
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
        # its own path: the entry's other checks (the name) still report beside it
        s.fail(f"{where}: {exc}", f"{where}:constants")


def search_range(value: Any, where: str) -> Range:
    placeholder = Range(0.25, 0.5)  # returned with a recorded problem; inside every range check
    if value is s.MISSING:
        return placeholder
    if not isinstance(value, dict):
        s.fail(f"{where} must be a table {{low, high, log}}, got {value!r}", where)
        return placeholder
    before = s.problem_count()
    s.check_keys(value, where, ("low", "high", "log"), required=("low", "high"))
    low = s.number(value.get("low", s.MISSING), f"{where}.low")
    high = s.number(value.get("high", s.MISSING), f"{where}.high")
    log = s.boolean(value.get("log", False), f"{where}.log")
    if s.problem_count() > before:
        return placeholder
    if not low < high:
        s.fail(f"{where}.low must be < {where}.high, got low={low}, high={high}", where)
        return placeholder
    if log and low <= 0:
        s.fail(f"{where}.low must be > 0 when log = true, got {low}", where)
        return placeholder
    return Range(low, high, log)


def searched_kl_clip(t: dict[str, Any]) -> dict[str, Any]:
    """``search.kl_clip`` (a range) and ``search.kl_clip_lr`` (the fixed lr it needs), or {}."""
    if "kl_clip" not in t and "kl_clip_lr" not in t:
        return {}
    if "kl_clip" not in t or "kl_clip_lr" not in t:
        given = "kl_clip" if "kl_clip" in t else "kl_clip_lr"
        s.fail(
            "search.kl_clip and search.kl_clip_lr go together (a searched clip trains with a "
            f"fixed lr), got only {given}",
            f"search.{given}",
        )
        return {}
    before = s.problem_count()
    clip = search_range(t["kl_clip"], "search.kl_clip")
    if s.problem_count() == before and clip.low <= 0:
        s.fail(f"search.kl_clip.low must be > 0, got {clip.low}", "search.kl_clip")
    lr = s.number(t["kl_clip_lr"], "search.kl_clip_lr", positive=True)
    return {"kl_clip": clip, "kl_clip_lr": lr}


def cells_spec(t: dict[str, Any]) -> CellsSpec:
    """The ``[cells]`` table: the SGD cell, the λ grid, the strategy cells."""
    s.check_keys(t, "cells", ("sgd", "lambdas", "lambda_convention", "strategies"))
    lambdas: tuple[float, ...] = ()
    if "lambdas" in t:
        lambdas = s.float_list(t["lambdas"], "cells.lambdas", positive=True)
        if not lambdas:
            s.fail(
                "cells.lambdas must list at least one λ (omit the key for no fixed-λ cells), "
                "got []",
                "cells.lambdas",
            )
    raw_strategies = t.get("strategies", [])
    if not isinstance(raw_strategies, list):
        s.fail(
            f"cells.strategies must be a list of tables, got {raw_strategies!r}",
            "cells.strategies",
        )
        raw_strategies = []
    strategies = tuple(strategy(x, f"cells.strategies[{i}]") for i, x in enumerate(raw_strategies))
    names = [st.name for st in strategies]
    if len(set(names)) != len(names):
        s.fail(f"cells.strategies names must be unique, got {names}", "cells.strategies")
    sgd = s.boolean(t.get("sgd", False), "cells.sgd")
    if not (sgd or lambdas or strategies):
        s.fail(
            "cells must name at least one cell (sgd, lambdas or strategies)",
            *("cells", "cells.sgd", "cells.lambdas", "cells.strategies"),
        )
    convention = s.string(
        t.get("lambda_convention", "ours"), "cells.lambda_convention", CONVENTIONS
    )
    return CellsSpec(sgd, lambdas, convention, strategies)
