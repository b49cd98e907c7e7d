"""The studies of a protocol in a storage: created once, checked on every resume.

Layout (all in the one storage):
- an index study named "<protocol> [kfaclab index: protocol + cells, no trials]" with no trials,
  whose user attrs hold the protocol dict exactly as loaded from the TOML ("kfaclab:protocol"),
  the cell list ("kfaclab:cells") and the protocol's name ("kfaclab:name"). Its name says what
  it is to someone browsing the studies in optuna-dashboard, which lists every study; studies
  written before this naming have their index named "<protocol>" and are found and resumed as
  they are;
- one study per cell, "<protocol>/<cell>", minimising the final full-training-set loss.

Resuming with a protocol file that differs from the stored dict is refused with the first
differing key and both values: mixing trials of two protocols in one cell would make its
top-k meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study._frozen import FrozenStudy

from kfaclab.errors import UsageError
from kfaclab.study._schema import first_difference
from kfaclab.study.cells import CellInfo, build_cells
from kfaclab.study.protocol import Protocol
from kfaclab.study.storage import Storage
from kfaclab.text import clean

KIND_ATTR = "kfaclab:kind"
PROTOCOL_ATTR = "kfaclab:protocol"
CELLS_ATTR = "kfaclab:cells"
CELL_ATTR = "kfaclab:cell"
NAME_ATTR = "kfaclab:name"


@dataclass(frozen=True)
class StoredProtocol:
    name: str
    raw: dict[str, Any]
    cells: list[CellInfo]


def study_name(protocol: str, cell: str) -> str:
    return f"{protocol}/{cell}"


def index_study_name(protocol: str) -> str:
    # Not "<protocol>/…": the cells' prefix, which tools (and tests) use to list the cells.
    return f"{protocol} [kfaclab index: protocol + cells, no trials]"


def ensure_studies(
    protocol: Protocol, storage: optuna.storages.BaseStorage, spec: Storage
) -> list[CellInfo]:
    """Create the protocol's studies, or check that the stored ones match ``protocol``."""
    cells = build_cells(protocol)
    with optuna_quiet(), spec.cell_lock(protocol.name):
        index = _load_index(storage, protocol.name)
        stored = index.user_attrs.get(PROTOCOL_ATTR)
        if stored is not None:
            diff = first_difference(stored, protocol.raw)
            if diff is not None:
                key, old, new = diff
                raise UsageError(
                    f"protocol {protocol.name!r} in {spec.describe()} differs from CONFIG at "
                    f"{key}: stored {old!r}, CONFIG {new!r}; use another --out/--storage or "
                    "protocol.name"
                )
        else:
            index.set_user_attr(KIND_ATTR, "protocol")
            index.set_user_attr(NAME_ATTR, protocol.name)
            index.set_user_attr(PROTOCOL_ATTR, protocol.raw)
            index.set_user_attr(CELLS_ATTR, [c.to_dict() for c in cells])
        for cell in cells:
            study = _load_or_create(storage, study_name(protocol.name, cell.name))
            if CELL_ATTR not in study.user_attrs:
                study.set_user_attr(CELL_ATTR, cell.to_dict())
    return cells


def _load_index(storage: optuna.storages.BaseStorage, protocol: str) -> optuna.Study:
    """The protocol's index study: the old-style one named "<protocol>" when it exists."""
    try:
        old = optuna.load_study(study_name=protocol, storage=storage)
        if old.user_attrs.get(KIND_ATTR) == "protocol":
            return old
    except KeyError:
        pass
    return _load_or_create(storage, index_study_name(protocol))


