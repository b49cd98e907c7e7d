"""docs/results/FINDINGS.md, generated: the answer in plain words first, then the claims × runs
tables (full scale and screening apart), how much each open choice matters, the figures side by
side, what the paper left unstated, and each run's binding search ranges, all from the runs kept
under docs/results (each folder's claims.json, and the protocol its report.md prints). Runs not
there yet are listed as awaiting; no verdict or number here is written by hand.

The cells and comparisons are built in findings_tables.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from kfaclab import atomic
from kfaclab.analysis.claims.paper import ClaimSet
from kfaclab.analysis.claims.types import NOT_REPRODUCED, REPRODUCED
from kfaclab.analysis.findings import tables as ft
from kfaclab.analysis.findings.adaptive import adaptive_lines
from kfaclab.analysis.findings.design import design_section
from kfaclab.analysis.findings.readings import readings_section, readings_sentence
from kfaclab.analysis.findings.side_by_side import bindings, claims_for_run, run_section
from kfaclab.analysis.report.blocks import md_escape

# The readings of the paper's protocol, with what each assumes.
READINGS: tuple[tuple[str, str], ...] = (
    ("paper", "ReLU, λ as kfaclab defines it, factors from the first batch, no clip"),
    ("paper-linear", "as paper, no activation (the paper's 'linear NN' taken literally)"),
    ("paper-b2", "as paper, λ in the B²-scaled convention (ours = 16384 × the paper's)"),
    (
        "paper-popular",
        "alecwangcq/KFAC-Pytorch's defaults: identity-initialised factors, "
        "statistics every 10 steps, inverses every 100, MC Fisher, KL clip 1e-3",
    ),
    ("paper-popular-noclip", "paper-popular without the KL clip"),
)

# Full-scale runs, as folders docs/results/<name>: the readings, a replication, the first run.
FULL_RUNS: tuple[tuple[str, str], ...] = (
    *READINGS,
    ("paper-seed1", "paper again with another sampler seed: does its verdict replicate?"),
    ("paper-seed2", "paper a third time (search seed 2): the third replication"),
    (
        "paper-first-run",
        "the first full run of paper, with one absolute lr range for every λ (search ranges "
        "below); paper repeats it with the range relative to λ",
    ),
)


# Readings screened but not run at full scale, and why (the full runs follow the rule:
# the paper's protocol, the replication, and the two readings whose screening came closest to
# the paper in their first screens, with one absolute lr range: paper-linear and paper-b2 put
# their best λ at the paper's 1e0 there; docs/results/screening/README.md).
NOT_AT_FULL_SCALE: dict[str, str] = {
    "paper-popular": "screening best λ 1e-2, not the paper's 1e0; its lr binds at the top of "
    "its range, where the KL clip, not lr, sets the step",
    "paper-popular-noclip": "screening best λ 1e-5, not the paper's 1e0",
}


def awaited_runs(full: Mapping[str, ClaimSet]) -> list[str]:
    """Full-scale runs planned but not stored yet."""
    return [n for n, _ in FULL_RUNS if n not in full and n not in NOT_AT_FULL_SCALE]


def screening_folder(reading: str) -> str:
    return f"screening/readings-quick-{reading}"


# What the full presets not yet run search (configs/<name>.toml; a test checks they agree). Only
# used for runs still awaited: a run that landed states its own range in its report.md.
PRESET_LR = {
    "paper": "lr/λ ∈ [1e-4, 1e3]",
    "paper-linear": "lr/λ ∈ [1e-4, 1e3]",
    "paper-b2": "lr/λ ∈ [1e-4, 1e3]",
    "paper-seed1": "lr/λ ∈ [1e-4, 1e3]",
    "paper-seed2": "lr/λ ∈ [1e-4, 1e3]",
    "paper-popular": "lr ∈ [1e-6, 1e3]",
    "paper-popular-noclip": "lr ∈ [1e-6, 1e3]",
}

# The open choices compared by two runs that differ in that choice only: (choice, a, b).
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("activation", "paper", "paper-linear"),
    ("λ convention", "paper", "paper-b2"),
    ("factor initialisation and refresh", "paper", "paper-popular-noclip"),
    ("KL clip", "paper-popular-noclip", "paper-popular"),
    ("search range", "paper-first-run", "paper"),
    ("sampler seed (replication)", "paper", "paper-seed1"),
)

UNSTATED = (
    ("activation", "ReLU or none", "paper vs paper-linear"),
    ("λ convention", "per-example averaged G, or G/B² (λ × B²)", "paper vs paper-b2"),
    (
        "factor initialisation and refresh",
        "first batch every step, or identity + statistics every 10 (MC Fisher)",
        "paper vs paper-popular-noclip",
    ),
    ("KL clipping", "none (eq. 2), or 1e-3", "paper-popular vs paper-popular-noclip"),
    ("training length, batch size", "one epoch at B = 128 (469 steps)", "fixed in every reading"),
)


def collect(results: Path, folders: Mapping[str, str]) -> dict[str, ClaimSet]:
    """The claims of each named run whose folder (relative to ``results``) has claims.json."""
    return {
        n: claims_for_run(results / f)
        for n, f in folders.items()
        if (results / f / "claims.json").is_file()
    }


def _per_claim(full: Mapping[str, ClaimSet], screen: Mapping[str, ClaimSet]) -> list[str]:
    first = next(iter(full.values()), None) or next(iter(screen.values()))
    out = []
    for c in first.claims:
        line = f"- **{c.key}** — the paper: {c.paper}."
        for scale, runs in (("Full scale", full), ("Screening", screen)):
            if runs:
                line += f" **{scale}:** {ft.verdict_words(runs, c.key)}"
                line += f"; best λ {ft.best_words(runs)}." if c.key == "C1" else "."
        out.append(line)
    return out


def _somewhere(full: Mapping[str, ClaimSet], key: str, verdict: str) -> bool:
    return any(getattr(ft.by_key(cs, key), "verdict", None) == verdict for cs in full.values())


def conclusion(full: Mapping[str, ClaimSet], screen: Mapping[str, ClaimSet]) -> list[str]:
    """Per claim, which full runs and which screening runs reproduce it, do not, cannot tell;
    then the full-scale tally in one sentence."""
    if not full and not screen:
        return ["No run has landed yet: no claim can be judged."]
    out = _per_claim(full, screen)
    if not full:
        return [*out, "", "No full-scale run has landed yet: the verdicts above are screening's."]
    keys = [c.key for c in next(iter(full.values())).claims]
    yes = [k for k in keys if _somewhere(full, k, REPRODUCED)]
    no = [k for k in keys if _somewhere(full, k, NOT_REPRODUCED)]
    open_ = [k for k in keys if k not in yes + no]
    return [
        *out,
        "",
        f"**At full scale so far:** reproduced in at least one run: {', '.join(yes) or 'none'}; "
        f"not reproduced in at least one run: {', '.join(no) or 'none'}; undecided in every "
        f"run: {', '.join(open_) or 'none'}.",
    ]


def _scale(folder: Path) -> str | None:
    proto = ft.stored_protocol(folder)
    return ft.scale_words(proto) if proto else None


def _intro(results: Path, full: Mapping[str, ClaimSet], screen: Mapping[str, ClaimSet]) -> str:
    awaited = awaited_runs(full)
    scale = ft.grouped({n: _scale(results / n) for n in full}, name_one=False)
    text = "**Full scale:** " + (", ".join(full) if full else "no run yet")
    text += f" ({scale})" if scale else ""
    text += f". Awaiting: {', '.join(awaited)}." if awaited else "."
    skipped = [f"{n} ({why})" for n, why in NOT_AT_FULL_SCALE.items() if n not in full]
    text += f" Not run at full scale: {'; '.join(skipped)}." if skipped else ""
    if screen:
        folders = {n: _scale(results / screening_folder(n)) for n in screen}
        s_scale = ft.grouped(folders, name_one=False)
        text += f" **Screening:** {', '.join(screen)}" + (f" ({s_scale})." if s_scale else ".")
    return text


def _search_ranges(
    results: Path, full: Mapping[str, ClaimSet], screen: Mapping[str, ClaimSet]
) -> str:
    """Each run's lr range as its report.md states it; a run still awaited, as its preset does."""

    def lr(folder: Path) -> str:
        proto = ft.stored_protocol(folder)
        return (ft.lr_range(proto) if proto else None) or "range not stored"

    parts = []
    if screen:
        ranges = {n: lr(results / screening_folder(n)) for n in screen}
        parts.append("Screening: " + ft.grouped(ranges))
    if full:
        parts.append("Full: " + ft.grouped({n: lr(results / n) for n in full}))
    awaited = {n: PRESET_LR.get(n) for n in awaited_runs(full)}
    if any(awaited.values()):
        parts.append("Full, awaiting (their presets): " + ft.grouped(awaited))
    return (
        ". ".join(parts) + ". lr/λ: a fixed-λ cell searches lr/λ, so each λ's optimum has the "
        "same room (kfaclab.lr_scale); lr: one absolute range for every λ"
    )


