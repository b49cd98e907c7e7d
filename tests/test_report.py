"""The report: built from a real smoke study and from hand-made studies with a cell still
running and a cell whose every trial diverged; opened in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kfaclab.analysis.report.build import Report, build_report
from kfaclab.analysis.report.provenance import strip_password
from kfaclab.analysis.summary.adaptive_store import load_ranking
from kfaclab.cli.main import main
from kfaclab.trial_types import TrialConfig, TrialResult
from report_fakes import make_study, smoke_dir

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """A report with every section: fixed λ, SGD, an adaptive rule still running, a dead cell."""
    study = make_study()

    def runner(cfg: TrialConfig) -> TrialResult:  # stands in for training: instant
        base = next(t.record for t in study.trials if t.record and t.record.config.lr == cfg.lr)
        return dataclasses.replace(base, config=cfg, value=base.value * 1.1)

    out = tmp_path_factory.mktemp("fake-report")
    return build_report(study, out, storage="postgresql://ann:s3cret@db:5432/k", runner=runner)


def test_fake_report_says_what_is_missing(fake_report: Report) -> None:
    md = fake_report.markdown.read_text()
    html = fake_report.html.read_text()
    for text in (md, html):
        assert "still running" in text
        assert "every finished trial diverged" in text
        assert "s3cret" not in text and "ann@db:5432" in text
    assert "Adaptive damping against the best fixed λ" in md
    keys = {f.key for f in fake_report.figures}
    assert {
        "learning_curves",
        "gradient_histograms",
        "isolation",
        "curvature",
        "hyperparameters",
        "budget",
        "reruns",
        "adaptive_ranking",
        "damping_traces",
    } <= keys
    for f in fake_report.figures:
        assert f.png.stat().st_size > 0 and f.svg.read_text().lstrip().startswith("<?xml")
        assert f"figures/{f.key}.png" in md
    # self-contained: every figure is embedded, nothing is fetched
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(fake_report.figures)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'href="http' not in html and 'src="http' not in html


def test_the_report_writes_the_ranking_it_shows(fake_report: Report) -> None:
    _, cells = load_ranking(fake_report.markdown.parent / "adaptive.json")
    section = fake_report.summary.adaptive
    assert section is not None
    assert [c.label for c in cells] == [r.label for r in section.rows]
    for c, r in zip(cells, section.rows, strict=True):
        assert c.kind == r.kind and c.trials_total == r.trials_total
        assert c.top_k.n == r.final_loss.n
        assert c.top_k.mean == r.final_loss.mean or (
            math.isnan(c.top_k.mean) and math.isnan(r.final_loss.mean)
        )


def test_report_on_smoke_study_via_cli(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    study_dir = smoke_dir(tmp_path_factory.getbasetemp())
    assert main(["report", str(study_dir), "--out", str(tmp_path), "--no-reruns"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "kfaclab report: smoke" in md
    for label in ("SGD", "λ=1e-03", "λ=1e+00"):
        assert f"| {label} |" in md or f"| **{label}** |" in md  # bold: the best row
    assert "skipped (--no-reruns)" in md
    assert "[search] lr" in md and "git commit" in md
    assert not (tmp_path / "reruns.json").exists()


def test_report_refuses_dir_and_storage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "x", "--storage", "sqlite:///y.db"]) == 2
    assert "not both" in capsys.readouterr().err


def test_reproduce_rejects_an_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:  # --preset is an argparse choice: caught at once
        main(["reproduce", "--preset", "nope"])
    assert info.value.code == 2
    assert "argument --preset: invalid choice: 'nope'" in capsys.readouterr().err


def test_strip_password() -> None:
    assert strip_password("postgresql://u:p%40ss@h:5/db") == "postgresql://u@h:5/db"
    assert (
        strip_password("postgresql://h/db?password=x&a=1") == "postgresql://h/db?password=***&a=1"
    )
    assert strip_password("/runs/quick/studies.journal") == "/runs/quick/studies.journal"


# Written into a copy of the report: records each image's decoded width and any script error
# into the DOM, which --dump-dom then prints after the load event.
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const w = [...document.images].map(i => i.complete ? i.naturalWidth : -1);
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({widths: w, errors: window.__errors});
  document.body.appendChild(p);
});
</script>"""


@pytest.mark.browser
def test_report_in_headless_chromium(fake_report: Report, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (installed by .ci/run)")
        pytest.skip("chromium not installed")
    exe = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    flags = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    probe = tmp_path / "probe.html"
    probe.write_text(fake_report.html.read_text().replace("</head>", _PROBE + "</head>", 1))
    run = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"no probe output; stderr: {run.stderr[-2000:]}"
    import json

    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(result["widths"]) == len(fake_report.figures)
    assert all(w > 0 for w in result["widths"]), result
    assert result["errors"] == []
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln and "error" in ln.lower()]
    assert console == []
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report-top.png"
    subprocess.run(
        [
            *flags,
            f"--screenshot={shot}",
            "--window-size=1280,1400",
            "--hide-scrollbars",
            fake_report.html.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_tables_align_numbers_right_and_text_left() -> None:
    """Digits line up in numeric columns; a text column (the claims, verdicts) reads left to
    right and wraps instead of pushing the table wider than the page."""
    from kfaclab.analysis.report.blocks import Table, to_html

    table = Table(
        ["cell", "loss", "95% CI", "diverged", "verdict"],
        [
            ["λ=1e-03", "0.0797 ± 0.00952", "[0.0778, 0.0816]", "36%", "reproduced"],
            ["SGD", "0.172", "–", "7.3%", "not reproduced: the ordering is reversed"],
        ],
    )
    page = to_html([table], "t")
    heads = re.findall(r"<th( class=\"text\")?>([^<]*)</th>", page)
    assert [(h, bool(c)) for c, h in heads] == [
        ("cell", True), ("loss", False), ("95% CI", False), ("diverged", False), ("verdict", True)
    ]  # fmt: skip
    assert "<td>0.0797 ± 0.00952</td>" in page and "<td>[0.0778, 0.0816]</td>" in page
    assert '<td class="text verdict-reproduced">reproduced</td>' in page


def test_provenance_counts_only_the_package_as_local_changes(tmp_path: Path) -> None:
    """Rebuilding a committed report in place rewrites tracked files beside it; that must not
    mark the report as built from uncommitted code — a change to the package must."""
    from kfaclab.analysis.report.provenance import git_commit

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    package, results = tmp_path / "src" / "kfaclab", tmp_path / "docs"
    package.mkdir(parents=True)
    results.mkdir()
    (package / "mod.py").write_text("x = 1\n")
    (results / "report.md").write_text("old\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    head = git("rev-parse", "HEAD")
    (results / "report.md").write_text("rebuilt\n")
    assert git_commit(package) == head
    (package / "mod.py").write_text("x = 2\n")
    assert git_commit(package) == head + " + local changes"
