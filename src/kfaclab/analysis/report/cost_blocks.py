"""The report's "Cost of this study" section: a ``StudyCost`` (analysis/summary/cost.py) as blocks.

Draws only: every number is computed, and tested, in ``kfaclab.analysis.summary.cost``.
"""

from __future__ import annotations

import math

from kfaclab.analysis.report.blocks import Block, Heading, Para, Table
from kfaclab.analysis.report.numbers import column, num, percent
from kfaclab.analysis.summary.cost import AnalysisCost, Plan, RerunCost, StudyCost, TrainingCost

TITLE = "Cost of this study"
RERUN_NAMES = {
    "report": "report reruns (each cell's best on the report's seeds; reruns.json)",
    "paired": "paired reruns (`kfaclab replicate`; paired-reruns.jsonl)",
}
PHASE_NAMES = {
    "summaries": "summaries",
    "reruns": "reruns",
    "figures": "figures",
    "verdicts": "claims and verdicts",
    "blocks": "tables and text",
}


def cost_blocks(cost: StudyCost) -> list[Block]:
    t = cost.training
    out: list[Block] = [Heading(TITLE), Para(training_sentence(t))]
    if t.cells:
        out.append(_cell_table(t))
    out.append(_share_table(cost))
    out.append(Para(analysis_sentence(cost.analysis)))
    out.append(Para(plan_sentence(cost.plan, t), "note"))
    return out


def training_sentence(t: TrainingCost) -> str:
    if not t.timed or t.first_start is None or t.last_end is None:
        return "Training: no trial has both a start and an end time yet; nothing to time."
    finished = sum(c.finished for c in t.cells)
    diverged = sum(c.diverged for c in t.cells)
    failed = sum(c.failed for c in t.cells)
    unfinished = sum(c.unfinished for c in t.cells)
    span = f"{t.first_start:%Y-%m-%d %H:%M} to {t.last_end:%Y-%m-%d %H:%M}"
    if t.idle_gaps:
        gaps = (
            f"{duration(t.active_seconds)} once {len(t.idle_gaps)} idle gap(s) longer than "
            f"{duration(t.gap_threshold)} with no trial running (the sweep stopped and resumed; "
            f"{duration(sum(t.idle_gaps))} in all) are taken out"
        )
    else:
        gaps = f"no idle gap longer than {duration(t.gap_threshold)}"
    running = f"; {unfinished} still running or waiting, not counted" if unfinished else ""
    return (
        f"Training: {finished} finished trials ({diverged} diverged) and {failed} failed"
        f"{running}. Wall time {duration(t.span_seconds)} (first start to last end, {span}); "
        f"{gaps}. {num(t.trials_per_second)} trials per second of active wall time, "
        f"{duration(t.trial_seconds)} of trial time in all (each trial's start to end, summed "
        f"over workers), so {num(t.parallelism)} trials ran at once on average."
    )


def _cell_table(t: TrainingCost) -> Table:
    means = column([c.mean_seconds for c in t.cells] + [t.mean_seconds])
    total = t.trial_seconds
    rows = [
        [
            c.label,
            f"{c.finished}/{c.planned}",
            str(c.diverged),
            str(c.failed),
            duration(c.trial_seconds),
            means[i],
            percent(c.trial_seconds / total) if total > 0 else "–",
        ]
        for i, c in enumerate(t.cells)
    ]
    rows.append(
        [
            "all",
            f"{sum(c.finished for c in t.cells)}/{sum(c.planned for c in t.cells)}",
            str(sum(c.diverged for c in t.cells)),
            str(sum(c.failed for c in t.cells)),
            duration(total),
            means[-1],
            "100%" if total > 0 else "–",
        ]
    )
    return Table(
        ["cell", "finished", "diverged", "failed", "trial time", "s / trial", "share"],
        rows,
        "Per cell, from the stored trials' start and end times (Optuna's). Finished includes "
        "diverged trials, which stop early and so cost less. s / trial: mean start-to-end time "
        "of the finished and failed trials, sampling and storing included. A population sweep "
        "(--population) steps many trials in one process, so their times overlap and count "
        "once per trial.",
    )


def _share_table(cost: StudyCost) -> Table:
    rows = [["training (the sweep's trials)", str(cost.training.timed)]]
    rows += [[RERUN_NAMES.get(r.what, r.what), _rerun_count(r)] for r in cost.reruns]
    rows.append(["analysis (this report, less its own reruns)", "–"])
    parts, shares = cost.parts, cost.shares
    for row, key in zip(rows, parts, strict=True):
        row += [duration(parts[key]), percent(shares[key])]
    return Table(
        ["part", "runs", "worker time", "share"],
        rows,
        "Where the time went, in worker-seconds (time each process spent, summed over "
        "processes). Rerun times are those each rerun recorded (building, training, evaluating; "
        "not starting its worker or loading data); the wall time of `kfaclab replicate` is not "
        "stored, and with W workers it is about its worker time / W.",
    )


def _rerun_count(r: RerunCost) -> str:
    if r.timed == r.count:
        return str(r.count)
    if not r.timed:
        return f"{r.count} (time not recorded)"
    return f"{r.count} (time recorded for {r.timed})"


def analysis_sentence(a: AnalysisCost) -> str:
    phases = [f"{PHASE_NAMES.get(k, k)} {duration(v)}" for k, v in a.phases.items()]
    load = (
        f"reading the study {duration(a.load_seconds)}"
        if a.load_seconds is not None
        else "reading the study not measured (it was read before the report began)"
    )
    return (
        f"Analysis: this report took {duration(a.seconds)} ({load}; " + "; ".join(phases) + "). "
        "Writing report.md and report.html comes after this section and is not included."
    )


def plan_sentence(p: Plan | None, t: TrainingCost) -> str:
    if p is None:
        return "Planning: no timed trial yet, so no rate to plan from."
    per = f"{p.cells} cells"
    if p.per_cell is not None:
        per = f"{p.per_cell} trials per cell × {per}"
    timed = [c.mean_seconds for c in t.cells if c.timed]
    spread = (
        f" (from {num(min(timed))} to {num(max(timed))} s per trial by cell)"
        if len(timed) > 1
        else ""
    )
    return (
        f"Planning: at this study's measured rates{spread}, {per} = {p.trials} trials ≈ "
        f"{num(p.worker_seconds / 3600)} worker-hours; at this sweep's parallelism "
        f"({num(t.parallelism)}) ≈ {num(p.wall_seconds / 3600)} h wall, and with W workers "
        f"that keep busy ≈ {num(p.worker_seconds / 3600)} / W h (training only; add the reruns)."
    )


def duration(seconds: float | None) -> str:
    """Seconds read at a glance, to the precision that matters for planning: "42.0 s",
    "3 min 05 s", "2 h 07 min"."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 0.1:  # a phase with nothing to do; three digits of noise say nothing
        return "0 s" if seconds <= 0 else "under 0.1 s"  # "<" is escaped in Markdown
    if seconds < 60:
        return f"{num(seconds)} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60:02d} s" if s % 60 else "")
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
