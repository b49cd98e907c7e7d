"""A storage that others can write, and studies that may go missing (issue 29, points 4 and 5):
crafted index studies and attributes are refused in one line naming the study, or skipped when
another protocol is asked for; a missing cell study is reported and recreated by the next sweep."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest

from cli_helpers import tiny_protocol
from kfaclab.cli.main import main
from kfaclab.study.registry import (
    CELLS_ATTR,
    KIND_ATTR,
    NAME_ATTR,
    PROTOCOL_ATTR,
    index_study_name,
    study_name,
)
from kfaclab.study.storage import StorageSpec, open_storage

GOOD_CELL = {
    "name": "sgd", "optimizer": "sgd", "damping": None, "damping_label": "", "n_trials": 1,
    "top_k": 1,
}  # fmt: skip

# Index attributes another user of a shared storage could write (turn 3's probe: 8 of 18 gave
# tracebacks), and the words the refusal must contain.
CRAFTED: dict[str, tuple[dict[str, Any], str]] = {
    "cells a string": ({CELLS_ATTR: "junk"}, "kfaclab:cells must be a list"),
    "cell missing keys": ({CELLS_ATTR: [{"name": "x"}]}, "kfaclab:cells[0] must be an object"),
    "cell a number": ({CELLS_ATTR: [5]}, "kfaclab:cells[0] must be an object"),
    "optimizer unknown": (
        {CELLS_ATTR: [{**GOOD_CELL, "optimizer": "adam"}]}, "optimizer must be",
    ),
    "damping negative": ({CELLS_ATTR: [{**GOOD_CELL, "damping": -1.0}]}, "damping must be"),
    "n_trials text": ({CELLS_ATTR: [{**GOOD_CELL, "n_trials": "3"}]}, "n_trials must be"),
    "top_k bool": ({CELLS_ATTR: [{**GOOD_CELL, "top_k": True}]}, "top_k must be"),
    "cell name empty": ({CELLS_ATTR: [{**GOOD_CELL, "name": ""}]}, "name must be"),
    "cells twice": ({CELLS_ATTR: [GOOD_CELL, GOOD_CELL]}, "each cell once"),
    "protocol a string": ({PROTOCOL_ATTR: "x"}, "kfaclab:protocol must be a table"),
    "protocol a list": ({PROTOCOL_ATTR: [1]}, "kfaclab:protocol must be a table"),
}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    assert main(["sweep", str(tiny_protocol(root)), "--out", str(root / "s")]) == 0
    return root / "s"


def storage_of(folder: Path) -> optuna.storages.BaseStorage:
    return open_storage(StorageSpec(folder=folder), create=False)


def plant_index(folder: Path, name: str, attrs: dict[str, Any]) -> None:
    """What `mal/craft.py` did: an index study written with Optuna, as any user could."""
    study = optuna.create_study(storage=storage_of(folder), study_name=index_study_name(name))
    base = {KIND_ATTR: "protocol", NAME_ATTR: name, PROTOCOL_ATTR: {}, CELLS_ATTR: [GOOD_CELL]}
    for key, value in {**base, **attrs}.items():
        study.set_user_attr(key, value)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("variant", list(CRAFTED))
def test_a_crafted_index_is_refused_in_one_line_and_spares_other_protocols(
    swept: Path, tmp_path: Path, variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    attrs, words = CRAFTED[variant]
    plant_index(folder, "mallory", attrs)
    csv = str(tmp_path / "e.csv")
    # Alice names her protocol: mallory's index is never parsed.
    for argv in (["status", str(folder)], ["export", str(folder), csv]):
        code, err = run(capsys, *argv, "--protocol", "tiny")
        assert code == 0 and "Traceback" not in err, err
    # Asked for mallory's protocol: one line naming the study and the rule.
    for argv in (["status", str(folder)], ["export", str(folder), csv]):
        code, err = run(capsys, *argv, "--protocol", "mallory")
        assert code == 2 and err.count("\n") == 1, err
        assert "index study 'mallory [kfaclab index" in err and words in err, err
    code, err = run(capsys, "status", str(folder))  # which one? never a parse of either
    assert code == 2 and "holds several protocols" in err and "use --protocol" in err, err


def test_crafted_trial_attributes_are_ignored_not_trusted(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    study = optuna.load_study(study_name=study_name("tiny", "sgd"), storage=storage_of(folder))
    real = study.get_trials()[0]
    crafted = optuna.trial.create_trial(
        value=1.0,
        params=real.params,
        distributions=real.distributions,
        user_attrs={"seconds": "abc", "status": "=1+2", "test_accuracy": "x"},
    )
    study.add_trial(crafted)
    for argv in (["export", str(folder), str(tmp_path / "e.csv")], ["claims", str(folder)]):
        code, err = run(capsys, *argv)
        assert code == 0 and "Traceback" not in err, err
    row = (tmp_path / "e.csv").read_text().splitlines()[2]
    assert row.startswith("sgd,sgd,,1,COMPLETE,,1.0,") and "abc" not in row and "=1+2" not in row


def test_a_missing_cell_study_is_reported_then_recreated_by_the_next_sweep(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    # What the dashboard's DELETE /api/studies/<id> does, and what a sweep killed while it
    # created its studies leaves: the index lists the cell, its study is not there.
    optuna.delete_study(study_name=study_name("tiny", "sgd"), storage=storage_of(folder))
    for argv in (
        ["status", str(folder)],
        ["export", str(folder), str(tmp_path / "e.csv")],
        ["claims", str(folder)],
    ):
        code, err = run(capsys, *argv)
        assert code == 0 and "Traceback" not in err, (argv, err)
        assert "'tiny/sgd' is missing" in err and "kfaclab sweep" in err, err
    config = tiny_protocol(tmp_path)
    assert main(["sweep", str(config), "--out", str(folder)]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name=study_name("tiny", "sgd"), storage=storage_of(folder))
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE]  # recreated, and run to its count
    code, err = run(capsys, "status", str(folder))
    assert code == 0 and "missing" not in err


def test_names_from_a_shared_storage_reach_no_terminal_or_spreadsheet_raw(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control characters in names are shown as escapes (F19); a cell name that a spreadsheet
    would run as a formula is exported as text (F20)."""
    folder = tmp_path / "s"
    shutil.copytree(swept, folder)
    evil = "esc\x1b]0;PWNED\x07\x1b[31mRED\r\x1b[2K"
    formula = '=HYPERLINK("http://127.0.0.1:9/"&A1,"click")'
    plant_index(folder, evil, {CELLS_ATTR: [{**GOOD_CELL, "name": formula}]})
    study = optuna.create_study(storage=storage_of(folder), study_name=f"{evil}/{formula}")
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            params={"lr": 0.05},
            distributions={"lr": optuna.distributions.FloatDistribution(0.01, 0.1)},
            user_attrs={"status": "ok", "seconds": 1.0},
        )
    )
    csv = tmp_path / "e.csv"
    for argv in (["status", str(folder)], ["status", str(folder), "--protocol", evil]):
        main(argv)
        out = capsys.readouterr()
        assert not any(c in out.out + out.err for c in "\x1b\x07\r"), out
    assert main(["export", str(folder), str(csv), "--protocol", evil]) == 0
    capsys.readouterr()
    row = csv.read_text().splitlines()[1]
    assert row.startswith("\"'=HYPERLINK("), row  # a leading ' : text, not a formula
    curves = (tmp_path / "e-curves.csv").read_text()
    assert "\n=" not in curves
