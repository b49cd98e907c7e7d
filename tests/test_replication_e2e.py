"""Paired reruns end to end on a real (tiny) sweep: workers change nothing but the wall time.

A 20-step smoke sweep is stored, then rerun on new seeds through the command line with one and
with two worker processes into separate folders: the stored outcomes must be bitwise equal (each
rerun is a whole training with its own seed; the thread count is pinned to one in every worker).
The same for the report's reruns, and `kfaclab verdicts` must turn them into a page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfaclab.cli.main import main

SMOKE = """
[protocol]
name = "tiny"
description = "two λ and SGD, 2 trials each, 20 steps"
[data]
dataset = "mnist"
data_dir = "{data}"
[model]
depth = 3
width = 16
activation = "relu"
[training]
batch_size = 64
steps = 20
eval_steps = [20]
histogram_steps = [5, 15]
[cells]
sgd = true
lambdas = [1e-2, 1.0]
[search]
n_trials = 2
top_k = 2
seed = 3
lr = {{ low = 1e-3, high = 0.1, log = true }}
lr_decay = {{ low = 0.0, high = 1.0 }}
momentum = {{ low = 0.0, high = 0.9 }}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("rep")
    (root / "tiny.toml").write_text(SMOKE.format(data=mnist_dir))
    assert main(["sweep", str(root / "tiny.toml"), "--out", str(root / "run")]) == 0
    return root / "run"


def _lines(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return sorted(rows, key=lambda r: (r["cell"], r["rank"], r["seed"]))


def test_replicate_with_two_workers_equals_one_worker_bitwise(sweep: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["replicate", str(sweep), "--top", "2", "--seeds", "2"]
    assert main([*args, "--out", str(one), "--workers", "1"]) == 0
    assert main([*args, "--out", str(two), "--workers", "2"]) == 0
    a, b = _lines(one / "paired-reruns.jsonl"), _lines(two / "paired-reruns.jsonl")
    assert len(a) == 3 * 2 * 2 and a == b
    # seeds derive from search.seed = 3 and are shared by every cell (pairing)
    assert {r["seed"] for r in a} == {20_301, 20_302}
    # resumable: a second call runs nothing and appends nothing
    assert main([*args, "--out", str(one), "--workers", "1"]) == 0
    assert len((one / "paired-reruns.jsonl").read_text().splitlines()) == 12


def test_damaged_cache_line_is_skipped_and_rerun(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    args = ["replicate", str(sweep), "--top", "1", "--seeds", "1", "--out", str(out)]
    assert main(args) == 0
    cache = out / "paired-reruns.jsonl"
    good = cache.read_text().splitlines()
    cache.write_text("\n".join([good[0][:40], *good[1:]]) + "\n")  # a torn first line
    assert main(args) == 0
    assert len(_lines_ok(cache)) == len(good)


def _lines_ok(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_verdicts_page_from_reruns(sweep: Path, tmp_path: Path) -> None:
    assert main(["replicate", str(sweep), "--top", "2", "--seeds", "2", "--workers", "2"]) == 0
    out = tmp_path / "v"
    assert main(["verdicts", str(sweep), "--out", str(out)]) == 0
    page = (out / "verdicts.md").read_text()
    assert "| C1 |" in page and "C4∧C5" in page
    assert (out / "figures" / "replication-curves.png").stat().st_size > 10_000
    data = json.loads((out / "verdicts.json").read_text())
    assert data["n_units"] == 2
    # two seeds cannot establish anything: no claim may be decided as reproduced by default
    assert all(c["verdict"] != "reproduced" for c in data["claims"][:3])


@pytest.mark.slow  # two whole reports with figures: ~1 min on an idle 2-core machine
def test_report_reruns_in_two_workers_equal_one(sweep: Path, tmp_path: Path) -> None:
    # paired reruns stored in the sweep's folder appear in its report, first
    assert main(["replicate", str(sweep), "--top", "2", "--seeds", "2", "--workers", "2"]) == 0
    one, two = tmp_path / "r1", tmp_path / "r2"
    assert main(["report", str(sweep), "--out", str(one), "--workers", "1"]) == 0
    assert main(["report", str(sweep), "--out", str(two), "--workers", "2"]) == 0
    a = json.loads((one / "reruns.json").read_text())
    b = json.loads((two / "reruns.json").read_text())
    for rec in (*a.values(), *b.values()):
        rec.pop("seconds")
    assert a == b and len(a) == 3
    page = (one / "report.md").read_text()
    assert page.index("Verdicts on new seeds") < page.index("## Results")


def test_a_protocol_of_ones_own_gets_no_paper_claims(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SMOKE.format(data=mnist_dir).replace('name = "tiny"', 'name = "mine"')
    text = text.replace("n_trials = 2", "n_trials = 1").replace("top_k = 2", "top_k = 1")
    text += "[claims]\npaper = false\n"
    (tmp_path / "mine.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "mine.toml"), "--out", str(tmp_path / "run")]) == 0
    assert main(["report", str(tmp_path / "run"), "--no-reruns"]) == 0
    page = (tmp_path / "run" / "report.md").read_text()
    assert "tests no claims of the paper" in page
    assert "C1" not in page and "λ = 1 gives the lowest" not in page


def test_bad_arguments_are_one_line(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replicate", str(sweep), "--workers", "0"]) == 2
    assert main(["replicate", str(sweep), "--cells", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kfaclab: error: --cells: unknown cell 'nope'")


def test_adaptive_rules_against_the_best_fixed_lambda_without_paper_claims(
    tmp_path: Path, mnist_dir: Path
) -> None:
    text = SMOKE.format(data=mnist_dir).replace('name = "tiny"', 'name = "rules"')
    text = text.replace(
        "lambdas = [1e-2, 1.0]\n",
        'lambdas = [1e-2, 1.0]\n[[cells.strategies]]\nname = "lm"\n'
        'kind = "levenberg_marquardt"\nsource = "same_batch"\ninitial = 1e-2\n',
    )
    text += "[claims]\npaper = false\n"
    (tmp_path / "rules.toml").write_text(text)
    run = tmp_path / "run"
    assert main(["sweep", str(tmp_path / "rules.toml"), "--out", str(run)]) == 0
    assert main(["replicate", str(run), "--top", "1", "--seeds", "3"]) == 0
    out = tmp_path / "v"
    assert main(["verdicts", str(run), "--out", str(out)]) == 0
    page = (out / "verdicts.md").read_text()
    assert "## Adaptive rules against the best fixed λ" in page
    assert "| C1 |" not in page and "Sensitivity" not in page
    data = json.loads((out / "verdicts.json").read_text())
    assert data["paper_claims"] is False
    assert data["claims"] == [] and data["crossing"] == "not tested"  # not stored as answers
    rows = {r["label"]: r for r in data["rules"]["rows"]}
    assert rows["lm"]["kind"] == "rule" and rows["SGD"]["kind"] == "sgd"
    assert data["rules"]["reference"] in ("λ=1e-02", "λ=1e+00")
    assert rows[data["rules"]["reference"]]["verdict"] == "reference"
    assert sum(rows["lm"]["diverged"][1:2]) == 3  # one configuration × three seeds
    # the run's own report answers the same question from the same reruns
    assert main(["report", str(run), "--no-reruns"]) == 0
    report = (run / "report.md").read_text()
    assert "Adaptive rules against the best fixed λ (new seeds)" in report
    assert "| C1 |" not in report
