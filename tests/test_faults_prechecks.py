"""Everything a protocol can produce is checked before anything is stored (issue 29, F14): a
strategy's searched constant over its whole range, and every per-trial seed; and
``trial_seeds = "per_trial"`` really gives trial k the seed ``seed + k`` (issue 28's mutation)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from cli_helpers import one_line, tiny_protocol
from kfaclab.cli.main import main
from kfaclab.study.reader import load_study_set
from kfaclab.study.sweep import trial_seed

STRATEGY = (
    '[[cells.strategies]]\nname = "lm"\nkind = "levenberg_marquardt"\n'
    "search = {{ initial = {{ low = 1e-3, high = {high}, log = true }} }}\n"
)


def strategy_protocol(folder: Path, high: str) -> Path:
    path = tiny_protocol(folder)
    text = path.read_text().replace("[search]", STRATEGY.format(high=high) + "[search]")
    path.write_text(text.replace("sgd = true", "sgd = false"))
    return path


def test_a_searched_strategy_constant_is_checked_at_its_high_end_before_storing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    err = one_line(capsys, ["sweep", str(strategy_protocol(tmp_path, "1e38")), "--out", str(out)])
    assert "cell kfac-lm" in err and "levenberg_marquardt.initial must be in" in err, err
    assert not (out / "studies.journal").exists()  # nothing stored: the fixed file just works
    assert main(["sweep", str(strategy_protocol(tmp_path, "1e3")), "--out", str(out)]) == 0


def seeds(out: Path) -> list[int]:
    study = load_study_set(str(out))
    return [t.record.config.seed for t in study.trials if t.record is not None]


@pytest.mark.parametrize(
    ("mode", "seed", "expected"),
    [
        ("per_trial", 5, [5, 6, 7]),
        ("fixed", 5, [5, 5, 5]),
        ("per_trial", 2**63 - 2, [2**63 - 2, 2**63 - 1, 0]),  # wrapped, never refused mid-way
    ],
)
def test_per_trial_seeds_reach_every_trial(
    tmp_path: Path, mode: str, seed: int, expected: list[int]
) -> None:
    path = tiny_protocol(tmp_path)
    text = path.read_text().replace("n_trials = 1", "n_trials = 3")
    path.write_text(text + f'seed = {seed}\ntrial_seeds = "{mode}"\n')
    out = tmp_path / "s"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert sorted(seeds(out)) == sorted(expected)  # the seed each trial trained with
    stored = optuna.load_study(
        study_name="tiny/sgd",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "studies.journal"))
        ),
    )
    assert [t.user_attrs["seed"] for t in stored.get_trials()] == expected  # in trial order


def test_trial_seed_stays_in_range() -> None:
    assert trial_seed(0, 0) == 0 and trial_seed(7, 3) == 10
    assert trial_seed(2**63 - 1, 1) == 0 and trial_seed(2**63 - 1, 0) == 2**63 - 1
