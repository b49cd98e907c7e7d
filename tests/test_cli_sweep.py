"""`kfaclab sweep` / `reproduce` around the sweep: complete validation before anything is stored,
the dataset folder outside the stored protocol, the implementation-profile keys reaching every
trial, and what a finished sweep says next."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cli_helpers import MNIST, one_line, tiny_protocol
from kfaclab.analysis.summary.reruns import rerun_seeds
from kfaclab.cli.main import main
from kfaclab.errors import UsageError
from kfaclab.study.cells import build_cells
from kfaclab.study.progress import CellProgress, LiveTable, summarize
from kfaclab.study.protocol import load_protocol
from kfaclab.study.reader import read_study_set
from kfaclab.study.storage import StorageSpec
from kfaclab.study.sweep import trial_config


def test_trial_check_failure_stores_nothing_then_the_fixed_file_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """depth = 5000 passes the schema (an integer >= 1) but not the trial check (<= 1000): the
    refusal comes before anything is stored, and the corrected file then runs in the same folder."""
    out = tmp_path / "out"
    bad = tiny_protocol(tmp_path, name="deep")
    bad.write_text(bad.read_text().replace("depth = 2", "depth = 5000"))
    err = one_line(capsys, ["sweep", str(bad), "--out", str(out)])
    assert "protocol 'deep', cell sgd" in err and "depth must be <= 1000, got 5000" in err
    assert not (out / "studies.journal").exists()
    tiny_protocol(tmp_path, name="deep")  # corrected: depth = 2
    assert main(["sweep", str(bad), "--out", str(out)]) == 0


def test_factor_decay_of_one_is_refused_before_storing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    text = tiny_protocol(tmp_path).read_text().replace("sgd = true", "sgd = true\nlambdas = [1.0]")
    bad = tmp_path / "decay.toml"
    bad.write_text(text.replace("[training]\n", "[training]\nfactor_decay = 1.0\n"))
    err = one_line(capsys, ["sweep", str(bad), "--out", str(out)])
    assert "training.factor_decay must be < 1.0, got 1.0" in err
    assert not (out / "studies.journal").exists()
    bad.write_text(text.replace("[training]\n", "[training]\nfactor_decay = 0.9\n"))
    assert main(["sweep", str(bad), "--out", str(out)]) == 0


def test_trial_check_covers_the_high_end_of_a_search_range(tmp_path: Path) -> None:
    """A strategy constant searched up to a value build_damping refuses: the schema builds the
    strategy at the low end only; the trial check also tries the middle and the high end."""
    from kfaclab.cli.sweeping import check_trials

    p = load_protocol(tiny_protocol(tmp_path))
    check_trials(p)  # fine as it is
    text = tiny_protocol(tmp_path, name="hi").read_text()
    path = tmp_path / "hi.toml"
    path.write_text(
        text.replace("lr = { low = 0.01, high = 0.1 }", "lr = { low = 0.01, high = 3e38 }")
    )
    check_trials(load_protocol(path))  # 3e38 is a float32
    path.write_text(
        text.replace("[model]\ndepth = 2\nwidth = 8", "[model]\ndepth = 2\nwidth = 70000")
    )
    with pytest.raises(UsageError, match="at their low end\\): width must be <= 65536"):
        check_trials(load_protocol(path))


def test_a_different_data_dir_is_not_a_different_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    config = tiny_protocol(tmp_path)
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    # The same folder written with a trailing slash, then through a link: same study.
    config.write_text(config.read_text().replace(f'data_dir = "{MNIST}"', f'data_dir = "{MNIST}/"'))
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    link = tmp_path / "mnist-link"
    link.symlink_to(MNIST)
    assert main(["sweep", str(config), "--out", str(out), "--data-dir", str(link)]) == 0
    stored = read_study_set(StorageSpec(folder=out)).protocol
    assert "data_dir" not in stored["data"]  # the machine's folder is not part of the study
    # Anything else still differs.
    config.write_text(config.read_text().replace("steps = 2", "steps = 3"))
    capsys.readouterr()
    err = one_line(capsys, ["sweep", str(config), "--out", str(out)])
    assert "differs from CONFIG at training.steps: stored 2, CONFIG 3" in err


def test_protocols_stored_with_a_data_dir_still_resume(tmp_path: Path) -> None:
    """Sweeps stored before data_dir left the stored protocol: the comparison skips it."""
    from kfaclab.study._schema import first_difference

    old = {"data": {"dataset": "mnist", "data_dir": "/elsewhere"}, "model": {"depth": 2}}
    new = {"data": {"dataset": "mnist"}, "model": {"depth": 2}}
    assert first_difference(old, new) is None
    assert first_difference(old, {**new, "model": {"depth": 3}}) == ("model.depth", 2, 3)


def test_implementation_profile_keys_reach_every_trial(tmp_path: Path) -> None:
    extra = 'factor_every = 3\nfactor_init = "identity"\neigen_floor = 1e-6\n'
    text = tiny_protocol(tmp_path, extra=extra).read_text().replace("sgd = true", "lambdas = [1.0]")
    path = tmp_path / "profile.toml"
    path.write_text(text)
    p = load_protocol(path)
    assert (p.training.factor_every, p.training.factor_init, p.training.eigen_floor) == (
        3, "identity", 1e-6,
    )  # fmt: skip
    cell = build_cells(p)[0]
    config = trial_config(p, cell, {"lr": 0.1, "lr_decay": 1.0, "momentum": 0.0}, 0)
    assert (config.factor_every, config.factor_init, config.eigen_floor) == (3, "identity", 1e-6)
    defaults = load_protocol(tiny_protocol(tmp_path, name="plain")).training
    assert (defaults.factor_every, defaults.factor_init, defaults.eigen_floor) == (1, "batch", 0.0)


def test_cnn_keys_and_the_machines_device_reach_every_trial(tmp_path: Path) -> None:
    text = tiny_protocol(tmp_path, extra='conv_approx = "reduce"\n').read_text()
    text = text.replace("depth = 2\nwidth = 8\n", 'kind = "cnn"\n').replace(
        "sgd = true", "lambdas = [1.0]"
    )
    path = tmp_path / "cnn.toml"
    path.write_text(text)
    p = load_protocol(path, device="cpu")
    config = trial_config(p, build_cells(p)[0], {"lr": 0.1, "lr_decay": 1.0, "momentum": 0.0}, 0)
    assert (config.model, config.conv_approx, config.device) == ("cnn", "reduce", "cpu")
    assert "device" not in p.raw  # the machine's, not the stored protocol's


def test_an_unusable_device_is_refused_before_storing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["sweep", str(tiny_protocol(tmp_path)), "--out", str(out), "--device", "nope"]
    assert "device must be a torch device such as 'cpu' or 'cuda', got 'nope'" in one_line(
        capsys, argv
    )
    assert not (out / "studies.journal").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('factor_init = "zeros"', "training.factor_init must be one of batch, identity"),
        ("eigen_floor = -1e-3", "training.eigen_floor must be >= 0.0, got -0.001"),
        ("factor_every = 0", "training.factor_every must be >= 1, got 0"),
        ("factor_every = 1.5", "training.factor_every must be an integer, got 1.5"),
    ],
)
def test_implementation_profile_keys_are_validated(tmp_path: Path, line: str, message: str) -> None:
    path = tiny_protocol(tmp_path, extra=line + "\n")
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_protocol(path)


def test_rerun_seeds_go_through_the_schema_to_the_report(tmp_path: Path) -> None:
    path = tmp_path / "seeds.toml"
    base = tiny_protocol(tmp_path).read_text()
    path.write_text(base + "[report]\nrerun_seeds = [7, 3, 11]\n")
    p = load_protocol(path)
    assert p.rerun_seeds == (7, 3, 11)
    assert rerun_seeds(p.raw) == [7, 3, 11]  # what analysis/summary/reruns.py reads from the study
    for bad, message in (
        ("[]", "report.rerun_seeds must list 1 or more seeds"),
        ("[1, 1]", "report.rerun_seeds must not repeat a value"),
        ("[-1]", r"report.rerun_seeds\[0\] must be >= 0"),
        ('["1"]', r"report.rerun_seeds\[0\] must be an integer"),
        ("[9223372036854775807, 0]", None),
    ):
        path.write_text(base + f"[report]\nrerun_seeds = {bad}\n")
        if message is None:
            assert load_protocol(path).rerun_seeds == (2**63 - 1, 0)
        else:
            with pytest.raises(UsageError, match=message):
                load_protocol(path)


def test_finished_sweep_prints_the_next_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my out"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # the loader names the folder it resolved (data/loader.py): through a symlinked shared/
    # (a checkout beside a link) that is the link's target
    assert f"kfaclab: dataset mnist in {MNIST.resolve()}" in err
    assert err.rstrip().endswith(f"next: kfaclab report '{out}' --protocol tiny")


def test_progress_log_lines_carry_an_eta() -> None:
    stream = io.StringIO()  # not a terminal: one summary line per interval
    rows = [
        CellProgress("sgd", 3, 10, 1, 1, 0.5, 70.0),
        CellProgress("kfac", 5, 10, 0, 1, 0.4, 125.0),
    ]
    LiveTable(stream, log_every=0.0).show(rows)
    assert stream.getvalue() == "kfaclab sweep: 8/20 trials done, 1 diverged, ETA 2m05s\n"
    stream = io.StringIO()
    LiveTable(stream, log_every=0.0).show([CellProgress("sgd", 0, 10, 0, 1, None, None)])
    assert stream.getvalue().endswith("ETA ?\n")


def test_eta_after_a_stall_reflects_the_trials_not_the_stall(tmp_path: Path) -> None:
    """Ten 1-second trials, then 30 s with nothing (a restart): 10 left → about 10 s, not the
    ~40 s that dividing by the time up to now gave (the probe saw "ETA 20m46s")."""
    from optuna.trial import TrialState, create_trial

    p = load_protocol(tiny_protocol(tmp_path))
    cell = build_cells(p)[0]
    cell = type(cell)(**{**cell.to_dict(), "n_trials": 20})
    now = datetime.now()
    trials = [create_trial(state=TrialState.COMPLETE, value=1.0) for _ in range(10)]
    for i, t in enumerate(trials):
        t.datetime_start = now - timedelta(seconds=40 - i)
        t.datetime_complete = now - timedelta(seconds=39 - i)
    rows = summarize([cell], {cell.name: trials}, now=now)
    assert rows[0].eta_seconds == pytest.approx(10.0)


def test_summarize_eta_from_the_completion_rate(tmp_path: Path) -> None:
    """Two trials done in the last 100 s → 0.02 trials/s; 8 left in one open cell → 400 s."""
    from optuna.trial import TrialState, create_trial

    p = load_protocol(tiny_protocol(tmp_path))
    cell = build_cells(p)[0]
    cell = type(cell)(**{**cell.to_dict(), "n_trials": 10})
    now = datetime.now()
    trials = [create_trial(state=TrialState.COMPLETE, value=1.0) for _ in range(2)]
    for t, done in zip(trials, (50, 0), strict=True):
        t.datetime_start = now - timedelta(seconds=100)
        t.datetime_complete = now - timedelta(seconds=done)
    rows = summarize([cell], {cell.name: trials}, now=now)
    assert rows[0].eta_seconds == pytest.approx(8 / (2 / 100))