def _load_or_create(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load first: on a journal even a create_study that finds the study appends a log entry,
    and resuming (or refusing a mismatching CONFIG) should write nothing."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )


def stored_protocols(storage: optuna.storages.BaseStorage) -> list[StoredProtocol]:
    """Every protocol whose studies are in ``storage`` (each index parsed and checked)."""
    return [_parse_index(study) for study in _index_studies(storage)]


def _index_studies(storage: optuna.storages.BaseStorage) -> list[FrozenStudy]:
    found = []
    for study in storage.get_all_studies():
        attrs = study.user_attrs
        if attrs.get(KIND_ATTR) == "protocol" and PROTOCOL_ATTR in attrs:
            found.append(study)
    return found


def _index_name(study: FrozenStudy) -> str:
    """The protocol an index study stands for, unparsed (old indexes: the study's name)."""
    name = study.user_attrs.get(NAME_ATTR, study.study_name)
    return name if isinstance(name, str) else f"<malformed name of study {study.study_name!r}>"


def _parse_index(study: FrozenStudy) -> StoredProtocol:
    """An index study read into a StoredProtocol; any malformed part (the storage may be a
    database other users write to) is refused in one line naming the study."""
    attrs = study.user_attrs

    def bad(what: str, value: Any) -> UsageError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return UsageError(
            f"index study {clean(study.study_name)!r} is malformed: {what}, got {clean(shown)}"
        )

    name = attrs.get(NAME_ATTR, study.study_name)
    if not isinstance(name, str) or not name:
        raise bad(f"{NAME_ATTR} must be a non-empty string", name)
    raw = attrs[PROTOCOL_ATTR]
    if not isinstance(raw, dict):
        raise bad(f"{PROTOCOL_ATTR} must be a table (a JSON object)", raw)
    listed = attrs.get(CELLS_ATTR, [])
    if not isinstance(listed, list):
        raise bad(f"{CELLS_ATTR} must be a list of cells", listed)
    cells = []
    for i, data in enumerate(listed):
        problem = cell_problem(data)
        if problem is not None:
            raise bad(f"{CELLS_ATTR}[{i}] {problem}", data)
        cells.append(CellInfo.from_dict(data))
    if len({c.name for c in cells}) != len(cells):
        raise bad(f"{CELLS_ATTR} must name each cell once", [c.name for c in cells])
    return StoredProtocol(name, raw, cells)


def cell_problem(data: Any) -> str | None:
    """What is wrong with a stored cell dict (None: nothing), for a one-line message."""
    fields = set(CellInfo.__dataclass_fields__)
    if not isinstance(data, dict) or set(data) != fields:
        return f"must be an object with the keys {sorted(fields)}"
    if not isinstance(data["name"], str) or not data["name"]:
        return "name must be a non-empty string"
    if data["optimizer"] not in ("sgd", "kfac"):
        return "optimizer must be 'sgd' or 'kfac'"
    lam = data["damping"]
    number = isinstance(lam, int | float) and not isinstance(lam, bool)
    if not (lam is None or isinstance(lam, dict) or (number and math.isfinite(lam) and lam > 0)):
        return "damping must be null, a number > 0 or a strategy object"
    if not isinstance(data["damping_label"], str):
        return "damping_label must be a string"
    for key in ("n_trials", "top_k"):
        if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0:
            return f"{key} must be an integer >= 0"
    return None


def pick_protocol(
    storage: optuna.storages.BaseStorage, where: str, name: str | None = None
) -> StoredProtocol:
    """The protocol ``name``, or the only one in the storage. Only the chosen index study is
    parsed: a malformed index of another protocol (another user of a shared database) is no
    concern of this one."""
    found = _index_studies(storage)
    names = [_index_name(p) for p in found]
    if name is not None:
        for study, listed in zip(found, names, strict=True):
            if listed == name:
                return _parse_index(study)
        shown = [clean(n) for n in names] or "none"
        raise UsageError(f"--protocol must be one of {shown} in {where}, got {clean(name)!r}")
    if not found:
        raise UsageError(f"no kfaclab studies in {where}")
    if len(found) > 1:
        listed = ", ".join(clean(n) for n in names)
        raise UsageError(f"{where} holds several protocols ({listed}); use --protocol")
    return _parse_index(found[0])


class optuna_quiet:  # noqa: N801 - used like a function: `with optuna_quiet():`
    """Silence Optuna's INFO lines ("A new study created…") for the duration."""

    def __enter__(self) -> None:
        self._level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        optuna.logging.set_verbosity(self._level)