def _screening_sections(screen: Mapping[str, ClaimSet]) -> list[str]:
    out = []
    for n, cs in screen.items():
        bound = bindings(cs)
        out.append(
            f"- **{md_escape(n)}** ([report]({screening_folder(n)}/report.md)): "
            + (f"{len(bound)} binding:" if bound else "no search range binds.")
        )
        out += [f"  - {md_escape(b)}" for b in bound]
    return out


def findings_markdown(results: Path) -> str:
    full = collect(results, {n: n for n, _ in FULL_RUNS})
    screen = collect(results, {n: screening_folder(n) for n, _ in READINGS})
    awaited = awaited_runs(full)
    unseparated = sum(bool(cs.headline.separation_warning) for cs in screen.values())
    lines = [
        *opening(results),
        "# Appendix: each run's own search, read on its top-k (descriptive)",
        "",
        "What follows is generated by `python -m kfaclab.analysis.findings.document` from the runs "
        "under docs/results (each folder's claims.json and report.md), by "
        "`kfaclab.analysis.claims`. Its intervals come from the top-k trials of one search on one "
        "training seed: they describe how spread the good hyperparameters are and understate the "
        "uncertainty of a cell (the opening's noise floor); the verdicts above, on paired "
        "reruns, are the ones that decide. Run names are folder names: `paper` is kfaclab's base "
        "reading, not the paper's own protocol.",
        "",
        "## In plain words (top-k)",
        "",
        _intro(results, full, screen),
        "",
        "✓ reproduced, ✗ not reproduced, ? cannot tell: the evidence does not decide, most often "
        "because a cell's best trials sit at the edge of a search range (range binds: the answer "
        "may be the range's, not λ's; the sections at the end list each run's).",
        "",
        *conclusion(full, screen),
        "",
        "## The claims at full scale",
        "",
        "Each cell: the verdict, then the numbers that decide it (95% intervals in brackets): "
        "C1 the best λ's top-k mean final loss and the λ tied with it; C2 the smallest λ's "
        "divergence rate against the best λ's and its loss relative to the best's; C3 the largest "
        "λ's loss minus the best's; C4/C5 the layers whose 95% bootstrap interval shows the "
        "claimed order, or the reverse, and the median shift in decades of (∂L/∂θ)² (positive: "
        "as claimed).",
        "",
        *(ft.claims_table(full) if full else ["No full-scale run has landed yet."]),
        "",
        *([f"**Awaiting their runs:** {', '.join(awaited)}.", ""] if awaited else []),
        *(f"- **{n}**: {what}" for n, what in FULL_RUNS),
        "",
        "## The claims at screening scale",
        "",
        f"The five readings screened (docs/results/screening/README.md). {unseparated} of "
        f"{len(screen)} screening runs cannot separate neighbouring λ (their 95% intervals "
        "overlap): they show which choices may matter, not final verdicts.",
        "",
        *(ft.claims_table(screen) if screen else ["No screening run is stored yet."]),
        "",
        *(
            [f"**Awaiting screening:** {', '.join(m)}.", ""]
            if (m := [n for n, _ in READINGS if n not in screen])
            else []
        ),
        "## How much each choice matters",
        "",
        "Two runs that differ in one choice: each one's best λ with its top-k mean final loss, "
        "whether the two losses' intervals separate, and the claims whose verdict changes. λ as "
        "each run's grid writes it (paper-b2's in the B²-scaled convention).",
        "",
        *ft.choices_table(CHOICES, full, screen, NOT_AT_FULL_SCALE),
        "",
        "## Adaptive damping without a grid",
        "",
        "The paper's open question: can a damping rule, tuned with the budget of one λ cell, "
        "match the best λ of a grid?",
        "",
        *adaptive_lines(results),
        "",
        "## The figures beside the paper's",
        "",
        "The paper's figure (a) shows the training loss of each λ falling over one run, λ = 1 "
        "lowest; its figure (b) histograms of (∂L/∂θ)² at iterations 60–360, larger λ with "
        "larger gradients early and smaller λ with larger gradients late. Ours, full scale:",
        "",
        *ft.figure_table(results, {n: n for n in full}),
        "",
        "Screening:",
        "",
        *ft.figure_table(results, {n: screening_folder(n) for n in screen}),
        "",
        "## What the paper left unstated, and which runs test it",
        "",
        "| choice | the options | compared by |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in UNSTATED),
        f"| search ranges | {_search_ranges(results, full, screen)} | each run's binding ranges "
        "below |",
        "",
        "## Each full run",
        "",
    ]
    for name, cs in full.items():
        link = f"{name}/report.md" if (results / name / "report.md").is_file() else None
        lines.append(run_section(cs, link, title=name))
    if not full:
        lines += ["No full-scale run has landed yet.", ""]
    lines += [
        "## Each screening run: the search ranges that bind",
        "",
        *_screening_sections(screen),
        "",
    ]
    return "\n".join(lines)


