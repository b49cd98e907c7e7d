"""Strict reading of TOML tables: every key known, every value checked, errors as one line.

The helpers take the dotted path of the value ("search.n_trials") so that each message names
what is wrong, the rule, and the bad value, and unknown keys get the allowed ones and the
closest match (a misspelt key must never be silently ignored: it would change the protocol).

Every problem of a file at once: inside ``with collecting():`` a helper that finds a problem
records it (``fail``) and returns a placeholder of the right type, so reading goes on and finds
the next one; on leaving the block, ``ProtocolError`` lists them all, one per line. Outside it,
the first problem raises ``UsageError`` as before. A problem about a path at, under or above one
that already has a problem (``search.lr`` and ``search.lr.low``, ``cells.lambdas`` and
``cells.lambdas[1]``) is a consequence of a placeholder and is dropped, so every check between
two values names all the paths it reads. A ``UsageError`` raised (rather than ``fail``ed) inside
the block ends the reading and is listed last.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
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


class _Missing:
    """The value of a required key that is absent (already reported by ``check_keys``)."""

    def __repr__(self) -> str:
        return "<missing>"


# ``t.get(key, MISSING)`` for a required key: while collecting, check_keys has recorded its
# absence and the value helpers return their placeholder without a second message.
MISSING: Any = _Missing()


class ProtocolError(UsageError):
    """Every problem found in one protocol, in the order found; ``str()`` is one per line."""

    def __init__(self, messages: Iterable[str]) -> None:
        self.messages = tuple(messages)
        super().__init__("\n".join(self.messages))


class _Problems:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.paths: list[str] = []


_ACTIVE: ContextVar[_Problems | None] = ContextVar("kfaclab_schema_problems", default=None)


@contextmanager
def collecting() -> Iterator[None]:
    """Record the problems found inside the block; leaving it raises ``ProtocolError`` with all
    of them (nested blocks share the outer one's list)."""
    if _ACTIVE.get() is not None:
        yield
        return
    problems = _Problems()
    token = _ACTIVE.set(problems)
    try:
        yield
    except ProtocolError as exc:
        problems.messages.extend(exc.messages)
    except UsageError as exc:
        problems.messages.extend(str(exc).splitlines())
    finally:
        _ACTIVE.reset(token)
    if problems.messages:
        raise ProtocolError(problems.messages)


def fail(message: str, *paths: str) -> None:
    """A problem with the values at ``paths`` (dotted): raised as ``UsageError``, or recorded
    while collecting (then the caller goes on with a placeholder)."""
    problems = _ACTIVE.get()
    if problems is None:
        raise UsageError(message)
    if any(_under(p, seen) or _under(seen, p) for p in paths for seen in problems.paths):
        return  # a consequence of an earlier problem's placeholder (a list's item, a table's key)
    problems.messages.append(message)
    problems.paths.extend(paths)


def problem_count() -> int:
    """Problems recorded so far (0 when not collecting): a helper compares it before and after
    reading the parts of a value, to skip the checks of the whole on placeholders."""
    problems = _ACTIVE.get()
    return 0 if problems is None else len(problems.messages)


# While ``tracing()``: every table ``check_keys`` read, as path -> (allowed keys, required keys).
# The protocol key reference (study/keys.py) is checked against it, so it lists what the code reads.
_TRACE: ContextVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None] = ContextVar(
    "kfaclab_schema_trace", default=None
)


@contextmanager
def tracing() -> Iterator[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]:
    """The tables read inside the block: path -> (allowed keys, required keys)."""
    seen: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    token = _TRACE.set(seen)
    try:
        yield seen
    finally:
        _TRACE.reset(token)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def check_keys(
    table: Mapping[str, Any], path: str, allowed: Iterable[str], required: Iterable[str] = ()
) -> None:
    """Unknown keys and missing required keys of ``table`` (found at ``path``) are errors."""
    allowed = tuple(allowed)
    required = tuple(required)
    trace = _TRACE.get()
    if trace is not None:
        trace[path] = (allowed, required)
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{path}.{key}" if path else key
            fail(f"unknown key {where!r}; allowed: {', '.join(allowed)}{hint}", where)
    for key in required:
        if key not in table:
            where = f"{path}.{key}" if path else key
            fail(f"{where} is required", where)


