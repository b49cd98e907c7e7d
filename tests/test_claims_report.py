"""The report answers first, in one number format; claims.json round-trips; `kfaclab claims`
and FINDINGS.md tabulate runs; the old full run's report is read back to its claims."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from kfaclab.analysis import summarize
from kfaclab.analysis.claims.legacy import claims_from_report
from kfaclab.analysis.claims.paper import ClaimSet, evaluate
from kfaclab.analysis.claims.store import load_claims, save_claims
from kfaclab.analysis.claims.types import INCONCLUSIVE, REPRODUCED
from kfaclab.analysis.findings.document import PRESET_LR, findings_markdown
from kfaclab.analysis.findings.tables import lr_range
from kfaclab.analysis.report import narrative
from kfaclab.analysis.report.build import build_report
from kfaclab.analysis.report.headline import headline_text
from kfaclab.analysis.report.numbers import column, num
from kfaclab.cli.main import main
from report_fakes import CellSpec, build_study, smoke_dir
from test_claims import grid, hist, vals

REPO = Path(__file__).resolve().parents[1]


def test_numbers_have_three_digits_and_one_notation_per_column() -> None:
    assert [num(x) for x in (0.0641, 96.87, 0.1, 100.0, 12345.0)] == [
        "0.0641",
        "96.9",
        "0.100",
        "100",
        "1.23e+04",
    ]
    assert num(math.nan) == "–" and num(math.inf) == "∞"
    # the old report's lr column: 3.11e-05 above 0.000276 above 0.998
    assert column([3.11e-5, 2.76e-4, 0.998]) == ["3.11e-05", "2.76e-04", "9.98e-01"]
    assert column([0.0641, 0.904, math.nan]) == ["0.0641", "0.904", "–"]


def test_constructed_report_answers_first(tmp_path: Path) -> None:
    study, _ = build_study(grid())
    study.protocol["protocol"]["name"] = "x<script>alert(1)</script>"
    rep = build_report(study, tmp_path, storage="file", reruns=False)
    md, page = rep.markdown.read_text(), rep.html.read_text()
    prose = re.sub(r"```.*?```", "", md, flags=re.S)  # a fenced block shows its text literally
    assert "<script>" not in prose and "&lt;script>" in md.splitlines()[0]
    assert "<script>" not in page
    assert md.index("## Answer") < md.index("## Results") < md.index("## Figures")
    answer = md[md.index("## Answer") : md.index("## Results")]
    assert "Best fixed λ: λ=1e+00" in answer and "SGD: 0.250" in answer
    assert answer.count("| C") == 5
    # without reruns C1 cannot be confirmed; the others stand
    verdicts = {c.key: c.verdict for c in rep.claims.claims}
    assert verdicts["C1"] == INCONCLUSIVE and verdicts["C2"] == REPRODUCED
    # HTML: a contents list whose links reach the headings, the best row, scrolling tables
    ids = set(re.findall(r'<h2 id="([^"]+)"', page))
    links = re.findall(r'<nav class="toc">.*?</nav>', page, re.S)[0]
    assert set(re.findall(r'href="#([^"]+)"', links)) == ids and "answer" in ids
    assert page.count('<tr class="best"><td class="text">λ=1e+00</td>') == 1
    assert page.count("<table>") == page.count('<div class="scroll"><table>')
    assert "overflow-x:auto" in page
    # claims.json round-trips to what the report computed
    assert load_claims(tmp_path / "claims.json") == rep.claims


def test_claims_json_is_strict_and_keeps_non_finite_numbers(tmp_path: Path) -> None:
    study, reruns = build_study(grid(l4=CellSpec(1e-4, [], n_diverged=5)))
    cs = evaluate(summarize(study, reruns))
    save_claims(cs, tmp_path / "c.json")
    json.loads((tmp_path / "c.json").read_text(), parse_constant=pytest.fail)  # no NaN literal
    back = load_claims(tmp_path / "c.json")
    assert back.claims[1].evidence["loss_ratio"] == "inf"  # evidence keeps the strict string
    assert math.isnan(back.headline.best_lo) is math.isnan(cs.headline.best_lo)


def test_headline_text_for_the_terminal() -> None:
    study, reruns = build_study(grid())
    text = headline_text(evaluate(summarize(study, reruns)))
    lines = text.splitlines()
    assert lines[0] == "== constructed: the answer =="
    assert lines[1].startswith("Best fixed λ: λ=1e+00")
    assert [ln.split()[0] for ln in lines[2::2]] == ["C1", "C2", "C3", "C4", "C5"]
    assert "reproduced" in lines[2]


def test_budget_caption_when_random_halves_hold_only_diverged_trials() -> None:
    # 6 of 8 trials diverged: a random 4 can be all diverged, so their mean best is infinite
    study, _ = build_study([CellSpec(1.0, [0.1, 0.2], n_diverged=6)])
    study.trials.sort(key=lambda t: -t.number)  # order does not matter to the caption
    text = narrative.budget(summarize(study))
    assert "infinitely" not in text and "undefined" in text
    sentences = re.split(r"(?<=[.?]) ", text)
    assert not [s for s in sentences if s and "a" <= s[0] <= "z"], sentences  # λ=… may lead


def test_curvature_reading_sentences_start_with_a_capital() -> None:
    from report_fakes import make_study

    text = narrative.curvature(summarize(make_study()))
    assert not [s for s in re.split(r"(?<=\.) ", text) if s and "a" <= s[0] <= "z"], text


def test_claims_cli_on_a_real_sweep(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = smoke_dir(tmp_path_factory.getbasetemp())
    # from storage (no claims.json in the sweep folder) and from a report's claims.json
    assert main(["report", str(run), "--out", str(tmp_path), "--no-reruns"]) == 0
    capsys.readouterr()
    assert main(["claims", str(run), str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| claim | paper says | smoke | smoke |"
    assert [ln.split(" | ")[0] for ln in out[2:]] == [
        "| C1 best λ",
        "| C2 smallest λ unstable",
        "| C3 largest λ slower",
        "| C4 (∂L/∂θ)² ordering at the earliest histogram",
        "| C5 (∂L/∂θ)² ordering at the latest histogram",
    ]
    for row in out[2:]:  # storage and claims.json agree
        cells = [x.strip(" |") for x in row.split(" | ")]
        assert cells[2] == cells[3], row
    assert main(["claims", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RUN must be an existing run folder" in err


def test_old_full_run_is_read_back_from_its_report() -> None:
    folder = REPO / "docs" / "results" / "paper-first-run"
    cs = claims_from_report(folder)
    assert cs.protocol == "paper" and cs.headline.best == "λ=1e-03"
    assert cs.headline.best_lo == pytest.approx(0.0764) and cs.headline.tied == []
    c = {x.key: x for x in cs.claims}
    assert c["C1"].reason == "the search range binds"  # λ = 10 and 100 press on lr ≤ 1
    assert set(c["C1"].evidence["binding"][0].split(":")[0:1]) <= {"λ=1e+01", "λ=1e+02"}
    assert c["C2"].verdict == REPRODUCED and c["C2"].evidence["loss_ratio"] > 10
    # the reruns were matched to their cells: λ = 1's three seeds against λ = 1e-3's
    raw = json.loads((folder / "reruns.json").read_text())
    paper = np.mean(raw["kfac-lam=1e+00"]["values"])
    assert f"λ=1e+00 has {num(float(paper))}" in c["C1"].finding
    assert "1e-6.6" in c["C4"].finding and c["C4"].verdict == INCONCLUSIVE
    # the committed claims.json is this computation's
    assert load_claims(folder / "claims.json") == cs


def _save_run(folder: Path, specs: list[CellSpec], name: str) -> ClaimSet:
    """A run folder holding claims.json computed from a constructed study (with its reruns)."""
    study, reruns = build_study(specs)
    study.protocol["protocol"]["name"] = name
    folder.mkdir(parents=True, exist_ok=True)
    cs = evaluate(summarize(study, reruns))
    save_claims(cs, folder / "claims.json")
    return cs


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _row(section: str, prefix: str) -> list[str]:
    line = next(ln for ln in section.splitlines() if ln.startswith(prefix))
    return [x.strip() for x in line.strip("|").split(" | ")]


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    """The 95% t-interval of a mean, by scipy (the oracle for the cells' C1 numbers)."""
    v = np.asarray(values)
    lo, hi = sps.t.interval(0.95, v.size - 1, loc=v.mean(), scale=sps.sem(v))
    return float(v.mean()), float(lo), float(hi)


def _welch_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) − mean(b) with Welch's 95% interval, degrees of freedom floored (the study's
    documented conservative choice), by scipy."""
    x, y = np.asarray(a), np.asarray(b)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = sps.t.ppf(0.975, math.floor(df)) * math.sqrt(va + vb)
    d = float(x.mean() - y.mean())
    return d, d - half, d + half


def _ci(mean: float, lo: float, hi: float) -> str:
    return f"{num(mean)} [{num(lo)}, {num(hi)}]"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """docs/results as it would be with two full runs and three screening runs: paper
    (every claim but the gradient ones holds), paper-b2 (λ = 1e-2 wins: C1 fails), screening
    paper (gradients ordered as claimed), paper-linear (λ = 100 tied with the best: C3 fails),
    paper-popular (λ = 100's lr presses on the range's low end: C3 cannot tell)."""
    wide = CellSpec(100.0, vals(0.30, 0.02), reruns=[0.31, 0.30, 0.32])
    _save_run(tmp_path / "paper", grid(p2=wide), "paper")
    better = CellSpec(1e-2, vals(0.05, 0.01), reruns=[0.05, 0.051, 0.05])
    _save_run(tmp_path / "paper-b2", grid(l2=better), "paper-b2")
    screening = tmp_path / "screening"
    _save_run(screening / "readings-quick-paper", grid(**hist(+1, -1)), "readings-quick-paper")
    tied = CellSpec(100.0, vals(0.101, 0.01))
    _save_run(screening / "readings-quick-paper-linear", grid(p2=tied), "readings-quick-linear")
    bound = CellSpec(100.0, vals(0.3, 0.01), lr=[1e-6] + [1.0] * 19)
    _save_run(screening / "readings-quick-paper-popular", grid(p2=bound), "readings-quick-pop")
    return tmp_path


def test_findings_tables_show_each_verdict_with_its_interval(results: Path) -> None:
    full = _section(findings_markdown(results), "## The claims at full scale")
    assert _row(full, "| the paper says")[1:] == ["paper", "paper-b2"]
    best = _t_interval(vals(0.10, 0.01))
    c1 = _row(full, "| C1:")
    assert c1[1] == f"✓ best 1e+00: {_ci(*best)}; tied: none"
    assert c1[2] == f"✗ best 1e-02: {_ci(*_t_interval(vals(0.05, 0.01)))}; tied: none"
    # C2: λ = 1e-4 diverged in 10 of 30 trials, the best λ = 1 in 1 of 21; 0.40 / 0.10 = 4×
    assert (
        _row(full, "| C2:")[1] == "✓ 1e-04: 33% diverged (best: 4.8%); top-k loss 4.00× the best's"
    )
    assert _row(full, "| C2:")[2] == "✓ 1e-04: 33% diverged (best: 0%); top-k loss 8.00× the best's"
    c3 = _welch_interval(vals(0.30, 0.02), vals(0.10, 0.01))
    assert _row(full, "| C3:")[1] == f"✓ 1e+02 − best: {_ci(*c3)}"
    # no gradient histograms were recorded: the cell says so with the finding's own words
    assert _row(full, "| C4:")[1].startswith("? (no data) fewer than two λ have recorded")


def test_gradient_cells_count_layers_and_give_the_median_shift(results: Path) -> None:
    screen = _section(findings_markdown(results), "## The claims at screening scale")
    # λ = 10's gradients lie a decade above λ = 1e-4's at iteration 60, a decade below at 360
    for key, step in (("C4", 60), ("C5", 360)):
        cell = _row(screen, f"| {key}:")[1]
        m = re.fullmatch(
            rf"✓ iteration {step}: 6/6 layers as claimed, 0/6 reversed; "
            r"median shift (\S+) decades",
            cell,
        )
        assert m is not None, cell
        assert float(m.group(1)) == pytest.approx(1.0, abs=0.2)


def test_screening_and_full_tables_are_apart_and_missing_runs_awaited(results: Path) -> None:
    text = findings_markdown(results)
    full = _section(text, "## The claims at full scale")
    screen = _section(text, "## The claims at screening scale")
    assert _row(screen, "| the paper says")[1:] == ["paper", "paper-linear", "paper-popular"]
    assert "paper-linear |" not in full and "paper-b2" not in _row(screen, "| the paper says")
    assert _row(screen, "| C3:")[2].startswith("✗ 1e+02 − best: ")
    assert _row(screen, "| C3:")[3].startswith("? (range binds) 1e+02 − best: ")
    assert (
        "**Awaiting their runs:** paper-linear, paper-seed1, paper-seed2, paper-first-run." in full
    )
    # readings not planned at full scale are said to be so, with why, not "awaited"
    intro = _section(text, "## In plain words")
    assert "Not run at full scale: paper-popular (screening best λ" in intro
    assert "Compared at screening scale only: factor initialisation and refresh; KL clip." in text
    assert "**Awaiting screening:** paper-b2, paper-popular-noclip." in screen
    plain = _section(text, "## In plain words")
    assert (
        "- **C1** — the paper: λ = 1 gives the lowest training loss. **Full scale:** reproduced "
        "under paper; not reproduced under paper-b2; best λ 1e+00 (paper), 1e-02 (paper-b2)."
    ) in plain
    assert (
        "- **C3** — the paper: the largest λ trains more slowly than the best λ. **Full scale:** "
        "reproduced under both. **Screening:** reproduced under paper; not reproduced under "
        "paper-linear; cannot tell under paper-popular (range binds)."
    ) in plain
    assert "undecided in every run: C4, C5." in plain


def test_each_choice_compares_best_losses_and_verdicts(results: Path) -> None:
    choices = _section(findings_markdown(results), "## How much each choice matters")
    best, better = _t_interval(vals(0.10, 0.01)), _t_interval(vals(0.05, 0.01))
    assert _row(choices, "| λ convention: paper → paper-b2 | full") == [
        "λ convention: paper → paper-b2",
        "full",
        f"1e+00: {_ci(*best)}",
        f"1e-02: {_ci(*better)}",
        "paper-b2 lower (intervals separate)",
        "C1 ✓→✗",
    ]
    row = _row(choices, "| activation: paper → paper-linear | screening")
    assert row[4] == "intervals overlap" and row[5] == "C3 ✓→✗, C4 ✓→?, C5 ✓→?"
    assert "| activation: paper → paper-linear | full" not in choices
    assert "awaiting their runs: activation (paper-linear);" in choices


def test_binding_ranges_listed_under_their_run(results: Path) -> None:
    cs = load_claims(results / "screening" / "readings-quick-paper-popular" / "claims.json")
    bound = cs.claims[2].evidence["binding"]
    text = findings_markdown(results)
    runs = _section(text, "## Each screening run")
    item = runs[runs.index("- **paper-popular** ") :]
    assert [f"  - {b}" for b in bound] == item.splitlines()[1 : 1 + len(bound)]
    assert (
        "- **paper-linear** ([report](screening/readings-quick-paper-linear/report.md)): "
        "no search range binds." in runs
    )


def test_search_ranges_and_figures_from_each_runs_report(results: Path) -> None:
    # a real report (its figures, its protocol block) for a full paper-linear run ...
    study, _ = build_study(grid(**hist(+1, -1)))
    build_report(study, results / "paper-linear", storage="file", reruns=False)
    # ... and a report.md holding only the protocol of a run that searched lr/λ
    proto = "[search]\nn_trials = 300\nlr = { low = 0.0001, high = 1000.0, log = true }\n"
    proto += 'lr_scale = "lambda"\n\n[training]\nbatch_size = 128\nepochs = 1\n'
    (results / "paper" / "report.md").write_text(f"# x\n\n## Protocol\n\n```toml\n{proto}```\n")
    text = findings_markdown(results)
    ranges = _row(_section(text, "## What the paper left unstated"), "| search ranges")[1]
    assert (
        "Full: lr/λ ∈ [1e-4, 1e3] (paper); lr ∈ [1e-6, 1e3] (paper-linear); range not stored "
        "(paper-b2)." in ranges
    )
    assert "Screening: range not stored (paper, paper-linear, paper-popular)." in ranges
    assert (
        "Full, awaiting (their presets): lr/λ ∈ [1e-4, 1e3] (paper-seed1, paper-seed2)." in ranges
    )
    assert (
        "**Full scale:** paper, paper-linear, paper-b2 (300 trials a cell, 1 epoch at batch "
        "128 (paper))." in text
    )
    figures = _section(text, "## The figures beside the paper's")
    assert _row(figures, "| figure")[1:] == ["paper-linear"]  # the only run with figures
    shown = re.findall(r"\]\(([^)]+\.png)\)", figures)
    assert shown == [
        "paper-linear/figures/learning_curves.png",
        "paper-linear/figures/gradient_histograms.png",
    ]
    assert all((results / p).is_file() for p in shown)


def test_preset_ranges_named_for_awaited_runs_are_the_configs() -> None:
    for name, said in PRESET_LR.items():
        path = REPO / "configs" / f"{name}.toml"
        if path.is_file():  # paper-seed1 is paper run with another seed
            assert lr_range(tomllib.loads(path.read_text())) == said, name
    assert PRESET_LR["paper-seed1"] == PRESET_LR["paper"]


def test_committed_findings_is_what_the_generator_writes() -> None:
    folder = REPO / "docs" / "results"
    assert (folder / "FINDINGS.md").read_text() == findings_markdown(folder)
    readme = (REPO / "README.md").read_text().splitlines()
    assert any("docs/results/FINDINGS.md" in ln for ln in readme[:25])


def test_zero_gradient_caption_names_dead_relus_only_where_there_is_a_relu() -> None:
    """A deep linear network has no dead units: its exact-zero gradients are the weights of
    always-blank input pixels, and the caption must not blame ReLUs it does not have."""
    import dataclasses

    s = summarize(build_study(grid())[0])
    for activation, relu in (("relu", True), ("identity", False), ("tanh", False)):
        model = {**s.protocol.get("model", {}), "activation": activation}
        text = narrative.zero_gradient_causes(
            dataclasses.replace(s, protocol={**s.protocol, "model": model})
        )
        assert "blank" in text and ("ReLU" in text) == relu, (activation, text)


def test_adaptive_caption_separates_better_from_tied() -> None:
    """The caption's "better" and "tied" are FINDINGS.md's (one test, ``compare_means``): a rule
    whose Welch interval of the difference lies below 0 is better, even where the two 95%
    intervals of the means overlap (lm's here); one whose interval contains 0 is tied; one above
    it is neither."""
    from types import SimpleNamespace

    from kfaclab.analysis.findings.adaptive import compare
    from kfaclab.analysis.statistics.intervals import MeanCI, t_quantile
    from kfaclab.analysis.summary.adaptive import AdaptiveSection, StrategyRow

    def ci(mean: float, sd: float, n: int = 100) -> MeanCI:
        half = t_quantile(0.975, n - 1) * sd / n**0.5
        return MeanCI(n, mean, sd, mean - half, mean + half)

    def row(label: str, kind: str, loss: MeanCI) -> StrategyRow:
        return StrategyRow(label, kind, loss, loss, 300, 60.0, 10)

    fixed = ci(0.105, 0.05)
    lm, decay, trend = ci(0.089, 0.05), ci(0.1, 0.05), ci(1.5, 0.2)
    assert lm.hi > fixed.lo  # the means' intervals overlap, yet the difference's excludes 0
    rows = [row("lm", "adaptive", lm), row("decay", "adaptive", decay),
            row("λ=1e-03", "fixed", fixed), row("trend", "adaptive", trend)]  # fmt: skip
    s = SimpleNamespace(adaptive=AdaptiveSection(rows, [], []))
    text = narrative.adaptive(s)  # type: ignore[arg-type]
    assert "difference below 0): lm." in text
    assert "Tied with it (the interval contains 0): decay." in text and "trend" not in text
    assert [compare(r, fixed)[0] for r in (lm, decay, trend)] == ["lower", "tied", "higher"]
