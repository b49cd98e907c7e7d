"""Claims × readings: the claims of several runs side by side (``kfaclab claims``), and
docs/results/FINDINGS.md generated from the runs kept under docs/results.

A run is a folder: its ``claims.json`` (written by ``kfaclab report``) if present, else its study
storage is read and the claims computed (with the reruns in its ``reruns.json``, none made).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kfaclab.analysis.claims.paper import ClaimSet, evaluate
from kfaclab.analysis.claims.store import load_claims
from kfaclab.analysis.claims.types import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from kfaclab.analysis.report.blocks import md_escape
from kfaclab.analysis.report.headline import sentence
from kfaclab.errors import UsageError

MARKS = {REPRODUCED: "✓ reproduced", NOT_REPRODUCED: "✗ not reproduced", INCONCLUSIVE: "?"}


def claims_for_run(folder: Path) -> ClaimSet:
    """The claims of the run in ``folder`` (see the module docstring)."""
    if (folder / "claims.json").is_file():
        return load_claims(folder / "claims.json")
    if not folder.is_dir():
        raise UsageError(f"RUN must be a run folder, got {str(folder)!r} (no such folder)")
    from kfaclab.analysis.summary.reruns import load_reruns
    from kfaclab.analysis.summary.summaries import summarize
    from kfaclab.study.reader import load_study_set

    try:
        study = load_study_set(str(folder))
    except UsageError as exc:
        raise UsageError(
            f"RUN must hold claims.json or a study, got {str(folder)!r}: {exc}"
        ) from None
    return evaluate(summarize(study, load_reruns(folder / "reruns.json")))


def table_row(cells: Sequence[str]) -> str:
    """One markdown table row, each cell escaped (a "|" inside a cell would split it)."""
    return "| " + " | ".join(md_escape(x).replace("|", "\\|") for x in cells) + " |"


def _cell(verdict: str, reason: str) -> str:
    mark = MARKS.get(verdict, verdict)
    return f"{mark} {reason}" if reason and verdict == INCONCLUSIVE else mark


def claims_matrix(runs: Sequence[ClaimSet]) -> str:
    """Markdown: one row per claim, one column per run (its protocol's name)."""
    if not runs:
        return ""
    head = ["claim", "paper says", *(r.protocol for r in runs)]
    lines = [table_row(head), "|" + " --- |" * len(head)]
    for i, c in enumerate(runs[0].claims):
        cells = [f"{c.key} {c.title}", c.paper]
        for r in runs:
            other = r.claims[i] if i < len(r.claims) else None
            cells.append(_cell(other.verdict, other.reason) if other else "–")
        lines.append(table_row(cells))
    return "\n".join(lines) + "\n"


def bindings(cs: ClaimSet) -> list[str]:
    """The binding search ranges the claims of ``cs`` name, each once, in the order found."""
    return list(dict.fromkeys(str(b) for c in cs.claims for b in c.evidence.get("binding", [])))


def run_section(cs: ClaimSet, link: str | None, title: str | None = None) -> str:
    """One run: its headline sentence and each claim's finding with its numbers. ``title``
    names the run where its folder, not its protocol's name, tells runs apart."""
    out = [f"### {md_escape(title or cs.protocol)}", ""]
    if link:
        out += [f"Full report: [{link}]({link}).", ""]
    out += [sentence(cs.headline), ""]
    if cs.headline.separation_warning:
        out += [f"> **Warning:** {cs.headline.separation_warning}", ""]
    sources = {str(c.evidence["source"]) for c in cs.claims if "source" in c.evidence}
    out += [f"Source: {md_escape(x)}." for x in sorted(sources)] + ([""] if sources else [])
    out += ["| claim | this study finds | verdict |", "| --- | --- | --- |"]
    for c in cs.claims:
        cells = (f"{c.key} {c.title}", c.finding, c.verdict_text())
        out.append(table_row(cells))
    binding = bindings(cs)
    if binding:
        out += ["", "Binding search ranges (claims depending on these cells are inconclusive):"]
        out += [f"- {md_escape(str(b))}" for b in binding]
    return "\n".join(out) + "\n"
