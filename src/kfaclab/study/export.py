"""``kfaclab export``: one CSV row per trial, and a long-format curves CSV beside it.

trials:  cell, optimizer, damping, trial, state, status, value, lr, lr_decay, momentum, seconds,
         test_accuracy, then any searched strategy constants (damping.<name>)
curves:  <OUT stem>-curves.csv with cell, trial, step, minibatch_loss (one row per step)

``value`` is written as Python prints floats (``inf`` for a diverged trial, empty when not
finished); ``damping`` is the λ in kfaclab's convention, the strategy spec as JSON, or empty
for SGD.

Text cells that begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (names and
attributes come from protocol files and shared storages) get a leading ``'``, so a spreadsheet
shows them as text and never runs them as a formula (OWASP's CSV-injection advice). Numbers are
written as numbers, so a negative value keeps its sign. Both files are written atomically
(kfaclab.atomic): a kill or a full disk keeps the previous export.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.study.cells import CellInfo
from kfaclab.study.reader import StudySet

TRIAL_COLUMNS = (
    "cell", "optimizer", "damping", "trial", "state", "status", "value", "lr", "lr_decay",
    "momentum", "seconds", "test_accuracy",
)  # fmt: skip
CURVE_COLUMNS = ("cell", "trial", "step", "minibatch_loss")


def curves_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-curves.csv")


def damping_text(cell: CellInfo) -> str:
    if cell.damping is None:
        return ""
    if isinstance(cell.damping, dict):
        return json.dumps(cell.damping, sort_keys=True)
    return repr(float(cell.damping))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool | int | float):
        return repr(x) if isinstance(x, float) else str(x)
    return neutralise(str(x))


def neutralise(text: str) -> str:
    """A CSV cell a spreadsheet shows as the text it is, never evaluates (see the docstring)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_csv(study_set: StudySet, out: Path) -> tuple[Path, Path]:
    """Write both files; returns their paths."""
    cells = {c.name: c for c in study_set.cells}
    extra = sorted(
        {k for t in study_set.trials for k in t.params if k not in ("lr", "lr_decay", "momentum")}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    trials_text = io.StringIO(newline="")
    writer = csv.writer(trials_text)
    writer.writerow([*TRIAL_COLUMNS, *extra])
    for t in study_set.trials:
        cell = cells[t.cell]
        acc = t.record.final_test_accuracy if t.record is not None else None
        row = [
            t.cell,
            cell.optimizer,
            damping_text(cell),
            t.number,
            t.state,
            t.status,
            t.value,
            *(t.params.get(k) for k in ("lr", "lr_decay", "momentum")),
            t.seconds,
            acc,
            *(t.params.get(k) for k in extra),
        ]
        writer.writerow([_text(x) for x in row])
    curves, curves_text = curves_path(out), io.StringIO(newline="")
    writer = csv.writer(curves_text)
    writer.writerow(CURVE_COLUMNS)
    for t in study_set.trials:
        if t.record is None:
            continue
        for step, loss in enumerate(t.record.step_losses):
            writer.writerow([neutralise(t.cell), t.number, step, repr(float(loss))])
    # Both files or neither, each whole: a kill or a full disk keeps the previous export.
    encoded = {out: trials_text.getvalue(), curves: curves_text.getvalue()}
    atomic.write_many({path: text.encode("utf-8") for path, text in encoded.items()})
    return out, curves
