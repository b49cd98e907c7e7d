"""The pieces of FINDINGS.md that are computed from claims.json: a claim's table cell (its verdict
and the numbers that decide it, with their 95% intervals), the claims × runs tables, the plain-words
verdict per claim, the comparison of two readings that differ in one open choice, and a run's
stored protocol (read back from the fenced TOML of its report.md).

Cells read each claim's ``evidence`` (kfaclab.analysis.claims.paper and .gradient_order); a
claim whose evidence lacks a key (a run read back from an old report) shows its finding sentence
instead."""

from __future__ import annotations

import math
import re
import statistics
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from kfaclab.analysis.claims.paper import ClaimSet
from kfaclab.analysis.claims.types import BINDS, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Claim
from kfaclab.analysis.findings.side_by_side import table_row
from kfaclab.analysis.report.numbers import num, percent

SYMBOL = {REPRODUCED: "✓", NOT_REPRODUCED: "✗", INCONCLUSIVE: "?"}

# Inconclusive reasons, shortened for a table cell; the run's section below gives them in full.
SHORT_REASON = {
    BINDS: "range binds",
    "most layers' intervals are too wide to order the two λ": "intervals too wide",
    "the per-trial histograms of this run were not kept": "no per-trial histograms",
    "no reruns over new seeds to confirm the top-k comparison": "no reruns",
    "its loss is high but its interval overlaps the best's": "intervals overlap",
}

_COUNT_WORDS = {2: "both", 3: "all three", 4: "all four", 5: "all five", 6: "all six"}


def _f(x: Any) -> float:
    """A number of claims.json's evidence: non-finite ones are stored as "nan"/"inf"/"-inf"."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def short_label(label: str) -> str:
    """ "λ=1e+00 (B²-scaled)" → "1e+00": a column's header says which reading (and convention)."""
    return label.removeprefix("λ=").split(" (")[0]


def ci(mean: Any, lo: Any, hi: Any) -> str:
    m, a, b = _f(mean), _f(lo), _f(hi)
    return f"{num(m)} [{num(a)}, {num(b)}]" if math.isfinite(a) else f"{num(m)} (no interval)"


def tag(c: Claim) -> str:
    """Why an inconclusive verdict is one, in a few words ("" for decided verdicts)."""
    if c.verdict != INCONCLUSIVE or not c.reason:
        return ""
    # a rerun disagreement reads "on 3 new seeds … : the reruns cannot separate them"
    return SHORT_REASON.get(c.reason, c.reason.rsplit(": ", 1)[-1])


def _gradient_numbers(e: Mapping[str, Any]) -> str | None:
    layers = e["layers"]
    if not layers:
        return None
    verdicts = [v["verdict"] for v in layers.values()]
    # the same statistic as the finding's "median shift" (claims_grad: np.median over layers)
    shift = statistics.median(_f(v["diff_decades"]) for v in layers.values())
    n = len(layers)
    return (
        f"iteration {e['step']}: {verdicts.count('supports')}/{n} layers as claimed, "
        f"{verdicts.count('reverses')}/{n} reversed; median shift {num(shift)} decades"
    )


def numbers(c: Claim) -> str | None:
    """The numbers that decide claim ``c``, from its evidence; None if a key is missing."""
    e = c.evidence
    try:
        if c.key == "C1":
            tied = ", ".join(short_label(t) for t in e["tied"]) or "none"
            return f"best {short_label(e['best'])}: {ci(e['mean'], e['lo'], e['hi'])}; tied: {tied}"
        if c.key == "C2":
            return (
                f"{short_label(e['smallest'])}: {percent(_f(e['divergence']))} diverged "
                f"(best: {percent(_f(e['best_divergence']))}); "
                f"top-k loss {num(_f(e['loss_ratio']))}× the best's"
            )
        if c.key == "C3":
            d = e["largest_minus_best"]
            binds = "; its lr binds" if e.get("lr_binds") else ""
            return f"{short_label(e['largest'])} − best: {ci(d['diff'], d['lo'], d['hi'])}{binds}"
        if c.key in ("C4", "C5"):
            return _gradient_numbers(e)
    except (KeyError, TypeError, AttributeError):
        return None
    return None


def claim_cell(c: Claim | None) -> str:
    """Verdict symbol, short reason if inconclusive, and the deciding numbers."""
    if c is None:
        return "–"
    why = tag(c)
    head = SYMBOL.get(c.verdict, c.verdict) + (f" ({why})" if why else "")
    return f"{head} {numbers(c) or c.finding}"


