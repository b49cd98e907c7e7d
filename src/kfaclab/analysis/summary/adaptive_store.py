"""adaptive.json: a report's adaptive-damping ranking as data beside report.md, so FINDINGS.md can
answer the paper's open question (does a rule tie the best fixed λ without a grid?) from the
committed run folder alone. Non-finite numbers are written as "nan" / "inf" (strict JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.analysis.statistics.intervals import MeanCI
from kfaclab.analysis.summary.adaptive import AdaptiveSection
from kfaclab.analysis.summary.reruns import RerunSummary

_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True)
class RankedCell:
    """One row of the ranking: an adaptive rule, the best fixed λ or SGD."""

    label: str
    kind: str  # "adaptive" | "fixed" | "sgd"
    top_k: MeanCI  # top-k mean final loss of its search
    rerun: MeanCI | None  # its best configuration on new seeds (None: no reruns made)
    trials_total: int  # search trials paid for (the whole grid for the fixed λ)
    note: str


def ranked_cells(section: AdaptiveSection, reruns: Sequence[RerunSummary]) -> list[RankedCell]:
    by_label = {r.label: r.rerun for r in reruns}
    return [
        RankedCell(r.label, r.kind, r.final_loss, by_label.get(r.label), r.trials_total, r.note)
        for r in section.rows
    ]


def _strict(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    return x


def _mean_ci(raw: dict[str, Any]) -> MeanCI:
    def number(v: Any) -> float:
        return _SPECIAL[v] if isinstance(v, str) else float(v)

    return MeanCI(int(raw["n"]), *(number(raw[k]) for k in ("mean", "sd", "lo", "hi")))


def save_ranking(protocol: str, cells: Sequence[RankedCell], path: Path) -> None:
    rows = [_strict(asdict(c)) for c in cells]
    # kfaclab.atomic: a reader never sees half a file, and no planted link is written through.
    atomic.write_text(path, json.dumps({"protocol": protocol, "rows": rows}, indent=1))


def load_ranking(path: Path) -> tuple[str, list[RankedCell]]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    cells = [
        RankedCell(
            r["label"],
            r["kind"],
            _mean_ci(r["top_k"]),
            None if r["rerun"] is None else _mean_ci(r["rerun"]),
            int(r["trials_total"]),
            r["note"],
        )
        for r in raw["rows"]
    ]
    return str(raw["protocol"]), cells
