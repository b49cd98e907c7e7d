"""The report's section for paired reruns: the verdicts on new seeds, as report blocks.

A report whose study folder (or report folder) holds ``paired-reruns.jsonl`` (`kfaclab
replicate`) shows these verdicts first: they use seeds as units; the top-k verdicts of the search
that follow are then descriptive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfaclab.analysis.replication.assess import Assessment, assess
from kfaclab.analysis.replication.figures import draw_all
from kfaclab.analysis.replication.markdown import SYMBOL, noise_lines
from kfaclab.analysis.replication.pool import CACHE_NAME, load_cache, trial_key
from kfaclab.analysis.replication.rules import (
    TABLE_HEADER,
    caption,
    compare_rules,
    has_rules,
    rules_answer,
    table_rows,
)
from kfaclab.analysis.replication.units import Replication, replication_of
from kfaclab.analysis.replication.verdicts import Thresholds
from kfaclab.analysis.report.blocks import Block, Heading, Image, Para, Table
from kfaclab.analysis.statistics.binding import bindings
from kfaclab.analysis.statistics.search import cell_ranges
from kfaclab.analysis.summary.summaries import trials_by_cell


def paper_claims(protocol: dict[str, Any]) -> bool:
    """Whether the protocol asks for the paper's five claims ([claims] paper, default true)."""
    t = protocol.get("claims", {})
    return bool(t.get("paper", True)) if isinstance(t, dict) else True


def thresholds_of(protocol: dict[str, Any]) -> Thresholds:
    """The protocol's pre-registered [claims] thresholds (defaults where absent)."""
    t = protocol.get("claims", {})
    t = t if isinstance(t, dict) else {}
    base = Thresholds()
    return Thresholds(
        alpha=float(t.get("alpha", base.alpha)),
        divergence_margin=float(t.get("divergence_margin", base.divergence_margin)),
        tie_margin=float(t.get("tie_margin", base.tie_margin)),
    )


def paired_replication(study: Any, cells: Sequence[Any], folders: Sequence[Path]) -> Replication:
    """This study's paired reruns from the first of ``folders`` holding any of them, with the
    search ranges that bind its cells (as `kfaclab verdicts` reads them: replication.load), so a
    verdict resting on a bound cell is inconclusive here too."""
    identity = getattr(study, "identity", "")  # StudySet's; hand-made studies may lack it
    keys = {trial_key(identity, t.cell, t.number) for t in study.trials}
    outcomes = []
    for folder in folders:
        stored, _ = load_cache(folder / CACHE_NAME)
        outcomes = [o for (k, _), o in sorted(stored.items()) if k in keys]
        if outcomes:
            break
    proto = study.protocol.get("protocol", {})
    name = str(proto.get("name", "study")) if isinstance(proto, dict) else "study"
    bound: dict[str, list[str]] = {}
    if outcomes:  # (no reruns: no verdicts to qualify)
        found = bindings(cells, trials_by_cell(study), lambda c: cell_ranges(study.protocol, c))
        bound = {label: [b.sentence() for b in found[label]] for label in found}
    return replication_of(name, cells, outcomes, bound, study.protocol)


def replication_blocks(a: Assessment, figures_dir: Path, paper: bool) -> list[Block]:
    figs = draw_all(a, figures_dir, paper)
    out: list[Block] = [Heading("Verdicts on new seeds (paired reruns)")]
    out.append(
        Para(
            f"Each cell's top configurations reran on {a.n_units} new seeds shared by every cell "
            "(paired); a diverged rerun counts as chance level. A difference decides only if its "
            "95% interval over seeds excludes 0 (and every replication agrees)."
        )
    )
    if paper:
        out.append(
            Table(
                ["claim", "paper says", "on new seeds", "verdict"],
                [
                    [c.key, c.paper, c.finding, f"{SYMBOL.get(c.verdict, '?')} {c.verdict}"]
                    for c in a.claims
                ]
                + [["C4∧C5", "the crossing", "both halves must hold", a.crossing]],
                "Claims tested as what they say (kfaclab.analysis.replication.verdicts).",
            )
        )
    rows = []
    for c in a.cells:
        k, n, lo, hi = c.diverged
        cl = c.capped_loss
        rows.append(
            [
                c.label,
                _g(c.relative_damping),
                f"{_g(cl['estimate'])} [{_g(cl['lo'])}, {_g(cl['hi'])}]",
                f"{int(k)}/{int(n)} [{lo:.0%}, {hi:.0%}]",
                _g(c.escape["estimate"]),
            ]
        )
    out.append(
        Table(
            ["cell", "λ / mean eig(G⊗A)", "final loss (geo. mean, 95%)", "diverged", "escape"],
            rows,
            "Per cell, over its reruns: the loss interval is computed on the log scale (never "
            "below 0); divergence with Wilson's interval; plateau escape = first iteration whose "
            "5-step mean loss is below 2.0.",
        )
    )
    out += [Para(line) for line in noise_lines(a)] if len(a.replications) > 1 else []
    out += [Image(f.png, f.svg, f.title, "") for f in figs]
    return out


PAIRED_NOTE = (
    "The verdicts above decide: paired reruns on new seeds. The section below reads this "
    "search's own top-k trials, one training seed: it describes the search."
)
TOPK_HEADING = "What the search itself found (top-k, descriptive)"


def insert_paired(blocks: list[Block], paired: list[Block], paper: bool = True) -> None:
    """The paired section first, where the answer was (in place): the verdicts that decide come
    before the search's own top-k answer, which is then headed as descriptive."""
    if not paired:
        return
    at = next(
        (i for i, x in enumerate(blocks) if isinstance(x, Heading) and x.text == "Answer"),
        None,
    )
    if at is None:  # no answer section: before the results, as before
        at = next(
            (i for i, x in enumerate(blocks) if isinstance(x, Heading) and x.text == "Results"),
            len(blocks),
        )
    else:
        blocks[at] = Heading(TOPK_HEADING)
    blocks[at:at] = [*paired, Para(PAIRED_NOTE, "note")] if paper else paired


def _g(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def section(
    study: Any, rep: Replication, out_dir: Path, paper: bool
) -> tuple[list[Block], Assessment | None]:
    """The blocks of ``rep`` (``paired_replication``'s) and its assessment, or ([], None) when it
    holds no reruns."""
    if not rep.outcomes:
        return [], None
    th = thresholds_of(study.protocol)
    a = assess([rep], th)
    return [*replication_blocks(a, out_dir / "figures", paper), *rule_blocks([rep], th)], a


def rule_blocks(reps: Sequence[Replication], th: Thresholds) -> list[Block]:
    """Each adaptive rule against the best fixed λ on the reruns (rules.py); [] without rules."""
    if not has_rules(reps):
        return []
    c = compare_rules(reps, th)
    return [
        Heading("Adaptive rules against the best fixed λ (new seeds)"),
        Para(rules_answer(c)),
        Table(TABLE_HEADER, table_rows(c), caption(c)),
    ]