def table(parent: Mapping[str, Any], key: str, path: str, required: bool = True) -> dict[str, Any]:
    """The sub-table ``parent[key]`` ({} when optional and absent, or as a placeholder)."""
    where = f"{path}.{key}" if path else key
    if key not in parent:
        if required:
            fail(f"[{where}] is required", where)
        return {}
    value = parent[key]
    if not isinstance(value, dict):
        fail(f"{where} must be a table, got {value!r}", where)
        return {}
    return value


def string(value: Any, where: str, choices: Iterable[str] | None = None) -> str:
    options = None if choices is None else tuple(choices)
    placeholder = options[0] if options else "?"
    if value is MISSING:
        return placeholder
    if not isinstance(value, str) or not value:
        fail(f"{where} must be a non-empty string, got {value!r}", where)
        return placeholder
    if options is not None and value not in options:
        fail(f"{where} must be one of {', '.join(options)}, got {value!r}", where)
        return placeholder
    return value


def boolean(value: Any, where: str) -> bool:
    if value is MISSING:
        return False
    if not isinstance(value, bool):
        fail(f"{where} must be true or false, got {value!r}", where)
        return False
    return value


def integer(value: Any, where: str, minimum: int | None = None) -> int:
    placeholder = 1 if minimum is None else max(minimum, 1)
    if value is MISSING:
        return placeholder
    # bool is an int in Python; `n_trials = true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        fail(f"{where} must be an integer, got {value!r}", where)
        return placeholder
    if minimum is not None and value < minimum:
        fail(f"{where} must be >= {minimum}, got {value!r}", where)
        return placeholder
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
    # Any value within the bounds: the checks that read it are dropped as follow-ons.
    placeholder = float(minimum) if minimum is not None else 0.5
    if value is MISSING:
        return placeholder
    if not isinstance(value, int | float) or isinstance(value, bool):
        fail(f"{where} must be a number, got {value!r}", where)
        return placeholder
    x = float(value)
    message = None
    if not math.isfinite(x):
        message = f"{where} must be finite, got {value!r}"
    elif abs(x) > FLOAT32_MAX:
        message = f"{where} must be within float32's range (±3.4e38), got {value!r}"
    elif positive and not x > 0:
        message = f"{where} must be > 0, got {value!r}"
    elif minimum is not None and x < minimum:
        message = f"{where} must be >= {minimum}, got {value!r}"
    elif maximum is not None and x > maximum:
        message = f"{where} must be <= {maximum}, got {value!r}"
    elif below is not None and not x < below:
        message = f"{where} must be < {below}, got {value!r}"
    if message is not None:
        fail(message, where)
        return placeholder
    return x


def int_list(value: Any, where: str, minimum: int = 0, unique: bool = False) -> tuple[int, ...]:
    """A list of integers, increasing without repeats (``unique``: any order, no repeats)."""
    if value is MISSING:
        return ()
    if not isinstance(value, list):
        fail(f"{where} must be a list of integers, got {value!r}", where)
        return ()
    before = problem_count()
    items = tuple(integer(v, f"{where}[{i}]", minimum) for i, v in enumerate(value))
    if problem_count() > before:
        return ()
    if unique:
        if len(set(items)) != len(items):
            fail(f"{where} must not repeat a value, got {value!r}", where)
    elif list(items) != sorted(set(items)):
        fail(f"{where} must be increasing without repeats, got {value!r}", where)
    return items


def float_list(value: Any, where: str, *, positive: bool = False) -> tuple[float, ...]:
    if value is MISSING:
        return ()
    if not isinstance(value, list):
        fail(f"{where} must be a list of numbers, got {value!r}", where)
        return ()
    before = problem_count()
    items = tuple(number(v, f"{where}[{i}]", positive=positive) for i, v in enumerate(value))
    if problem_count() > before:
        return ()
    if len(set(items)) != len(items):
        fail(f"{where} must not repeat a value, got {value!r}", where)
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
