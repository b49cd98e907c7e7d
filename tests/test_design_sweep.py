"""`kfaclab sweep DESIGN.toml` + `kfaclab effects DIR` end to end on a smoke-size 2^(3−1) design
(real trials on MNIST, a few steps each), resuming, refusing another design in the same folder;
and the searched KL clip reaching the trials."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cli_helpers import MNIST, one_line
from kfaclab.cli.main import main
from kfaclab.study.cells import build_cells, search_space
from kfaclab.study.protocol import load_protocol
from kfaclab.study.reader import load_study_set
from kfaclab.study.sweep import trial_config

DESIGN = f"""
[design]
kind = "fraction"
generators = ["fisher = activation*init"]
resolution = "III"
seeds = [0, 1]

[[design.factors]]
name = "activation"
levels = [{{ "model.activation" = "relu" }}, {{ "model.activation" = "tanh" }}]

[[design.factors]]
name = "init"
levels = [{{ model = {{ init = "torch" }} }}, {{ model = {{ init = "he" }} }}]

[[design.factors]]
name = "fisher"
levels = [{{ "training.fisher" = "empirical" }}, {{ "training.fisher" = "mc" }}]

[protocol]
name = "smoke-design"

[data]
dataset = "mnist"
data_dir = "{MNIST}"

[model]
depth = 2
width = 8

[training]
batch_size = 64
steps = 3
eval_steps = [3]

[cells]
lambdas = [1e-2, 1.0, 100.0]

