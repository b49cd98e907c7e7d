"""Bounds on what a protocol file may ask for, so that whatever passes can be stored in every
storage and run on one machine (issue 29, F15-F17): a protocol's name, its training length, and
how deeply its TOML nests.
"""

from __future__ import annotations

from typing import Any

# Bounds that keep a protocol storable and runnable (issue 29, F15 and F17): PostgreSQL keeps a
# study name in VARCHAR(512), and the longest name kfaclab derives from a protocol's is its
# index's ("<name> [kfaclab index: protocol + cells, no trials]") or a cell's ("<name>/<cell>").
MAX_NAME_CHARS = 200
MAX_TRAINING_STEPS = 10_000_000  # about 21 000 epochs of MNIST at batch 128


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study in every storage (None: it can)."""
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters, got {len(name)}"
    bad = [c for c in name if ord(c) < 32 or 0x7F <= ord(c) <= 0x9F]
    if bad:  # NUL cannot be stored by PostgreSQL; the others act on terminals
        return f"must not contain control characters, got {bad[0]!r} in {name[:60]!r}"
    return None


MAX_NESTING = 16  # the deepest real protocol nests 4; deeper is a mistake or an attack (F16)


def nesting_depth(value: Any, limit: int = MAX_NESTING + 1) -> int:
    """How deep ``value`` nests dicts and lists, counted up to ``limit`` (no deeper recursion)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth >= limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest
