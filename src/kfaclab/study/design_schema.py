"""A design file: a protocol plus a ``[design]`` table, read into one protocol per run.

    [design]
    kind = "fraction"                 # "full" (every combination) or "fraction" (2^(k-p))
    generators = ["E = ABC", "F = BCD", "G = ACD"]   # fractions: letters A, B, … in factor order,
                                      # or names: "kl = activation*init*fisher"
    resolution = 4                    # optional for a fraction; checked against the generators
    seeds = [0, 1]                    # replications: values of search.seed (default: the base's)

    [[design.factors]]
    name = "activation"
    labels = ["relu", "tanh"]         # optional: how tables name the levels
    levels = [{ "model.activation" = "relu" }, { "model.activation" = "tanh" }]

A level is a table of protocol keys by dotted path (a factor may set a bundle of keys); what a
level does not set is the base protocol's. Every run's protocol is the base with one level of
each factor applied, ``protocol.name`` = "<name>-<run>" and ``search.seed`` = the run's seed, so
each run is an ordinary protocol with its own stored studies, and study names carry the run.
Reading is strict, like a protocol's: every key known, every level applied to the base and read
as a protocol (so a level naming an unknown key fails with the factor named), generators only
over known factors, the stated resolution checked, and every run's protocol read before any run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kfaclab.errors import UsageError
from kfaclab.study import _schema as s
from kfaclab.study.design import (
    LETTERS,
    ROMAN,
    TwoLevelDesign,
    full_factorial,
    parse_generator,
    word_name,
)
from kfaclab.study.protocol import Protocol, parse_protocol, stored_form

KINDS = ("full", "fraction")
_DESIGN_KEYS = ("kind", "factors", "generators", "resolution", "seeds")
_FACTOR_KEYS = ("name", "labels", "levels")
# The tables a level may set keys of; protocol.* names the runs, search.seed is design.seeds.
_LEVEL_TABLES = ("data", "model", "training", "cells", "search", "report")
_OWNED = {"search.seed": "design.seeds", "data.data_dir": "--data-dir (a machine's key)"}

Level = tuple[tuple[str, Any], ...]  # (dotted path, value) pairs


@dataclass(frozen=True)
class Factor:
    name: str
    letter: str  # "A", "B", … in the order the file lists the factors
    labels: tuple[str, ...]
    levels: tuple[Level, ...]


@dataclass(frozen=True)
class DesignRun:
    name: str  # "run03-seed1": its folder, and the suffix of its protocol's name
    point: int  # 0-based row of the design matrix (standard order)
    seed: int
    levels: tuple[int, ...]  # the level index of each factor
    raw: dict[str, Any]  # the run's protocol, as a protocol file would hold it

    @property
    def protocol_name(self) -> str:
        return str(self.raw["protocol"]["name"])


@dataclass(frozen=True)
class Design:
    name: str
    kind: str
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...]
    two_level: TwoLevelDesign | None  # None: a full factorial with a factor of 3+ levels
    matrix: np.ndarray  # (points, factors) level indices, standard order
    runs: tuple[DesignRun, ...]  # seed-major: every point of the first seed, then the next
    raw: dict[str, Any]  # the file as loaded, without machine keys (what design.json stores)

    def describe(self) -> str:
        if self.two_level is None:
            sizes = "×".join(str(len(f.levels)) for f in self.factors)
            return f"full {sizes} factorial"
        text = self.two_level.describe()
        res = self.two_level.resolution()
        return text + (f", resolution {ROMAN.get(res, res)}" if res else "")

    def level_text(self, run: DesignRun) -> str:
        return level_text(self.factors, run.levels)

    def manifest(self) -> dict[str, Any]:
        """design.json: what ``kfaclab effects`` reads back (the file itself, and for people,
        the runs and the aliasing)."""
        two = self.two_level
        return {
            "kfaclab": "design",
            "name": self.name,
            "describe": self.describe(),
            "defining_relation": [word_name(w) for w in two.defining_relation()] if two else [],
            "alias_table": two.alias_table() if two else [],
            "factors": [
                {"letter": f.letter, "name": f.name, "labels": list(f.labels)} for f in self.factors
            ],
            "runs": [
                {"name": r.name, "protocol": r.protocol_name, "seed": r.seed, "levels": r.levels}
                for r in self.runs
            ],
            "design_file": self.raw,
        }


def level_text(factors: tuple[Factor, ...], levels: tuple[int, ...]) -> str:
    """ "activation=tanh, init=he": a run's level of each factor, by its label."""
    return ", ".join(f"{f.name}={f.labels[i]}" for f, i in zip(factors, levels, strict=True))


