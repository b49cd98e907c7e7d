"""The report answers first, in one number format; claims.json round-trips; `kfaclab claims`
and FINDINGS.md tabulate runs; the old full run's report is read back to its claims."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kfaclab.analysis import narrative, summarize
from kfaclab.analysis.claims import evaluate
from kfaclab.analysis.claims_io import load_claims, save_claims
from kfaclab.analysis.claims_types import INCONCLUSIVE, REPRODUCED
from kfaclab.analysis.findings_doc import findings_markdown
from kfaclab.analysis.headline import headline_text
from kfaclab.analysis.legacy import claims_from_report
from kfaclab.analysis.numbers import column, num
from kfaclab.analysis.report import build_report
from kfaclab.cli.main import main
from report_fakes import CellSpec, build_study, smoke_dir
from test_claims import grid, vals

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
    assert page.count('<tr class="best"><td>λ=1e+00</td>') == 1
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


def test_findings_generated_from_the_runs_it_finds(tmp_path: Path) -> None:
    for name, specs in (
        ("paper", grid()),
        ("paper-b2", grid(l2=CellSpec(1e-2, vals(0.05, 0.01), reruns=[0.05, 0.051, 0.05]))),
    ):
        study, reruns = build_study(specs)
        study.protocol["protocol"]["name"] = name
        (tmp_path / name).mkdir()
        save_claims(evaluate(summarize(study, reruns)), tmp_path / name / "claims.json")
    text = findings_markdown(tmp_path)
    assert "| claim | paper says | paper | paper-b2 |" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| C1 best λ"))
    assert row.endswith("| ✓ reproduced | ✗ not reproduced |")
    assert "**Awaiting their runs:** paper-linear, paper-popular, paper-popular-noclip." in text
    assert "- **C1** (λ = 1 gives the lowest training loss): reproduced under paper; " in text
    assert "not reproduced under paper-b2." in text


def test_committed_findings_is_what_the_generator_writes() -> None:
    folder = REPO / "docs" / "results"
    assert (folder / "FINDINGS.md").read_text() == findings_markdown(folder)
    readme = (REPO / "README.md").read_text().splitlines()
    assert any("docs/results/FINDINGS.md" in ln for ln in readme[:25])
