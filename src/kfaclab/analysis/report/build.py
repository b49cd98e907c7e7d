"""``build_report``: a stored study → report.md + self-contained report.html + figures/.

The report states what it cannot show (cells still running, cells where every trial diverged)
instead of failing, so it can be run at any time during a sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.analysis.claims.paper import ClaimSet, evaluate, headline
from kfaclab.analysis.claims.store import save_claims
from kfaclab.analysis.figures.draw import draw_all
from kfaclab.analysis.figures.style import DrawnFigure
from kfaclab.analysis.replication.assess import Assessment
from kfaclab.analysis.replication.report_blocks import (
    insert_paired,
    paired_replication,
    paper_claims,
    section,
)
from kfaclab.analysis.report import narrative as nv
from kfaclab.analysis.report import provenance as pv
from kfaclab.analysis.report.blocks import (
    Block,
    Bullets,
    Code,
    Heading,
    Image,
    Para,
    Table,
    Toc,
    to_html,
    to_markdown,
)
from kfaclab.analysis.report.cost_blocks import cost_blocks
from kfaclab.analysis.report.headline import headline_blocks
from kfaclab.analysis.report.numbers import column, num, percent
from kfaclab.analysis.summary.adaptive_store import ranked_cells, save_ranking
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.cost import Laps, StudyCost, study_cost
from kfaclab.analysis.summary.reruns import Runner, ensure_reruns, rerun_seeds
from kfaclab.analysis.summary.summaries import StudySummary, summarize, trials_by_cell
from kfaclab.analysis.summary.types import StudySetLike

READINGS: dict[str, Callable[[StudySummary], str]] = {
    "learning_curves": nv.learning_curves,
    "gradient_histograms": nv.histograms,
    "isolation": nv.isolation,
    "curvature": nv.curvature,
    "hyperparameters": nv.hyperparameters,
    "budget": nv.budget,
    "reruns": nv.reruns,
    "adaptive_ranking": nv.adaptive,
    "damping_traces": lambda s: (
        "λ of each adaptive rule over training (geometric mean of the "
        "top-k trials), beside the fixed values of the grid."
    ),
}
ADAPTIVE_KEYS = ("adaptive_ranking", "damping_traces")


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[DrawnFigure]
    summary: StudySummary
    claims: ClaimSet
    cost: StudyCost | None = None
    paired: Assessment | None = None  # the verdicts on new seeds, where paired reruns exist


def build_report(
    study: StudySetLike,
    out_dir: Path,
    *,
    storage: str,
    reruns: bool = True,
    runner: Runner | None = None,
    log: Callable[[str], None] = lambda s: None,
    workers: int = 1,
    paired_from: tuple[Path, ...] = (),
    load_seconds: float | None = None,
) -> Report:
    """``paired_from``: folders to look for the study's paired reruns in (``kfaclab replicate``;
    the report folder is always looked in first). ``load_seconds``: how long reading ``study``
    took, for the cost section (None: not measured)."""
    laps = Laps()  # the report's own time, by phase, for the cost section
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    first = summarize(study)
    laps.lap("summaries")
    if reruns:
        # reruns only for finished cells: a running cell's best trial may still change
        done = [c for c in first.cells if c.finished and c.best is not None]
        records = ensure_reruns(
            done,
            trials_by_cell(study),
            rerun_seeds(first.protocol),
            out_dir / "reruns.json",
            runner,
            log,
            study=getattr(study, "identity", ""),  # StudySet's; hand-made studies may lack it
            workers=workers,
        )
    laps.lap("reruns")
    summary = summarize(study, records) if records else first
    laps.lap("summaries")
    figures = draw_all(summary, out_dir / "figures")
    laps.lap("figures")
    paper = paper_claims(summary.protocol)
    claims = (
        evaluate(summary) if paper else ClaimSet(_name(summary.protocol), headline(summary), [])
    )
    # read once: the verdicts' blocks and the cost section's rerun seconds
    rep = paired_replication(study, summary.cells, (out_dir, *paired_from))
    paired, assessment = section(study, rep, out_dir, paper)
    save_claims(claims, out_dir / "claims.json")
    if summary.adaptive is not None:
        ranking = ranked_cells(summary.adaptive, summary.reruns)
        save_ranking(_name(summary.protocol), ranking, out_dir / "adaptive.json")
    laps.lap("verdicts")
    blocks = _blocks(summary, claims, figures, study, storage, reruns)
    insert_paired(blocks, paired, paper)
    laps.lap("blocks")
    cost = study_cost(study, records, rep.outcomes, laps, load_seconds)
    insert_before(blocks, "Protocol", cost_blocks(cost))
    title = f"kfaclab report: {_name(summary.protocol)}"
    md, page = out_dir / "report.md", out_dir / "report.html"
    markdown = to_markdown([Heading(title, 1), Toc(), *blocks], out_dir)
    html = to_html([Heading(title, 1), Toc(), *blocks], title)
    # Both or neither, each whole: a kill or a full disk keeps the previous report (kfaclab.atomic).
    atomic.write_many({md: markdown.encode("utf-8"), page: html.encode("utf-8")})
    return Report(page, md, figures, summary, claims, cost, assessment)


def insert_before(blocks: list[Block], heading: str, new: list[Block]) -> None:
    """``new`` before the first ``heading`` (at the end without one), in place."""
    at = next(
        (i for i, x in enumerate(blocks) if isinstance(x, Heading) and x.text == heading),
        len(blocks),
    )
    blocks[at:at] = new


def _name(protocol: Mapping[str, Any]) -> str:
    p = protocol.get("protocol", {})
    return str(p.get("name", "study")) if isinstance(p, Mapping) else "study"


def _blocks(
    s: StudySummary,
    claims: ClaimSet,
    figures: list[DrawnFigure],
    study: StudySetLike,
    storage: str,
    reruns: bool,
) -> list[Block]:
    b: list[Block] = []
    if not s.complete:
        running = [c.label for c in s.cells if not c.finished]
        b.append(
            Para(
                "This study is still running (" + ", ".join(running) + "); every number "
                "below is provisional and will change when it finishes.",
                "warning",
            )
        )
    binding = [x.sentence() for found in s.bindings.values() for x in found]
    b += headline_blocks(claims, binding)
    b += [Heading("Results"), _overview(s)]
    warnings = s.notes + [w.sentence() for w in s.edge_warnings]
    if warnings:
        b += [Heading("Warnings", 3), Bullets(warnings, "warning")]
    by_key = {f.key: f for f in figures}
    b.append(Heading("Figures"))
    for f in figures:
        if f.key not in ADAPTIVE_KEYS:
            b.append(Image(f.png, f.svg, f.title, READINGS[f.key](s)))
    if not reruns:
        b.append(Para("Reruns of the best configurations were skipped (--no-reruns).", "note"))
    if s.adaptive is not None:
        b += [Heading("Adaptive damping against the best fixed λ"), _adaptive_table(s)]
        b += [
            Image(by_key[k].png, by_key[k].svg, by_key[k].title, READINGS[k](s))
            for k in ADAPTIVE_KEYS
            if k in by_key
        ]
    b.append(Heading("Cells"))
    for c in s.cells:
        b += _cell_blocks(c, study)
    b += _protocol_blocks(s.protocol)
    b += _provenance_blocks(study, storage, s)
    return b


def _overview(s: StudySummary) -> Table:
    cells = s.cells
    best = [c.best.params if c.best else {} for c in cells]
    # one notation per quantity: means and interval bounds share one, sds have their own
    mean = column([c.final_loss.mean for c in cells])
    sd = column([c.final_loss.sd for c in cells])
    ci = column([c.final_loss.lo for c in cells] + [c.final_loss.hi for c in cells])
    n = len(cells)
    cols = {
        "acc": column([100 * c.test_accuracy.mean for c in cells]),
        "best": column([c.best.value if c.best else math.nan for c in cells]),
        "sec": column([c.seconds.mean for c in cells]),
        **{p: column([float(b.get(p, math.nan)) for b in best]) for p in HYPERS},
    }
    rows = []
    for i, c in enumerate(cells):
        f = c.final_loss
        rows.append(
            [
                c.label,
                f"{c.n_complete}/{c.n_target}"
                + (f" (+{c.n_running} running)" if c.n_running else ""),
                percent(c.divergence_rate),
                str(f.n),
                f"{mean[i]} ± {sd[i]}" if f.n else "all diverged" if c.n_complete else "–",
                f"[{ci[i]}, {ci[n + i]}]" if f.n > 1 else "–",
                cols["acc"][i],
                cols["best"][i],
                *(cols[p][i] for p in HYPERS),
                cols["sec"][i],
            ]
        )
    top = s.best_fixed
    return Table(
        [
            "cell",
            "trials done",
            "diverged",
            "top-k n",
            "final loss mean ± sd",
            "95% CI of mean",
            "test acc. %",
            "best loss",
            "best lr",
            "best momentum",
            "best lr decay",
            "s / trial",
        ],
        rows,
        "Final loss: full-training-set cross-entropy after the last step, over the top-k trials "
        "by that loss (diverged trials excluded and counted under 'diverged'). 95% CI: "
        "Student-t interval of the top-k mean. Test accuracy: top-k mean. Highlighted: the "
        "best fixed λ.",
        highlight=cells.index(top) if top is not None else None,
    )


HYPERS = ("lr", "momentum", "lr_decay")


def _adaptive_table(s: StudySummary) -> Table:
    assert s.adaptive is not None
    rows = [
        [
            r.label,
            r.kind,
            num(r.final_loss.mean),
            f"[{num(r.final_loss.lo)}, {num(r.final_loss.hi)}]",
            num(r.seconds_per_trial.mean),
            str(r.trials_total),
            num(r.seconds_total / 60),
            str(r.trials_to_reach or "–"),
            r.note,
        ]
        for r in s.adaptive.rows
    ]
    return Table(
        [
            "rank order",
            "kind",
            "top-k final loss",
            "95% CI",
            "s / trial",
            "tuning trials",
            "tuning time (min)",
            "trials to reach",
            "note",
        ],
        rows,
        "Tuning trials/time: every finished trial paid for to obtain this row's result "
        "(for a fixed λ, the whole grid). Trials to reach: search trials until the "
        "running best reached this row's top-k mean.",
    )


def _cell_blocks(c: CellSummary, study: StudySetLike) -> list[Block]:
    out: list[Block] = [Heading(c.label, 3)]
    for note in c.notes:
        out.append(Para(note, "warning"))
    top = set(c.top_numbers[:10])
    shown_trials = sorted(
        (t for t in study.trials if t.cell == c.name and t.number in top),
        key=lambda t: c.top_numbers.index(t.number),
    )
    cols = [
        column([t.value if t.value is not None else math.nan for t in shown_trials]),
        column(
            [100 * t.record.final_test_accuracy if t.record else math.nan for t in shown_trials]
        ),
        *(column([float(t.params.get(k, math.nan)) for t in shown_trials]) for k in HYPERS),
        column([t.seconds if t.seconds is not None else math.nan for t in shown_trials]),
    ]
    rows = [[str(t.number), *(col[i] for col in cols)] for i, t in enumerate(shown_trials)]
    if rows:
        shown = "" if len(c.top_numbers) <= 10 else f" (first 10 of the top {len(c.top_numbers)})"
        out.append(
            Table(
                ["trial", "final loss", "test acc. %", "lr", "momentum", "lr decay", "seconds"],
                rows,
                f"Best trials of {c.label}{shown}.",
                highlight=0,
            )
        )
    elif not c.notes:
        out.append(Para("No finished trial.", "note"))
    return out


# The choices the paper left open, and where this protocol fixes them.
OPEN_CHOICES = (
    ("batch size", ("training", "batch_size")),
    ("training length (epochs)", ("training", "epochs")),
    ("training length (steps, overrides epochs)", ("training", "steps")),
    ("activation between layers", ("model", "activation")),
    ("Fisher type", ("training", "fisher")),
    ("how λ enters the inverse", ("training", "damping_form")),
    ("factor EMA decay", ("training", "factor_decay")),
    ("inverse/eigendecomposition every", ("training", "inverse_every")),
    ("λ convention", ("cells", "lambda_convention")),
    ("learning-rate range", ("search", "lr")),
    ("learning-rate range relative to λ", ("search", "lr_scale")),
    ("linear-decay coefficient range", ("search", "lr_decay")),
    ("momentum range", ("search", "momentum")),
    ("trials per cell", ("search", "n_trials")),
    ("top-k aggregated", ("search", "top_k")),
    ("sampler", ("search", "sampler")),
    ("training seeds", ("search", "trial_seeds")),
)
# What an unset key means (the protocol reader's defaults), so the table never just says "default".
OPEN_CHOICE_DEFAULTS = {
    ("training", "epochs"): "1",
    ("training", "steps"): "one epoch",
    ("search", "sampler"): '"tpe"',
    ("search", "lr_scale"): '"none" (every cell searches lr itself)',
    ("search", "trial_seeds"): '"fixed" (every trial trains with search.seed)',
}


def _protocol_blocks(protocol: Mapping[str, Any]) -> list[Block]:
    rows = []
    for what, (sec, key) in OPEN_CHOICES:
        table = protocol.get(sec, {})
        value = table.get(key) if isinstance(table, Mapping) else None
        shown = (
            f"default: {OPEN_CHOICE_DEFAULTS.get((sec, key), 'see paper.toml')}"
            if value is None
            else _toml_value(value)
        )
        rows.append([what, f"[{sec}] {key}", shown])
    rows.append(["linear decay formula", "TrialConfig.lr_decay", "η_t = η₀ (1 − (1 − α) t / T)"])
    rows.append(["initialisation", "—", "PyTorch default for nn.Linear"])
    return [
        Heading("Protocol"),
        Para(
            "Choices the paper (Fujimori, Nagase, Naganuma 2022) left open, as this study fixed "
            "them; the full protocol file follows."
        ),
        Table(["choice", "protocol key", "value"], rows),
        Code(_toml(protocol)),
    ]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        # a JSON string is a valid TOML basic string: newlines and control characters escaped,
        # so a description cannot end the line or the code fence
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML escapes DEL
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def _toml(protocol: Mapping[str, Any]) -> str:
    """The protocol dict back as TOML (tables of scalars; nested tables as inline tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in protocol.items() if not isinstance(v, Mapping)]
    for name, table in protocol.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines).strip()


def _provenance_blocks(study: StudySetLike, storage: str, s: StudySummary) -> list[Block]:
    search = s.protocol.get("search", {})
    sampler_seed = search.get("seed") if isinstance(search, Mapping) else None
    rows = [[k, v] for k, v in pv.versions()]
    rows += [["git commit", pv.git_commit()], *([k, v] for k, v in pv.hardware())]
    rows += [
        ["storage", pv.strip_password(storage)],
        ["sampler seed", str(sampler_seed) if sampler_seed is not None else "–"],
        ["trial seeds", pv.trial_seeds(study.trials)],
        ["rerun seeds", ", ".join(map(str, s.reruns[0].seeds)) if s.reruns else "no reruns"],
    ]
    return [
        Heading("Provenance"),
        Para(
            "Software and machine are those that built this report; the trials ran where "
            "the sweep's workers ran."
        ),
        Table(["item", "value"], rows),
    ]
