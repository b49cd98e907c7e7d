"""The protocol's [report] and [claims] tables: what the report draws and what it tests.

[claims] is pre-registration: it is part of the stored protocol, written before the first trial,
so the thresholds a verdict uses cannot be tuned after seeing the data (a resumed sweep with other
thresholds is refused as a different protocol).

    [claims]
    paper = true              # test the paper's five claims (false: a study of one's own)
    alpha = 0.05              # two-sided level of every test
    tie_margin = 0.10         # C1: λ = 1 "tied" only within ± this fraction of the best loss
    divergence_margin = 0.10  # C2: an excess divergence under this share is "not unstable"

Absent, the paper's claims are tested with these defaults (every preset reproduces the paper);
the report then says how to turn them off.

    [report]
    paired_reruns = { top = 3, seeds = 5 }  # `kfaclab reproduce` runs these before the report

``report.paired_reruns`` asks `kfaclab reproduce` for the paired reruns (`kfaclab replicate --top
--seeds`) before it writes the report, so that the report's verdicts come from new seeds; unset,
reproduce runs none (`kfaclab replicate` still can).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfaclab.study import _schema as s

CLAIM_KEYS = ("paper", "alpha", "tie_margin", "divergence_margin")
MAX_PAIRED_SEEDS = 99  # analysis.replication.pool.replication_seeds: distinct between replications


@dataclass(frozen=True)
class ClaimsSpec:
    paper: bool = True
    alpha: float = 0.05
    tie_margin: float = 0.10
    divergence_margin: float = 0.10


@dataclass(frozen=True)
class PairedSpec:
    """[report] paired_reruns: each cell's ``top`` configurations on ``seeds`` new seeds."""

    top: int
    seeds: int


def parse_claims(raw: dict[str, Any]) -> ClaimsSpec:
    t = s.table(raw, "claims", "", required=False)
    s.check_keys(t, "claims", CLAIM_KEYS)
    paper = t.get("paper", True)
    if not isinstance(paper, bool):
        s.fail(f"claims.paper must be true or false, got {paper!r}", "claims.paper")
        paper = True
    spec = ClaimsSpec(paper=bool(paper))
    values = {}
    for key, hi in (("alpha", 0.5), ("tie_margin", 1.0), ("divergence_margin", 1.0)):
        if key not in t:
            continue
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < float(v) < hi:
            s.fail(f"claims.{key} must be a number in (0, {hi:g}), got {v!r}", f"claims.{key}")
            continue
        values[key] = float(v)
    return ClaimsSpec(spec.paper, **values)


def parse_report(
    raw: dict[str, Any], lambdas: tuple[float, ...], top_k: int
) -> tuple[tuple[float, ...], tuple[int, ...] | None, PairedSpec | None]:
    """(histogram_lambdas, rerun_seeds or None, paired_reruns or None) from [report], every
    problem collected; ``top_k``: search.top_k, the most configurations a cell can rerun."""
    report = s.table(raw, "report", "", required=False)
    s.check_keys(
        report, "report", ("histogram_lambdas", "fixed_grid_cells", "rerun_seeds", "paired_reruns")
    )
    # fixed_grid_cells and rerun_seeds are read by the report (adaptive section, reruns of each
    # cell's best trial); validated here so a typo fails before a sweep, not after it.
    if "fixed_grid_cells" in report:
        s.integer(report["fixed_grid_cells"], "report.fixed_grid_cells", 1)
    rerun_seeds = None
    if "rerun_seeds" in report:
        rerun_seeds = s.int_list(report["rerun_seeds"], "report.rerun_seeds", 0, unique=True)
        if not rerun_seeds or max(rerun_seeds) > s.MAX_SEED:
            s.fail(
                "report.rerun_seeds must list 1 or more seeds in [0, 2**63 - 1], "
                f"got {report['rerun_seeds']!r}",
                "report.rerun_seeds",
            )
    hist = s.float_list(report.get("histogram_lambdas", []), "report.histogram_lambdas")
    for lam in hist:
        if lam not in lambdas:
            s.fail(
                f"report.histogram_lambdas must be values of cells.lambdas, got {lam}",
                "report.histogram_lambdas",
                "cells.lambdas",
            )
    paired = _paired(report["paired_reruns"], top_k) if "paired_reruns" in report else None
    return tuple(hist), (tuple(rerun_seeds) if rerun_seeds is not None else None), paired


def _paired(value: Any, top_k: int) -> PairedSpec | None:
    where = "report.paired_reruns"
    if not isinstance(value, dict):
        s.fail(f"{where} must be a table {{top, seeds}}, got {value!r}", where)
        return None
    s.check_keys(value, where, ("top", "seeds"), required=("top", "seeds"))
    before = s.problem_count()
    top = s.integer(value.get("top", s.MISSING), f"{where}.top", 1)
    seeds = s.integer(value.get("seeds", s.MISSING), f"{where}.seeds", 1)
    if s.problem_count() > before:
        return None
    # The reruns take each cell's best configurations from its stored top-k (CellSummary).
    if top > top_k:
        s.fail(
            f"{where}.top must be <= search.top_k ({top_k}), got {top}",
            *(f"{where}.top", "search.top_k", "search.n_trials"),  # not after a problem there
        )
    if seeds > MAX_PAIRED_SEEDS:
        s.fail(f"{where}.seeds must be <= {MAX_PAIRED_SEEDS}, got {seeds}", f"{where}.seeds")
    return PairedSpec(top, seeds)
