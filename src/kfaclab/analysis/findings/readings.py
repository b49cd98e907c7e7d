"""FINDINGS.md's "The same tests in other readings": every replication-level assessment kept
under docs/results (``verdicts/`` for the base reading, ``verdicts-<reading>/`` for the others,
each written by `kfaclab verdicts`) side by side, one row per claim.

Each cell is the assessment's own verdict and the first clause of its finding (the number that
decides it); nothing is recomputed here, so the table and the verdict pages cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORD = {"reproduced": "holds", "not reproduced": "does not hold", "inconclusive": "inconclusive"}
CLAIMS = ("C1", "C2", "C3", "C4", "C5")


@dataclass(frozen=True)
class ReadingVerdicts:
    folder: str  # "verdicts" or "verdicts-<reading>"
    replications: list[str]
    seeds: int
    verdicts: dict[str, tuple[str, str]]  # claim → (verdict, finding)
    crossing: str
    paper_claims: bool  # the protocol's [claims] paper (pages written before it: true)


def read_verdicts(folder: Path) -> ReadingVerdicts:
    a: dict[str, Any] = json.loads((folder / "verdicts.json").read_text(encoding="utf-8"))
    return ReadingVerdicts(
        folder.name,
        list(a["replications"]),
        int(a["n_units"]),
        {c["key"]: (c["verdict"], c["finding"]) for c in a["claims"]},
        str(a.get("crossing", "")),
        bool(a.get("paper_claims", True)),
    )


def readings(results: Path) -> list[ReadingVerdicts]:
    """Every assessment under ``results`` that tests the paper's claims, the base reading's
    first, then the others by folder name; pages of protocols that do not ([claims] paper =
    false, e.g. the adaptive rules') are not readings."""
    found = [read_verdicts(p.parent) for p in results.glob("verdicts*/verdicts.json")]
    return sorted(
        (rv for rv in found if rv.paper_claims), key=lambda rv: (rv.folder != "verdicts", rv.folder)
    )


def _first_clause(finding: str, limit: int = 160) -> str:
    """Up to the first "; " outside brackets (a clause's own "(…; …)" stays whole)."""
    depth, end = 0, len(finding)
    for i, ch in enumerate(finding):
        depth += (ch in "([") - (ch in ")]")
        if depth == 0 and finding.startswith("; ", i):
            end = i
            break
    head = finding[:end]
    return head if len(head) <= limit else head[: limit - 1] + "…"


def readings_section(results: Path) -> list[str]:
    """The table, when at least one reading besides the base has an assessment; else nothing."""
    found = readings(results)
    if len(found) < 2:
        return []
    header = " | ".join(
        f"[{', '.join(f'`{r}`' for r in rv.replications)}]({rv.folder}/verdicts.md) "
        f"({len(rv.replications)} replication{'s' if len(rv.replications) > 1 else ''}, "
        f"{rv.seeds} seeds)"
        for rv in found
    )
    lines = [
        "Every reading's claims tested the same way (paired reruns of each cell's top-5 "
        "configurations on new seeds; the verdict pages have every number). A reading with one "
        "replication has no between-replication check: its verdicts rest on its seeds alone.",
        "",
        f"| claim | {header} |",
        "| --- |" + " --- |" * len(found),
    ]
    for claim in CLAIMS:
        cells = []
        for rv in found:
            verdict, finding = rv.verdicts.get(claim, ("", ""))
            cells.append(
                f"**{WORD.get(verdict, verdict)}**: {_first_clause(finding)}" if verdict else "–"
            )
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    lines.append(
        "| crossing (C4/C5 as one claim) | "
        + " | ".join(f"**{WORD.get(rv.crossing, rv.crossing)}**" for rv in found)
        + " |"
    )
    return lines


def readings_sentence(results: Path) -> str:
    """One sentence for the answer's fifth line: each other reading's verdicts, or ""."""
    others = readings(results)[1:]
    parts = []
    for rv in others:
        n = len(rv.replications)
        said = ", ".join(
            f"{c} {WORD.get(rv.verdicts[c][0], rv.verdicts[c][0])}"
            for c in CLAIMS
            if c in rv.verdicts
        )
        parts.append(
            f"{', '.join(f'`{r}`' for r in rv.replications)} ({n} replication"
            f"{'s' if n > 1 else ''}, {rv.seeds} seeds): {said}; the crossing "
            f"{WORD.get(rv.crossing, rv.crossing)}"
        )
    if not parts:
        return ""
    return (
        " The same tests in other readings: "
        + "; ".join(parts)
        + " (the section on other readings has the numbers)."
    )