def is_design(raw: dict[str, Any]) -> bool:
    return "design" in raw


def parse_design(raw: dict[str, Any], base_dir: Path | None = None) -> Design:
    """Validate a design file's dict and expand it into its runs' protocols."""
    table = s.table(raw, "design", "")
    s.check_keys(table, "design", _DESIGN_KEYS, required=("kind", "factors"))
    base = {k: copy.deepcopy(v) for k, v in raw.items() if k != "design"}
    base_protocol = _read(base, base_dir, "design base protocol")
    kind = s.string(table["kind"], "design.kind", KINDS)
    factors = _factors(table["factors"], base, base_dir)
    two_level, matrix = _matrix(kind, table, factors)
    seeds = _seeds(table, base_protocol)
    runs = []
    width = max(2, len(str(len(matrix))))
    for seed in seeds:
        for point, row in enumerate(matrix):
            name = f"run{point + 1:0{width}d}-seed{seed}"
            run_raw = copy.deepcopy(base)
            for factor, level in zip(factors, row, strict=True):
                _apply(run_raw, factor.levels[int(level)])
            head = run_raw["protocol"]
            head["name"] = f"{base_protocol.name}-{name}"
            levels = tuple(int(x) for x in row)
            text = level_text(factors, levels)
            head["description"] = f"{base_protocol.description} [{name}: {text}]".strip()
            run_raw.setdefault("search", {})["seed"] = seed
            run = DesignRun(name, point, seed, levels, run_raw)
            _read(run_raw, base_dir, f"design run {name} ({text})")
            runs.append(run)
    return Design(
        name=base_protocol.name,
        kind=kind,
        factors=factors,
        seeds=seeds,
        two_level=two_level,
        matrix=matrix,
        runs=tuple(runs),
        raw=stored_form(raw),
    )


def run_protocol(run: DesignRun, base_dir: Path | None = None) -> Protocol:
    return parse_protocol(copy.deepcopy(run.raw), base_dir=base_dir)


def _read(raw: dict[str, Any], base_dir: Path | None, where: str) -> Protocol:
    """``raw`` read as a protocol; its problems prefixed with ``where`` (one per line)."""
    try:
        return parse_protocol(copy.deepcopy(raw), base_dir=base_dir)
    except UsageError as exc:
        lines = str(exc).splitlines() or [""]
        raise UsageError("\n".join(f"{where}: {line}" for line in lines)) from None


def _factors(value: Any, base: dict[str, Any], base_dir: Path | None) -> tuple[Factor, ...]:
    if not isinstance(value, list) or not value:
        raise UsageError(f"design.factors must be a non-empty list of tables, got {value!r}")
    if len(value) > len(LETTERS):
        raise UsageError(f"design.factors may list up to {len(LETTERS)} factors, got {len(value)}")
    factors: list[Factor] = []
    owner: dict[str, str] = {}  # dotted path → the factor that sets it
    for i, item in enumerate(value):
        where = f"design.factors[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be a table, got {item!r}")
        s.check_keys(item, where, _FACTOR_KEYS, required=("name", "levels"))
        name = s.string(item["name"], f"{where}.name")
        if not all(c.isalnum() or c in "-_" for c in name):
            raise UsageError(f"{where}.name must use letters, digits, '-', '_', got {name!r}")
        if any(f.name == name for f in factors):
            raise UsageError(f"{where}.name must be unique, got {name!r} twice")
        raw_levels = item["levels"]
        if not isinstance(raw_levels, list) or len(raw_levels) < 2:
            raise UsageError(f"{where}.levels must list 2 or more tables, got {raw_levels!r}")
        levels = tuple(_level(x, f"{where}.levels[{j}]") for j, x in enumerate(raw_levels))
        if len(set(map(repr, levels))) != len(levels):
            raise UsageError(f"{where}.levels must differ from each other, got {raw_levels!r}")
        labels = _labels(item, levels, where)
        for j, level in enumerate(levels):
            for path, _ in level:
                other = owner.setdefault(path, name)
                if other != name:
                    raise UsageError(f"{where} ({name}) sets {path}, which {other} also sets")
            trial = copy.deepcopy(base)
            _apply(trial, level)
            _read(trial, base_dir, f"{where} ({name}) level {labels[j]!r}")
        factors.append(Factor(name, LETTERS[i], labels, levels))
    return tuple(factors)


def _level(value: Any, where: str) -> Level:
    """A level's keys as (dotted path, value): quoted dotted keys ("model.init") and TOML's
    nested tables ({ model = { init = "he" } }) alike; a table's key takes its value whole."""
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table of protocol keys, got {value!r}")
    out: list[tuple[str, Any]] = []

    def walk(prefix: list[str], table: dict[str, Any]) -> None:
        for key, item in table.items():
            parts = prefix + key.split(".")
            if len(parts) < 2:
                if not isinstance(item, dict):
                    raise UsageError(
                        f"{where} must set keys of a table like 'model.activation', got {key!r}"
                    )
                walk(parts, item)
                continue
            path = ".".join(parts)
            if parts[0] not in _LEVEL_TABLES:
                raise UsageError(
                    f"{where} sets {path!r}; a level may set keys of {', '.join(_LEVEL_TABLES)}"
                )
            if path in _OWNED:
                raise UsageError(f"{where} sets {path!r}, which is {_OWNED[path]}'s")
            out.append((path, copy.deepcopy(item)))

    walk([], value)
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _labels(item: dict[str, Any], levels: tuple[Level, ...], where: str) -> tuple[str, ...]:
    if "labels" in item:
        labels = item["labels"]
        ok = isinstance(labels, list) and all(isinstance(x, str) and x for x in labels)
        if not ok or len(labels) != len(levels) or len(set(labels)) != len(labels):
            raise UsageError(
                f"{where}.labels must be {len(levels)} different non-empty strings, got {labels!r}"
            )
        return tuple(labels)
    # A one-key level is named by its value ("tanh"); otherwise by its position.
    guess = tuple(
        str(level[0][1]) if len(level) == 1 and not isinstance(level[0][1], dict) else str(j)
        for j, level in enumerate(levels)
    )
    return guess if len(set(guess)) == len(guess) else tuple(map(str, range(len(levels))))


def _apply(raw: dict[str, Any], level: Level) -> None:
    for path, value in level:
        *tables, key = path.split(".")
        node = raw
        for i, part in enumerate(tables):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(
                    f"a level sets {path}, but {'.'.join(tables[: i + 1])} is no table"
                )
        node[key] = copy.deepcopy(value)


def _matrix(
    kind: str, table: dict[str, Any], factors: tuple[Factor, ...]
) -> tuple[TwoLevelDesign | None, np.ndarray]:
    names = [f.name for f in factors]
    sizes = [len(f.levels) for f in factors]
    if kind == "full":
        for key in ("generators", "resolution"):
            if key in table:
                raise UsageError(f"design.{key} is for kind = 'fraction', not a full factorial")
        if all(n == 2 for n in sizes):
            two = TwoLevelDesign(len(factors))
            return two, (two.matrix() > 0).astype(np.int64)
        return None, full_factorial(sizes)
    for f, n in zip(factors, sizes, strict=True):
        if n != 2:
            raise UsageError(f"a fraction needs 2 levels per factor, got {n} for {f.name!r}")
    generators = table.get("generators")
    if not isinstance(generators, list) or not generators:
        raise UsageError(
            f"design.generators must list the fraction's generators, got {generators!r}"
        )
    pairs = tuple(
        parse_generator(g, names, f"design.generators[{i}]") for i, g in enumerate(generators)
    )
    two = TwoLevelDesign(len(factors), pairs)
    found = two.resolution()
    if "resolution" in table:
        stated = table["resolution"]
        numbers = {v: k for k, v in ROMAN.items()}
        value = numbers.get(stated) if isinstance(stated, str) else stated
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise UsageError(
                f"design.resolution must be an integer >= 2 or 'IV' etc., got {stated!r}"
            )
        if value != found:
            shortest = min(two.defining_relation(), key=lambda w: bin(w).count("1"))
            raise UsageError(
                f"design.resolution is {stated!r}, but {two.describe()} has resolution "
                f"{ROMAN.get(found or 0, found)} (shortest defining word {word_name(shortest)})"
            )
    return two, (two.matrix() > 0).astype(np.int64)


def _seeds(table: dict[str, Any], base: Protocol) -> tuple[int, ...]:
    if "seeds" not in table:
        return (base.search.seed,)
    seeds = s.int_list(table["seeds"], "design.seeds", 0, unique=True)
    if not seeds or max(seeds) > s.MAX_SEED:
        raise UsageError(f"design.seeds must list 1 or more seeds >= 0, got {table['seeds']!r}")
    return seeds
