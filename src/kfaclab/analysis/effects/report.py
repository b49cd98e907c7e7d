"""`kfaclab effects DIR`: every run's responses, the effects table per response, the half-normal
plots; effects.md (plain words first), effects.json (the same numbers) and the figures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.analysis.effects.halfnormal import draw_half_normal, half_normal
from kfaclab.analysis.effects.model import EffectsTable, Observation, fit_effects
from kfaclab.analysis.effects.responses import NEEDS_RECORDS, RESPONSES, RunData
from kfaclab.analysis.replication.load import study_reruns
from kfaclab.errors import UsageError
from kfaclab.study.design_schema import Design


@dataclass
class RunValues:
    name: str
    seed: int
    levels: tuple[int, ...]
    values: dict[str, float]
    notes: list[str] = field(default_factory=list)


def read_runs(
    folder: Path, design: Design, names: list[str], storage: str | None = None
) -> list[RunValues]:
    """Each run's responses from its stored studies; a run not stored yet, or with a cell short
    of its trials, gets nan and a note."""
    from kfaclab.study.design_sweep import run_spec
    from kfaclab.study.reader import read_study_set

    records = any(n in NEEDS_RECORDS for n in names)
    out = []
    for run in design.runs:
        try:
            study = read_study_set(
                run_spec(folder, run, storage), protocol=run.protocol_name, with_records=records
            )
        except (UsageError, OSError) as exc:
            nan = dict.fromkeys(names, math.nan)
            out.append(RunValues(run.name, run.seed, run.levels, nan, [f"not readable: {exc}"]))
            continue
        # Paired reruns are read from the run's folder under the design's: beside its journal
        # (`kfaclab replicate FOLDER/RUN`), or put there by `replicate --storage URL --out
        # FOLDER/RUN` for a design kept in a database.
        reruns = study_reruns(folder / run.name, study)
        data = RunData(run.name, run.seed, run.levels, study, reruns=reruns)
        unfinished = [c.label for c in data.cells if not c.finished]
        if unfinished:
            # A run still sweeping (or stopped) has fewer trials in some cells: its responses
            # would carry a budget bias no other run has, so it counts as missing until done.
            nan = dict.fromkeys(names, math.nan)
            note = (
                f"left out until finished: unfinished cells {', '.join(unfinished)}"
                if study.trials
                else "not run yet"
            )
            out.append(RunValues(run.name, run.seed, run.levels, nan, [note]))
            continue
        values = {n: float(RESPONSES[n](data)) for n in names}
        out.append(RunValues(run.name, run.seed, run.levels, values, data.notes))
    return out


def effects_tables(design: Design, runs: list[RunValues], names: list[str]) -> list[EffectsTable]:
    return [
        fit_effects(design, [Observation(r.levels, r.seed, r.values[n]) for r in runs], n)
        for n in names
    ]


def write_effects(
    folder: Path, out: Path, *, storage: str | None = None, responses: list[str] | None = None
) -> list[Path]:
    from kfaclab.study.design_sweep import load_manifest_design

    design = load_manifest_design(folder)
    names = list(RESPONSES) if responses is None else responses
    for n in names:
        if n not in RESPONSES:
            raise UsageError(
                f"--responses names an unknown response {n!r}; known: {', '.join(RESPONSES)}"
            )
    runs = read_runs(folder, design, names, storage)
    tables = effects_tables(design, runs, names)
    written = []
    for table in tables:
        if table.effects:
            written.append(
                draw_half_normal(half_normal(table), out, f"halfnormal-{table.response}")[0]
            )
    data = effects_data(design, runs, tables, design_scale(folder))
    text = json.dumps(data, indent=1, default=str, allow_nan=True)
    written.insert(0, atomic.write_text(out / "effects.json", text + "\n"))
    written.insert(0, atomic.write_text(out / "effects.md", markdown(design, runs, tables)))
    return written


def effects_data(
    design: Design, runs: list[RunValues], tables: list[EffectsTable], scale: dict[str, Any]
) -> dict[str, Any]:
    """effects.json's content (read back by analysis/findings/design.py)."""
    return {
        "design": design.describe(),
        "scale": scale,
        "factors": [
            {"letter": f.letter, "name": f.name, "labels": f.labels} for f in design.factors
        ],
        "runs": [asdict(r) for r in runs],
        "effects": [asdict(t) for t in tables],
    }


def design_scale(folder: Path) -> dict[str, Any]:
    """The base protocol's budget and length (what every run shares unless a level sets it)."""
    from kfaclab.study.design_sweep import read_manifest

    raw = read_manifest(folder)["design_file"]
    search, training = raw.get("search", {}), raw.get("training", {})
    return {
        "n_trials": search.get("n_trials"),
        "top_k": search.get("top_k"),
        "epochs": training.get("epochs"),
        "steps": training.get("steps"),
    }