VERDICTS = (
    "verdicts"  # docs/results/verdicts: `kfaclab verdicts` over the base reading's replications
)
BASE_RUNS = ("paper", "paper-seed1", "paper-seed2")
BASE_READING = (
    "kfaclab's base reading: ReLU, PyTorch's default initialisation, empirical Fisher, factors "
    "from the first batch with EMA 0.95, exact damping (G⊗A + λI)⁻¹ with λ in our units, "
    "eigendecompositions every 10 steps, no KL clip, lr searched as lr/λ over [1e-4, 1e3], "
    "300 TPE trials a cell, one epoch at batch 128"
)


def opening(results: Path) -> list[str]:
    """The answer first (five lines), the effect sizes, the noise floor, what would change it:
    from docs/results/verdicts/verdicts.json. Without it, a line saying what to run."""
    from kfaclab.analysis.replication import findings_top as top

    path = results / VERDICTS / "verdicts.json"
    head = [
        "# Findings: does the 2022 K-FAC damping study reproduce?",
        "",
        "The study: Fujimori, Nagase & Naganuma (2022), on how the damping λ of K-FAC "
        "(θ ← θ − η (F + λI)⁻¹ ∇L) affects training of a 6-layer, 100-wide MLP on MNIST (its title "
        "is not confirmed here; cite it by authors and year). Its Fig. 2 shows the learning "
        "curves per λ, its Fig. 1 the histograms of (∂L/∂θ)² early and late in training.",
        "",
    ]
    if not path.is_file():
        return [
            *head,
            "No replication-level verdicts are stored yet: run `kfaclab replicate` "
            "on each replication and `kfaclab verdicts` over them.",
            "",
        ]
    a = json.loads(path.read_text(encoding="utf-8"))
    runs = [r for r in BASE_RUNS if r in a["replications"]] or a["replications"]
    screen = design_section(results)
    others = readings_section(results)
    return [
        *head,
        "## The answer",
        "",
        *top.five_lines(
            a, runs, BASE_READING, screened=bool(screen), others=readings_sentence(results)
        ),
        "",
        f"Details, figures and every cell: [verdicts/verdicts.md]({VERDICTS}/verdicts.md) (the "
        "paper's Fig. 2 as an overlay of every λ on new seeds, the gradient medians per layer "
        "against iteration, every seed as a dot).",
        "",
        "## Effect sizes",
        "",
        *top.effects_table(a),
        "",
        *(["## The same tests in other readings", "", *others, ""] if others else []),
        "## The noise floor: how much a rerun of the whole protocol moves a cell",
        "",
        *top.noise_table(a),
        "",
        "## What would change the answer",
        "",
        *top.would_change(a),
        "",
        *(["## Which unstated choice decides each claim", "", *screen] if screen else []),
    ]


def write_findings(results: Path, out: Path | None = None) -> Path:
    target = out or results / "FINDINGS.md"
    atomic.write_text(target, findings_markdown(results))  # the old file survives a failure
    return target


if __name__ == "__main__":  # python -m kfaclab.analysis.findings.document [RESULTS_DIR]
    import sys

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/results")
    sys.stdout.write(f"wrote {write_findings(folder)}\n")
