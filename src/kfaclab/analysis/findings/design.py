"""FINDINGS.md's "Which unstated choice decides each claim": a factorial design's effects.json
(written by `kfaclab effects`, kept under docs/results/<design>/) read back and put in words.

Each claim is tied to the continuous responses that carry it (analysis/effects/responses.py);
a factor "decides" a response when its effect's 95% interval excludes 0. The words never go
past the data: they name the design's scale, how many of its runs have finished, and whose
interval it is (across seeds, or Lenth's while the replicates are too few).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# response → (claim, what it measures, unit of its effect)
CLAIM_RESPONSES: dict[str, tuple[str, str, str]] = {
    "log10_best_lambda": ("C1", "where the best λ lies", "decades of λ"),
    "loss_gap_at_one": ("C1", "how far λ = 1 ends above the best λ", "nats"),
    "smallest_lambda_divergence": (
        "C2",
        "how often the search's trials at the smallest λ diverge",
        "share of trials",
    ),
    "smallest_lambda_rerun_divergence": (
        "C2",
        "how often the smallest λ's top configurations diverge on new seeds",
        "share of reruns",
    ),
    "crossing": ("C4/C5", "the crossing (late − early gradient slope on log10 λ)", "per decade"),
    "escape_slope": ("C4", "plateau escape per decade of λ", "iterations"),
}
INTERVAL_WORDS = {
    "replicates": "95% intervals across seeds",
    "lenth": "95% intervals from Lenth's pseudo standard error (too few replicates yet)",
    "none": "no intervals",
}


@dataclass(frozen=True)
class FactorEffect:
    names: str  # "refresh", or an alias chain "activation×init = …"
    change: str  # "batch-1-10 → identity-10-100" for a main effect, "" for a chain
    estimate: float
    ci_low: float
    ci_high: float

    @property
    def clear(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def words(self) -> str:
        what = f"{self.names} ({self.change})" if self.change else self.names
        return f"{what} {self.estimate:+.3g} [{self.ci_low:+.3g}, {self.ci_high:+.3g}]"


@dataclass(frozen=True)
class ResponseFinding:
    response: str
    claim: str
    meaning: str
    unit: str
    interval: str
    n_obs: int
    effects: list[FactorEffect]  # largest |estimate| first

    @property
    def deciding(self) -> list[FactorEffect]:
        return [e for e in self.effects if e.clear]


@dataclass(frozen=True)
class DesignFinding:
    folder: str
    describe: str
    runs_done: int
    runs_total: int
    seeds_done: list[int]
    responses: list[ResponseFinding]
    scale: Mapping[str, Any]  # the base protocol's n_trials, top_k, epochs, steps

    def scale_words(self) -> str:
        n, epochs, steps = (self.scale.get(k) for k in ("n_trials", "epochs", "steps"))
        length = (
            f"{steps} steps"
            if steps
            else f"{epochs or 1} epoch" + ("s" if epochs and epochs > 1 else "")
        )
        return f"{n} TPE trials a cell, {length}" if n else length


def read_design(folder: Path) -> DesignFinding:
    """One design's findings from its effects.json."""
    data = json.loads((folder / "effects.json").read_text(encoding="utf-8"))
    labels = {f["name"]: f["labels"] for f in data["factors"]}
    runs = data["runs"]
    # A run counts as finished once it has any response: some stay undefined by design (no
    # reruns yet, no histogram), and an unfinished run has none (analysis/effects/report.py).
    done = [r for r in runs if any(_finite(v) for v in r["values"].values())]
    responses = []
    for table in data["effects"]:
        name = table["response"]
        if name not in CLAIM_RESPONSES or not table["effects"]:
            continue
        claim, meaning, unit = CLAIM_RESPONSES[name]
        effects = [
            FactorEffect(
                e["names"],
                " → ".join(labels[e["names"]][:2]) if e["names"] in labels else "",
                float(e["estimate"]),
                float(e["ci_low"]),
                float(e["ci_high"]),
            )
            for e in table["effects"]
        ]
        effects.sort(key=lambda e: -abs(e.estimate))
        responses.append(
            ResponseFinding(
                name, claim, meaning, unit, table["interval"], int(table["n_obs"]), effects
            )
        )
    return DesignFinding(
        folder.name,
        data["design"],
        len(done),
        len(runs),
        sorted({int(r["seed"]) for r in done}),
        responses,
        data.get("scale", {}),
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


@dataclass(frozen=True)
class DesignPoint:
    levels: tuple[int, ...]
    words: str  # "activation=tanh, init=torch, ..."
    means: Mapping[str, float]  # each response's mean over the point's finished seeds
    n_seeds: int


def closest_to_c1(folder: Path) -> DesignPoint | None:
    """The design point whose best λ, averaged over its seeds, lies closest to the paper's
    λ = 1 (|log10|): the combination the screen points to for C1, the claim no full-scale
    reading reproduces (configs/paper-closest.toml runs it at full scale). None when no run
    has a best λ."""
    data = json.loads((folder / "effects.json").read_text(encoding="utf-8"))
    points: dict[tuple[int, ...], list[Mapping[str, Any]]] = {}
    for r in data["runs"]:
        if _finite(r["values"].get("log10_best_lambda")):
            points.setdefault(tuple(r["levels"]), []).append(r["values"])
    if not points:
        return None

    def mean(values: list[Mapping[str, Any]], key: str) -> float:
        xs = [float(v[key]) for v in values if _finite(v.get(key))]
        return sum(xs) / len(xs) if xs else math.nan

    best = min(points, key=lambda p: abs(mean(points[p], "log10_best_lambda")))
    names = [f["name"] for f in data["factors"]]
    labels = [f["labels"] for f in data["factors"]]
    words = ", ".join(f"{n}={lab[i]}" for n, lab, i in zip(names, labels, best, strict=True))
    keys = {k for v in points[best] for k in v}
    return DesignPoint(best, words, {k: mean(points[best], k) for k in keys}, len(points[best]))


def closest_words(folder: Path) -> list[str]:
    p = closest_to_c1(folder)
    if p is None:
        return []

    def m(key: str, fmt: str) -> str:
        v = p.means.get(key, math.nan)
        return format(v, fmt) if math.isfinite(v) else "–"

    return [
        f"The design point closest to C1 (best λ nearest 1, mean of {p.n_seeds} seeds): "
        f"{p.words}. There the best λ is 10^{m('log10_best_lambda', '+.2f')} and λ = 1 ends "
        f"{m('loss_gap_at_one', '.3f')} nats above it; its smallest λ's trials diverge in "
        f"{m('smallest_lambda_divergence', '.0%')} and its crossing statistic is "
        f"{m('crossing', '+.3f')} (the paper's C2 needs a high share, C4/C5 a value > 0). "
        "`paper-closest` (and its replication `paper-closest-seed1`) runs this point at full "
        "scale.",
        "",
    ]


def design_folders(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.glob("*/effects.json"))


def by_claim(design: DesignFinding) -> Mapping[str, list[ResponseFinding]]:
    out: dict[str, list[ResponseFinding]] = {}
    for r in design.responses:
        out.setdefault(r.claim, []).append(r)
    return out


NAMED = 3  # deciding effects named per response (largest first); effects.md has every one


def deciding_words(r: ResponseFinding) -> str:
    """The largest ``NAMED`` deciding effects, and how many more there are."""
    named = "; ".join(e.words() for e in r.deciding[:NAMED])
    more = len(r.deciding) - NAMED
    return named + (f" (and {more} more, in effects.md)" if more > 0 else "")


def claim_sentence(claim: str, responses: Sequence[ResponseFinding]) -> str:
    """One line per claim: the factors that decide its responses, or that none does."""
    parts = []
    for r in responses:
        if r.deciding:
            parts.append(f"{r.meaning} ({r.unit}) moves most with {deciding_words(r)}")
        else:
            top = r.effects[0]
            parts.append(f"{r.meaning}: no factor is clear of 0 (largest {top.words()}, {r.unit})")
    return f"- **{claim}**: " + "; ".join(parts) + "."


def design_section(results: Path) -> list[str]:
    """The section's lines for every design kept under ``results`` (none: no section)."""
    out: list[str] = []
    for folder in design_folders(results):
        d = read_design(folder)
        kinds = sorted({r.interval for r in d.responses})
        out += [
            f"From [{d.folder}]({d.folder}/README.md): {d.describe}, {d.scale_words()} in every "
            f"run. {d.runs_done} of {d.runs_total} runs finished "
            f"(seeds {', '.join(map(str, d.seeds_done)) or 'none'}); "
            + "; ".join(INTERVAL_WORDS[k] for k in kinds)
            + ". An effect is the mean response at a factor's second level minus at its first; "
            "two-factor interactions are estimable only as alias chains. A screen says which "
            "choice to test at full scale, not a verdict.",
            "",
        ]
        out += [claim_sentence(c, rs) for c, rs in by_claim(d).items()]
        n_tests = sum(len(r.effects) for r in d.responses)
        n_clear = sum(len(r.deciding) for r in d.responses)
        out += [
            "",
            f"{n_clear} of {n_tests} intervals exclude 0; with no real effect at all about "
            f"{0.05 * n_tests:.1f} would by chance (95% intervals, not adjusted for their number): "
            "read one that is alone in its response as a lead to rerun, not a finding.",
        ]
        out += [
            "",
            "| claim | response | decided by (95% interval excludes 0) | largest effect |",
            "| --- | --- | --- | --- |",
        ]
        for r in d.responses:
            deciding = deciding_words(r) if r.deciding else "none"
            out.append(
                f"| {r.claim} | {r.meaning} ({r.unit}) | {deciding} | {r.effects[0].words()} |"
            )
        out += ["", *closest_words(folder)]
        out += [f"Every run and effect: [{d.folder}/effects.md]({d.folder}/effects.md).", ""]
    return out