def by_key(cs: ClaimSet, key: str) -> Claim | None:
    return next((c for c in cs.claims if c.key == key), None)


def claims_table(runs: Mapping[str, ClaimSet]) -> list[str]:
    """Claims × runs (columns named by the keys of ``runs``), one cell per claim and run."""
    first = next(iter(runs.values()))
    out = [table_row(["the paper says", *runs]), "|" + " --- |" * (len(runs) + 1)]
    for c in first.claims:
        cells = [claim_cell(by_key(r, c.key)) for r in runs.values()]
        out.append(table_row([f"{c.key}: {c.paper}", *cells]))
    return out


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def verdict_words(runs: Mapping[str, ClaimSet], key: str) -> str:
    """Which runs reproduce claim ``key``, which do not, which cannot tell (and why)."""
    got = {n: c for n, cs in runs.items() if (c := by_key(cs, key)) is not None}
    if not got:
        return "no run"
    parts = []
    for verdict, word in ((REPRODUCED, "reproduced"), (NOT_REPRODUCED, "not reproduced")):
        names = [n for n, c in got.items() if c.verdict == verdict]
        if names:
            everyone = _COUNT_WORDS.get(len(names)) if len(names) == len(got) else None
            parts.append(f"{word} under {everyone or _names(names)}")
    unsure: dict[str, list[str]] = {}
    for n, c in got.items():
        if c.verdict == INCONCLUSIVE:
            unsure.setdefault(tag(c), []).append(n)
    if unsure:
        total = sum(map(len, unsure.values()))
        everyone = _COUNT_WORDS.get(total) if total == len(got) and len(unsure) == 1 else None
        groups = [
            f"{everyone or _names(ns)}" + (f" ({why})" if why else "") for why, ns in unsure.items()
        ]
        parts.append("cannot tell under " + "; ".join(groups))
    return "; ".join(parts)


def best_words(runs: Mapping[str, ClaimSet]) -> str:
    """The best λ of each run, runs with the same best λ together: "1e-03 (paper-first-run)"."""
    best: dict[str, list[str]] = {}
    for n, cs in runs.items():
        best.setdefault(short_label(cs.headline.best or "none"), []).append(n)
    return ", ".join(f"{lam} ({_names(ns)})" for lam, ns in best.items())


def best_ci(cs: ClaimSet) -> str:
    h = cs.headline
    if h.best is None:
        return "no surviving trial"
    return f"{short_label(h.best)}: {ci(h.best_mean, h.best_lo, h.best_hi)}"


def loss_order(a: str, ca: ClaimSet, b: str, cb: ClaimSet) -> str:
    """Whether the two best top-k means' 95% intervals separate, and which side is lower."""
    ha, hb = ca.headline, cb.headline
    if not all(map(math.isfinite, (ha.best_lo, ha.best_hi, hb.best_lo, hb.best_hi))):
        return "no intervals to compare"
    if ha.best_hi < hb.best_lo:
        return f"{a} lower (intervals separate)"
    if hb.best_hi < ha.best_lo:
        return f"{b} lower (intervals separate)"
    return "intervals overlap"


def verdict_changes(ca: ClaimSet, cb: ClaimSet) -> str:
    changed = [
        f"{x.key} {SYMBOL.get(x.verdict, '?')}→{SYMBOL.get(y.verdict, '?')}"
        for x in ca.claims
        if (y := by_key(cb, x.key)) is not None and y.verdict != x.verdict
    ]
    return ", ".join(changed) or "none"


def comparison_table_row(what: str, scale: str, a: str, ca: ClaimSet, b: str, cb: ClaimSet) -> str:
    """One open choice at one scale: best λ and loss of each side, and the verdicts that differ."""
    return table_row(
        [
            f"{what}: {a} → {b}",
            scale,
            best_ci(ca),
            best_ci(cb),
            loss_order(a, ca, b, cb),
            verdict_changes(ca, cb),
        ]
    )


def stored_protocol(folder: Path) -> dict[str, Any] | None:
    """The protocol a run's report.md prints under "## Protocol" (a fenced TOML block), or None."""
    report = folder / "report.md"
    if not report.is_file():
        return None
    m = re.search(r"^## Protocol$.*?^```toml\n(.*?)^```", report.read_text("utf-8"), re.S | re.M)
    if m is None:
        return None
    try:
        return tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError:
        return None