def cost_line(runs: list[RunValues]) -> str | None:
    """The design's wall time so far and its K-FAC trials' cost, from the per-run responses
    ``wall_minutes`` and ``kfac_trial_seconds`` (None when they were not computed)."""
    walls = [r.values.get("wall_minutes", math.nan) for r in runs]
    done = [w for w in walls if math.isfinite(w)]
    if not done:
        return None
    secs = [r.values.get("kfac_trial_seconds", math.nan) for r in runs]
    secs = [x for x in secs if math.isfinite(x)]
    line = (
        f"Cost: {len(done)} finished runs took {sum(done) / 60:.1f} h of active wall time "
        f"({min(done):.0f}–{max(done):.0f} min a run)"
    )
    if secs:
        line += f"; a K-FAC trial {min(secs):.2f}–{max(secs):.2f} s (mean over each run's trials)"
    return line + ". The effects on `wall_minutes` and `kfac_trial_seconds` say which choices cost."


def plain_words(
    table: EffectsTable, design: Design | None = None, runs: list[RunValues] | None = None
) -> str:
    """One sentence: which effects' intervals exclude 0, largest first; with the runs, each such
    main effect followed by the raw mean response at each of its levels (level_means)."""
    if not table.effects:
        return f"{table.response}: not estimable ({'; '.join(table.notes)})."
    clear = sorted((e for e in table.effects if e.clear_of_zero), key=lambda e: -abs(e.estimate))
    pct = round(table.level * 100)
    if not clear:
        if all(math.isnan(e.ci_low) for e in table.effects):
            return f"{table.response}: no intervals (no replicates); see the half-normal plot."
        return f"{table.response}: no effect's {pct}% interval excludes 0."
    parts = []
    for e in clear:
        part = f"{e.names} {e.estimate:+.3g} [{e.ci_low:.3g}, {e.ci_high:.3g}]"
        if design is not None and runs is not None and e.names in design_factor_names(design):
            means = level_means(design, runs, table.response, e.names)
            part += " (" + "; ".join(f"{lab} {m:.3g}, {n} runs" for lab, m, n in means) + ")"
        parts.append(part)
    return f"{table.response}: {pct}% intervals exclude 0 for " + "; ".join(parts) + "."


def design_factor_names(design: Design) -> set[str]:
    return {f.name for f in design.factors}


def level_means(
    design: Design, runs: list[RunValues], response: str, factor: str
) -> list[tuple[str, float, int]]:
    """(level label, mean response, runs with a value) at each level of ``factor``: the raw
    means behind a main effect (its estimate is their difference when no run is missing)."""
    index = next(i for i, f in enumerate(design.factors) if f.name == factor)
    out = []
    for level, label in enumerate(design.factors[index].labels):
        values = [
            r.values[response]
            for r in runs
            if r.levels[index] == level and math.isfinite(r.values.get(response, math.nan))
        ]
        out.append((label, sum(values) / len(values) if values else math.nan, len(values)))
    return out


def markdown(design: Design, runs: list[RunValues], tables: list[EffectsTable]) -> str:
    lines = [
        f"# Effects: {design.name}",
        "",
        f"Design: {design.describe()}; seeds {list(design.seeds)} are the replicates.",
        "",
    ]
    lines += [f"- {plain_words(t, design, runs)}" for t in tables]
    cost = cost_line(runs)
    lines += ["", cost] if cost else []
    lines += ["", "Factors (level 0 → −, level 1 → +):", ""]
    lines += [f"- {f.letter} = {f.name}: {' / '.join(f.labels)}" for f in design.factors]
    for t in tables:
        lines += [
            "",
            f"## {t.response}",
            "",
            f"{t.n_obs} runs, {t.df_resid} residual df, mean {t.grand_mean:.4g}. "
            "Effect = mean at + minus mean at −.",
            "",
        ]
        lines += [f"- note: {n}" for n in t.notes]
        lines += ["| term | factors | effect | 95% interval | p |", "|---|---|---|---|---|"]
        for e in t.effects:
            lines.append(
                f"| {e.term} | {e.names} | {e.estimate:+.4g} | [{e.ci_low:.4g}, "
                f"{e.ci_high:.4g}] | {e.p_value:.3g} |"
            )
    names = [t.response for t in tables]
    lines += [
        "",
        "## Runs",
        "",
        "| run | "
        + " | ".join(f.name for f in design.factors)
        + " | "
        + " | ".join(names)
        + " | notes |",
        "|---" * (len(design.factors) + len(names) + 2) + "|",
    ]
    for r in runs:
        levels = [f.labels[i] for f, i in zip(design.factors, r.levels, strict=True)]
        vals = [f"{r.values[n]:.4g}" for n in names]
        lines.append(
            f"| {r.name} | " + " | ".join(levels + vals) + " | " + "; ".join(r.notes) + " |"
        )
    return "\n".join(lines) + "\n"
