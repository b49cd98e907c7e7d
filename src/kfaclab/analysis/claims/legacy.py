"""Claims of a run kept only as report.md + reruns.json (docs/results/paper-first-run predates
claims.json and its study storage was not kept): the cell table and the edge warnings read back
from the report, the reruns from their file, and the same ``evaluate``.

What this cannot recover, it says: the per-trial histograms are gone, so C4/C5 are "no data";
binding is known only from the old report's 2%-edge warnings (a warning with more than 10% of the
top-k at a 2% edge binds by binding.py's 5% rule too; a cell without a warning may still bind).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from kfaclab.analysis.claims.paper import ClaimSet, evaluate
from kfaclab.analysis.statistics.binding import TOP_FRACTION, Binding
from kfaclab.analysis.statistics.intervals import MeanCI
from kfaclab.analysis.summary.cells import BestTrial, CellSummary
from kfaclab.analysis.summary.reruns import load_reruns, rerun_summaries
from kfaclab.analysis.summary.summaries import StudySummary

_ROW = re.compile(
    r"^\| (?P<label>[^|]+?) \| (?P<done>\d+)/(?P<target>\d+) \| (?P<div>[\d.]+)% \| (?P<n>\d+) \| "
    r"(?P<mean>[\d.e+-]+) ± (?P<sd>[\d.e+-]+) \| \[(?P<lo>[\d.e+-]+), (?P<hi>[\d.e+-]+)\] \| "
    r"[^|]+ \| (?P<best>[\d.e+-]+) \| (?P<lr>[\d.e+-]+) \| (?P<mom>[\d.e+-]+) \| "
    r"(?P<decay>[\d.e+-]+) \|"
)
_WARN = re.compile(
    r"^- (?P<label>[^:]+): best (?P<param>\w+) = (?P<value>[\d.e+-]+) is at the (?P<edge>low|high) "
    r"edge of the search space \((?P<bound>[\d.e+-]+)\); (?P<frac>\d+)% of the top-k"
)


def _cell(m: re.Match[str]) -> CellSummary:
    label = m["label"].strip()
    done, n = int(m["done"]), int(m["n"])
    n_div = round(float(m["div"]) / 100 * done)
    lam = None if label == "SGD" else float(label.removeprefix("λ=").split()[0])
    name = "sgd" if lam is None else f"kfac-lam={label.removeprefix('λ=')}"
    params = {"lr": float(m["lr"]), "momentum": float(m["mom"]), "lr_decay": float(m["decay"])}
    f = MeanCI(n, float(m["mean"]), float(m["sd"]), float(m["lo"]), float(m["hi"]))
    nan = MeanCI(0, math.nan, math.nan, math.nan, math.nan)
    return CellSummary(
        name=name,
        optimizer="sgd" if lam is None else "kfac",
        label=label,
        lam=lam,
        strategy=None,
        n_target=int(m["target"]),
        n_complete=done,
        n_running=0,
        n_failed=0,
        n_ok=done - n_div,
        n_diverged=n_div,
        top_k=n,
        top_numbers=[],
        final_loss=f,
        test_accuracy=nan,
        seconds=nan,
        seconds_total=0.0,
        curve=None,
        best=BestTrial(-1, float(m["best"]), params, math.nan, None),
    )


def summary_from_report(folder: Path) -> StudySummary:
    text = (folder / "report.md").read_text(encoding="utf-8")
    cells = [_cell(m) for line in text.splitlines() if (m := _ROW.match(line))]
    if not cells:
        raise ValueError(f"{folder / 'report.md'}: no cell table found")
    name = re.search(r"^# kfaclab report: (.+)$", text, re.M)
    bindings: dict[str, list[Binding]] = {}
    for line in text.splitlines():
        if (w := _WARN.match(line)) and int(w["frac"]) / 100 > TOP_FRACTION:
            b = Binding(
                w["label"],
                w["param"],
                w["edge"],
                float(w["bound"]),
                float(w["value"]),
                True,
                int(w["frac"]) / 100,
            )
            bindings.setdefault(b.cell, []).append(b)
    records = load_reruns(folder / "reruns.json")
    for c in cells:  # the reruns were made of each cell's best trial; match them by cell
        if c.name in records and c.best is not None:
            c.best.number = records[c.name].trial_number
    protocol = {"protocol": {"name": name[1].strip() if name else folder.name}}
    return StudySummary(
        protocol=protocol,
        cells=sorted(cells, key=lambda c: (c.lam is None, c.lam or 0.0)),
        histograms=None,
        curvature=None,
        hyperparams={},
        edge_warnings=[],
        budgets=[],
        reruns=rerun_summaries(cells, records),
        adaptive=None,
        bindings=bindings,
    )


_MEDIAN = re.compile(
    r"At (?P<label>λ=[^ ]+) the median \(∂L/∂θ\)² over all layers goes from 1e(?P<first>-?[\d.]+) "
    r"at iteration (?P<s0>\d+) to 1e(?P<last>-?[\d.]+) at iteration (?P<s1>\d+)"
)


def _pooled_medians(text: str, early: bool) -> str:
    """The old report's pooled medians (all layers and top-k trials together; no interval)."""
    found = list(_MEDIAN.finditer(text))
    if not found:
        return "no gradient histograms in the report"
    step = found[0]["s0" if early else "s1"]
    values = ", ".join(f"{m['label']} 1e{m['first' if early else 'last']}" for m in found)
    return (
        f"pooled over layers and trials (no per-trial data, so no interval), the median "
        f"(∂L/∂θ)² at iteration {step} is {values}"
    )


def claims_from_report(folder: Path) -> ClaimSet:
    cs = evaluate(summary_from_report(folder))
    text = (folder / "report.md").read_text(encoding="utf-8")
    for c in cs.claims:
        if c.key in ("C4", "C5"):
            c.finding = _pooled_medians(text, early=c.key == "C4")
            c.reason = "the per-trial histograms of this run were not kept"
        else:
            c.evidence["source"] = (
                "read back from report.md and reruns.json (the run predates claims.json and "
                "kept no study storage; it searched lr in [1e-6, 1], and binding is known only "
                "from its 2%-edge warnings)"
            )
    return cs
