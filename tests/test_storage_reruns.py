"""The rerun cache beside a report is keyed by the study and the trial's configuration: two
studies reported into one folder never show each other's reruns."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from kfaclab.analysis.report.build import build_report
from kfaclab.study import load_study_set
from kfaclab.study.runner import run_sweep
from kfaclab.study.storage import JournalFolder
from kfaclab.trial_types import TrialConfig, TrialResult
from test_sweep import fake_trial, protocol


def _study(folder: Path, name: str, low: float) -> None:
    """One trial per cell, so the best trial is number 0 in every cell of every study: what
    the old cache key (cell, trial number, seeds) could not tell apart."""
    p = protocol(n_trials=1, name=name, lr={"low": low, "high": low * 1.5, "log": True})
    assert run_sweep(p, JournalFolder(folder), trial_fn=fake_trial, stream=io.StringIO()) == 0


class Runner:
    def __init__(self) -> None:
        self.configs: list[TrialConfig] = []

    def __call__(self, config: TrialConfig) -> TrialResult:
        self.configs.append(config)
        return dataclasses.replace(fake_trial(config), value=config.lr)  # traceable to its config


def _report(folder: Path, out: Path, runner: Runner) -> tuple[list[float], list[float]]:
    """(the best trials' lr, the rerun means) of the study in ``folder``, both sorted."""
    study = load_study_set(str(folder))
    report = build_report(study, out, storage=str(folder), runner=runner)
    best_lrs = sorted(t.params["lr"] for t in study.trials)  # one trial per cell: the best
    means = sorted(r.rerun.mean for r in report.summary.reruns)
    assert len(means) == len(best_lrs) == 3
    return best_lrs, means


def test_two_studies_reported_into_one_folder_never_share_reruns(tmp_path: Path) -> None:
    _study(tmp_path / "a", "alpha", 1e-3)
    _study(tmp_path / "b", "beta", 1e-2)
    out = tmp_path / "report"
    runner = Runner()
    a_lrs, a_means = _report(tmp_path / "a", out, runner)
    assert len(runner.configs) == 3 * 3 and a_means == a_lrs  # three cells, three seeds
    b_lrs, b_means = _report(tmp_path / "b", out, runner)
    assert len(runner.configs) == 2 * 3 * 3  # B reran, rather than showing A's reruns
    assert b_means == b_lrs != a_lrs  # each rerun mean is B's own best configuration's lr
    _report(tmp_path / "b", out, runner)
    assert len(runner.configs) == 2 * 3 * 3  # B again: cached


def test_the_same_protocol_in_two_storages_is_two_studies(tmp_path: Path) -> None:
    """Identical protocols (same names, same trial configurations) in two folders: the storage
    identity alone tells them apart."""
    for folder in ("a", "b"):
        _study(tmp_path / folder, "same", 1e-3)
    runner = Runner()
    _report(tmp_path / "a", tmp_path / "report", runner)
    _report(tmp_path / "b", tmp_path / "report", runner)
    assert len(runner.configs) == 2 * 3 * 3


def test_a_moved_study_folder_keeps_its_rerun_cache(tmp_path: Path) -> None:
    """docs/results in another checkout: the report rebuilt beside the moved study reuses the
    reruns stored there instead of training them again."""
    import shutil

    _study(tmp_path / "run", "moved", 1e-3)
    runner = Runner()
    _report(tmp_path / "run", tmp_path / "run", runner)
    assert len(runner.configs) == 3 * 3
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")
    _report(tmp_path / "elsewhere" / "run", tmp_path / "elsewhere" / "run", runner)
    assert len(runner.configs) == 3 * 3  # nothing retrained


def test_serial_reruns_train_on_one_thread_and_restore_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process reruns run torch on one thread, as every worker does (two threads made a
    trial ~30x slower beside a busy sweep), and leave the caller's setting as it was."""
    import torch

    import kfaclab.train
    from kfaclab.analysis.summary.reruns import _run_all

    seen: list[int] = []
    monkeypatch.setattr(
        kfaclab.train, "run_trial", lambda cfg: seen.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        list(_run_all([TrialConfig(), TrialConfig()], None, 1, lambda s: None))
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