[search]
n_trials = 2
top_k = 1
lr = {{ low = 0.01, high = 1.0, log = true }}
lr_scale = "lambda"
lr_decay = {{ low = 0.0, high = 1.0 }}
momentum = {{ low = 0.0, high = 0.5 }}
"""


def _cut_before_trial(journal: Path, which: str) -> None:
    """Cut an Optuna journal just before its first or last trial was created (op 4): the
    storage of a sweep not started, or stopped one trial short of its end."""
    lines = journal.read_text().splitlines(keepends=True)
    created = [i for i, line in enumerate(lines) if json.loads(line)["op_code"] == 4]
    journal.write_text("".join(lines[: created[0] if which == "first" else created[-1]]))


def test_design_sweep_and_effects_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "design.toml"
    path.write_text(DESIGN)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "design smoke-design: 2^(3-1) with C = AB, resolution III, 8 runs" in err
    assert "next: kfaclab effects" in err
    manifest = json.loads((out / "design.json").read_text())
    runs = [r["name"] for r in manifest["runs"]]
    assert runs[0] == "run01-seed0" and len(runs) == 8
    for run in manifest["runs"]:  # each run: its own studies, complete, named by the run
        study = load_study_set(str(out / run["name"]), with_records=True)
        assert study.protocol["protocol"]["name"] == f"smoke-design-{run['name']}"
        assert len(study.trials) == 6 and all(t.state == "COMPLETE" for t in study.trials)
        config = study.trials[0].record.config  # type: ignore[union-attr]
        act, init, fisher = run["levels"]
        assert (config.activation, config.init, config.fisher) == (
            ("relu", "tanh")[act], ("torch", "he")[init], ("empirical", "mc")[fisher]
        )  # fmt: skip
        assert config.seed == run["seed"]

    # Resuming a finished design runs no trial; another design in the folder is refused.
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert len(load_study_set(str(out / "run04-seed1"), with_records=False).trials) == 6
    capsys.readouterr()
    path.write_text(DESIGN.replace("seeds = [0, 1]", "seeds = [0, 2]"))
    err = one_line(capsys, ["sweep", str(path), "--out", str(out)])
    assert "holds another design: it differs from DESIGN at design.seeds[1]: stored 1" in err

    # A run whose cells are short of their trials (a sweep still running, or stopped) is left
    # out of the effects, not read with a smaller budget than the others.
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    _cut_before_trial(partial / "run02-seed0" / "studies.journal", "last")
    _cut_before_trial(partial / "run03-seed0" / "studies.journal", "first")
    assert main(["effects", str(partial)]) == 0
    held = json.loads((partial / "effects" / "effects.json").read_text())
    run02 = next(r for r in held["runs"] if r["name"] == "run02-seed0")
    assert all(math.isnan(v) for v in run02["values"].values())
    assert "left out until finished" in " ".join(run02["notes"])
    # `kfaclab status` on the design's folder: one line per run, its state, the design's total.
    capsys.readouterr()
    assert main(["status", str(partial)]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "activation, init, fisher" in table["run"]
    assert table["run01-seed0"].split()[1:3] == ["6/6", "0"] and "done  " in table["run01-seed0"]
    assert table["run02-seed0"].split()[1] == "5/6" and "sweeping" in table["run02-seed0"]
    assert table["run03-seed0"].split()[1] == "0/6" and "not started" in table["run03-seed0"]
    assert table["all"].split()[1] == "41/48" and "6 of 8 runs done" in table["all"]
    err = one_line(capsys, ["status", str(partial), "--protocol", "x"])
    assert "--protocol does not apply to a design's folder" in err
    run03 = next(r for r in held["runs"] if r["name"] == "run03-seed0")
    assert run03["notes"] == ["not run yet"]
    assert held["effects"][0]["n_obs"] == 6

    assert main(["effects", str(out)]) == 0
    report = out / "effects"
    text = (report / "effects.md").read_text()
    # the principal fraction I = +ABC: run 1 has A and B low, so C = AB high
    assert "# Effects: smoke-design" in text and "| run01-seed0 | relu | torch | mc |" in text
    data = json.loads((report / "effects.json").read_text())
    assert [t["response"] for t in data["effects"]] == [
        "log10_best_lambda", "loss_gap_at_one", "smallest_lambda_divergence",
        "smallest_lambda_rerun_divergence", "crossing", "escape_slope", "kfac_trial_seconds",
        "wall_minutes",
    ]  # fmt: skip
    # 3-step trials record no histogram: the crossing is undefined in every run, and said so
    crossing = data["effects"][4]
    assert crossing["effects"] == [] and "no run has a value" in " ".join(crossing["notes"])
    for table in data["effects"][:3]:
        assert [e["term"] for e in table["effects"]] == ["A=BC", "B=AC", "C=AB"]  # resolution III
        assert table["n_obs"] == 8 and table["df_resid"] == 3  # 8 − (1 + 3 + 1 seed block)
    assert all(-2.0 <= r["values"]["log10_best_lambda"] <= 2.0 for r in data["runs"])
    assert all(r["values"]["kfac_trial_seconds"] > 0 for r in data["runs"])  # timed trials
    assert "Cost: 8 finished runs took" in text
    assert (report / "halfnormal-log10_best_lambda.png").exists()
    err = one_line(capsys, ["effects", str(out), "--responses", "nope"])
    assert "unknown response 'nope'; known: log10_best_lambda" in err

    # The smallest λ's instability from paired reruns: `replicate` on one run's folder, then on
    # the design's (every run, each into its own folder; the stored one is not rerun); the
    # response equals the diverged share of exactly those reruns (counted from the raw file).
    smallest = "kfac-lam=1e-02"
    reruns = ["--cells", smallest, "--top", "1", "--seeds", "2"]
    assert main(["replicate", str(out / "run01-seed0"), *reruns]) == 0
    assert main(["effects", str(out), "--responses", "smallest_lambda_rerun_divergence"]) == 0
    runs = {r["name"]: r for r in json.loads((report / "effects.json").read_text())["runs"]}
    other = runs["run03-seed0"]
    assert math.isnan(other["values"]["smallest_lambda_rerun_divergence"])
    assert f"no paired reruns of {smallest} (kfaclab replicate RUN_FOLDER" in other["notes"][0]
    capsys.readouterr()
    assert main(["replicate", str(out), *reruns]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("kfaclab replicate: 2 reruns") == 8
    assert "design run run04-seed1" in captured.err and "skipped" not in captured.err
    assert main(["effects", str(out), "--responses", "smallest_lambda_rerun_divergence"]) == 0
    runs = {r["name"]: r for r in json.loads((report / "effects.json").read_text())["runs"]}
    for name in runs:
        lines = (out / name / "paired-reruns.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert len(rows) == 2 and {r["cell"] for r in rows} == {smallest}
        diverged = sum(not math.isfinite(float(r["value"])) for r in rows)
        assert runs[name]["values"]["smallest_lambda_rerun_divergence"] == diverged / 2
    # Runs whose top configurations may still change are skipped, by name.
    assert main(["replicate", str(partial), *reruns]) == 0
    err = capsys.readouterr().err
    assert "skipped 2: run02-seed0 (still sweeping), run03-seed0 (" in err
    err = one_line(capsys, ["replicate", str(out), "--out", str(tmp_path / "x")])
    assert "--out does not apply to a design's folder" in err


def test_effects_of_a_folder_without_a_design(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_line(capsys, ["effects", str(tmp_path)])
    assert "DIR must hold a design's design.json" in err


def _clip_protocol(tmp_path: Path, extra: str = "") -> Path:
    text = DESIGN[DESIGN.index("[protocol]") :].replace("smoke-design", "clip")
    text = text.replace(
        'lr_scale = "lambda"',
        'lr_scale = "lambda"\nkl_clip = '
        "{ low = 1e-8, high = 1e-6, log = true }\nkl_clip_lr = 2.0" + extra,
    )
    text = text.replace("[cells]\n", "[cells]\nsgd = true\n")
    path = tmp_path / "clip.toml"
    path.write_text(text)
    return path


def test_searched_kl_clip_replaces_lr_in_kfac_cells(tmp_path: Path) -> None:
    protocol = load_protocol(_clip_protocol(tmp_path))
    sgd, lam, *_ = build_cells(protocol)
    assert set(search_space(protocol, sgd)) == {"lr", "lr_decay", "momentum"}
    assert set(search_space(protocol, lam)) == {"kl_clip", "lr_decay", "momentum"}
    config = trial_config(protocol, lam, {"kl_clip": 3e-7, "lr_decay": 1, "momentum": 0}, 0)
    assert config.kl_clip == 3e-7 and config.lr == pytest.approx(2.0 * 1e-2)  # lr/λ = 2
    out = tmp_path / "out"
    assert main(["sweep", str(_clip_protocol(tmp_path)), "--out", str(out)]) == 0
    study = load_study_set(str(out))
    for t in study.trials:
        if t.cell == "sgd":
            assert "lr" in t.params and t.record.config.kl_clip is None  # type: ignore[union-attr]
            continue
        rec = t.record
        assert rec is not None and rec.config.kl_clip == t.params["kl_clip"]
        # A clip of ≤ 1e-6 binds on every step: the clip, not lr, set the step size.
        assert rec.counters["kl_clip_binds"] == rec.steps_done


def test_searched_kl_clip_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _clip_protocol(tmp_path)
    path.write_text(path.read_text().replace("kl_clip_lr = 2.0", ""))
    err = one_line(capsys, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert "search.kl_clip and search.kl_clip_lr go together" in err
    path = _clip_protocol(tmp_path)
    path.write_text(path.read_text().replace("[training]\n", "[training]\nkl_clip = 1e-2\n"))
    err = one_line(capsys, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert "search.kl_clip (a searched clip) and training.kl_clip (a fixed one)" in err


def test_absolute_lr_scale_gives_every_cell_the_stated_range(tmp_path: Path) -> None:
    """lr_scale = "none": every cell samples lr itself in [low, high], and the report's
    protocol line states it as an absolute range."""
    from kfaclab.analysis.findings.tables import lr_range

    path = tmp_path / "abs.toml"
    path.write_text(DESIGN[DESIGN.index("[protocol]") :].replace('lr_scale = "lambda"', ""))
    protocol = load_protocol(path)
    for cell in build_cells(protocol):
        r = search_space(protocol, cell)["lr"]
        assert (r.low, r.high, r.log) == (0.01, 1.0, True)
    assert lr_range(protocol.raw) == "lr ∈ [1e-2, 1]"


@pytest.mark.slow  # ~20 s here: SQLite's schema creation and commits, beside the e2e test above
def test_design_on_one_database_names_studies_by_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--storage: every run's studies in one database (as several machines would share them),
    told apart by the run in their names; `effects --storage` reads them back."""
    import optuna

    path = tmp_path / "design.toml"
    path.write_text(
        DESIGN.replace("seeds = [0, 1]", "seeds = [5]").replace("n_trials = 2", "n_trials = 1")
    )
    url = f"sqlite:///{tmp_path / 'all.db'}"
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--storage", url]) == 0
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    for run in ("run01-seed5", "run04-seed5"):
        assert f"smoke-design-{run}/kfac-lam=1e+00" in names
    assert not (out / "run01-seed5").exists()  # the folder holds design.json only
    assert main(["effects", str(out), "--storage", url]) == 0
    data = json.loads((out / "effects" / "effects.json").read_text())
    assert all(not r["notes"] or "not readable" not in r["notes"][0] for r in data["runs"])
    assert data["effects"][0]["df_resid"] == 0  # one seed, 4 runs, 1 + 3 parameters