def _decade(x: float) -> str:
    """1e-06 → "1e-6", 1000.0 → "1e3", 1.0 → "1"; other values three digits."""
    if x > 0 and (e := math.log10(x)) == round(e):
        return "1" if e == 0 else f"1e{int(e)}"
    return num(x)


def lr_range(protocol: Mapping[str, Any]) -> str | None:
    """ "lr ∈ [1e-6, 1e3]" (absolute) or "lr/λ ∈ [1e-4, 1e3]" (search.lr_scale = "lambda")."""
    search = protocol.get("search")
    lr = search.get("lr") if isinstance(search, Mapping) else None
    if not isinstance(lr, Mapping) or "low" not in lr or "high" not in lr:
        return None
    scaled = search.get("lr_scale", "none") == "lambda" if isinstance(search, Mapping) else False
    return f"{'lr/λ' if scaled else 'lr'} ∈ [{_decade(lr['low'])}, {_decade(lr['high'])}]"


def scale_words(protocol: Mapping[str, Any]) -> str | None:
    """ "300 trials a cell, top 100, 1 epoch at batch 128" from a stored protocol."""
    search, training = protocol.get("search"), protocol.get("training")
    if not isinstance(search, Mapping) or not isinstance(training, Mapping):
        return None
    if "n_trials" not in search or "batch_size" not in training:
        return None
    steps = training.get("steps")
    epochs = training.get("epochs", 1)
    length = f"{steps} steps" if steps else f"{epochs} epoch{'s' if epochs != 1 else ''}"
    top = f", top {search['top_k']}" if "top_k" in search else ""
    return f"{search['n_trials']} trials a cell{top}, {length} at batch {training['batch_size']}"


def grouped(values: Mapping[str, str | None], *, name_one: bool = True) -> str:
    """{"a": "x", "b": "x", "c": "y"} → "x (a, b); y (c)"; runs without a value are left out.
    With ``name_one=False`` a value shared by every run is given without the names."""
    groups: dict[str, list[str]] = {}
    for name, v in values.items():
        if v is not None:
            groups.setdefault(v, []).append(name)
    if not name_one and len(groups) == 1 and len(next(iter(groups.values()))) == len(values):
        return next(iter(groups))
    return "; ".join(f"{v} ({_names(ns)})" for v, ns in groups.items())


def choices_table(
    choices: Sequence[tuple[str, str, str]],
    full: Mapping[str, ClaimSet],
    screen: Mapping[str, ClaimSet],
    not_planned: Collection[str] = (),
) -> list[str]:
    """One row per open choice (what, run a, run b) and scale where both runs exist; the choices
    still missing a full-scale run are listed under the table, apart from those whose missing run
    is ``not_planned`` at full scale (listed as compared at screening scale only)."""
    head = ["open choice: a → b", "scale", "a: best λ, top-k mean [95% CI]", "b: the same"]
    out = [table_row([*head, "best losses", "verdicts that differ"]), "|" + " --- |" * 6]
    awaited, screening_only = [], []
    for what, a, b in choices:
        for scale, runs in (("screening", screen), ("full", full)):
            if a in runs and b in runs:
                out.append(comparison_table_row(what, scale, a, runs[a], b, runs[b]))
        missing = [x for x in (a, b) if x not in full]
        if any(x in not_planned for x in missing):
            screening_only.append(what)
        elif missing:
            awaited.append(f"{what} ({_names(missing)})")
    if len(out) == 2:
        out = ["No open choice has both of its runs yet."]
    if awaited:
        out += ["", "At full scale, awaiting their runs: " + "; ".join(awaited) + "."]
    if screening_only:
        out += ["", "Compared at screening scale only: " + "; ".join(screening_only) + "."]
    return out


def figure_table(results: Path, folders: Mapping[str, str]) -> list[str]:
    """The learning curves and gradient histograms of each run (folders relative to
    ``results``, which is where FINDINGS.md lies), side by side."""
    shown = [n for n, f in folders.items() if (results / f / "figures").is_dir()]
    if not shown:
        return ["No run here has figures yet."]
    out = [table_row(["figure", *shown]), "|" + " --- |" * (len(shown) + 1)]
    for key, what in (("learning_curves", "(a) loss"), ("gradient_histograms", "(b) (∂L/∂θ)²")):
        cells = [
            f"![{n} {key}]({folders[n]}/figures/{key}.png)"
            if (results / folders[n] / "figures" / f"{key}.png").is_file()
            else "–"
            for n in shown
        ]
        out.append(f"| {what} | " + " | ".join(cells) + " |")
    return out
