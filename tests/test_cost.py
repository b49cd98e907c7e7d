"""The report's cost section (analysis/summary/cost.py): wall time, idle gaps, trials per second,
parallelism, shares and the planning hint, asserted exactly on trials with known start and end
times written into a real Optuna journal and read back the way the report reads them."""

from __future__ import annotations

import math
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kfaclab.analysis.replication.outcomes import RerunOutcome
from kfaclab.analysis.report.cost_blocks import cost_blocks, duration, training_sentence
from kfaclab.analysis.summary.cost import (
    AnalysisCost,
    Laps,
    StudyCost,
    idle_gaps,
    paired_rerun_cost,
    plan,
    report_rerun_cost,
    study_cost,
    training_cost,
)
from kfaclab.analysis.summary.reruns import RerunRecord
from kfaclab.cli.main import main
from kfaclab.study.protocol import parse_protocol
from kfaclab.study.reader import StudySet, read_study_set
from kfaclab.study.registry import ensure_studies, study_name
from kfaclab.study.storage import StorageSpec
from report_fakes import smoke_dir

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.toml"
T0 = datetime(2026, 1, 5, 9, 0, 0)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (state, status, start s, end s) per cell of configs/smoke.toml (sgd, λ=1e-3, λ=1: 3 trials
# each). Two workers; the sweep stops at 40 s and resumes at 40 + 3600 s (a 1 h idle gap).
TRIALS: dict[str, list[tuple[TrialState, str | None, float, float | None]]] = {
    "sgd": [
        (TrialState.COMPLETE, "ok", 0, 10),
        (TrialState.COMPLETE, "ok", 10.5, 20.5),
        (TrialState.COMPLETE, "ok", 3640, 3650),
    ],
    "kfac-lam=1e-03": [
        (TrialState.COMPLETE, "ok", 0, 20),
        (TrialState.COMPLETE, "diverged", 20.5, 25.5),  # stops early: cheaper
        (TrialState.FAIL, None, 25.5, 40),
    ],
    "kfac-lam=1e+00": [
        (TrialState.COMPLETE, "ok", 3640, 3660),
        (TrialState.RUNNING, None, 3660, None),  # in flight when read: no end, not counted
    ],
}


def _journal_study(folder: Path) -> StudySet:
    raw = tomllib.loads(SMOKE.read_text())
    raw["protocol"]["name"] = "cost"
    protocol = parse_protocol(raw, base_dir=SMOKE.parent)
    spec = StorageSpec(folder=folder)
    storage = spec.open(create=True)
    cells = ensure_studies(protocol, storage, spec)
    assert [c.name for c in cells] == list(TRIALS)
    for cell, trials in TRIALS.items():
        study_id = storage.get_study_id_from_name(study_name("cost", cell))
        for state, status, start, end in trials:
            storage.create_new_trial(
                study_id,
                template_trial=FrozenTrial(
                    number=0,  # the storage numbers them
                    state=state,
                    value=1.0 if state == TrialState.COMPLETE else None,
                    datetime_start=_at(start),
                    datetime_complete=None if end is None else _at(end),
                    params={"lr": 0.01},
                    distributions={"lr": FloatDistribution(1e-3, 0.3, log=True)},
                    user_attrs={"status": status} if status else {},
                    system_attrs={},
                    intermediate_values={},
                    trial_id=0,
                ),
            )
    return read_study_set(spec, with_records=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudySet:
    return _journal_study(tmp_path_factory.mktemp("cost"))


def test_training_cost_from_a_stored_study(study: StudySet) -> None:
    t = training_cost(study.cells, study.trials)
    sgd, small, big = t.cells
    assert (sgd.label, sgd.planned, sgd.finished, sgd.diverged, sgd.failed) == ("SGD", 3, 3, 0, 0)
    assert sgd.trial_seconds == 30 and sgd.mean_seconds == 10
    # the failed trial ran too: it costs time though it finished nothing
    assert (small.finished, small.diverged, small.failed, small.timed) == (2, 1, 1, 3)
    assert small.trial_seconds == 20 + 5 + 14.5
    assert (big.finished, big.unfinished, big.timed, big.trial_seconds) == (1, 1, 1, 20)
    assert t.first_start == T0 and t.last_end == _at(3660)
    assert t.span_seconds == 3660
    # idle from the last end before the stop (40 s) to the resume (3640 s)
    assert t.idle_gaps == [3600]
    assert t.active_seconds == 60
    assert t.timed == 7 and t.trial_seconds == 89.5
    assert t.trials_per_second == pytest.approx(7 / 60, abs=0, rel=1e-15)
    assert t.parallelism == pytest.approx(89.5 / 60, rel=1e-15)
    # the identity the docstring promises: parallelism = rate × mean seconds per trial
    assert t.parallelism == pytest.approx(t.trials_per_second * t.mean_seconds, rel=1e-12)


def test_short_gaps_are_work_and_only_long_ones_are_idle() -> None:
    spans = [(_at(0), _at(10)), (_at(5), _at(12)), (_at(20), _at(30)), (_at(100), _at(101))]
    assert idle_gaps(spans, threshold=60) == [70]
    assert idle_gaps(spans, threshold=5) == [8, 70]
    assert idle_gaps(list(reversed(spans)), threshold=5) == [8, 70]  # order of the trials
    assert idle_gaps([], threshold=5) == []
    # a gap exactly at the threshold is not idle: "longer than"
    assert idle_gaps([(_at(0), _at(1)), (_at(61), _at(62))], threshold=60) == []


def test_shares_plan_and_reruns(study: StudySet) -> None:
    records = {
        "sgd": RerunRecord("sgd", 0, [1, 2, 3], [0.1] * 3, [0.9] * 3, [2.0, 3.0, 5.0]),
    }
    paired = [_outcome(4.0), _outcome(6.0)]
    laps = Laps({"summaries": 1.0, "reruns": 10.0, "figures": 2.5})
    cost = study_cost(study, records, paired, laps, load_seconds=0.5)
    assert [(r.what, r.count, r.timed, r.seconds) for r in cost.reruns] == [
        ("report", 3, 3, 10.0),
        ("paired", 2, 2, 10.0),
    ]
    # analysis: 0.5 + 1 + 10 + 2.5, less the 10 s of reruns (already in the reruns' seconds)
    assert cost.analysis.seconds == 14.0 and cost.analysis.own_seconds == 4.0
    assert cost.parts == {
        "training": 89.5,
        "report reruns": 10.0,
        "paired reruns": 10.0,
        "analysis": 4.0,
    }
    assert cost.shares["training"] == 89.5 / 113.5
    assert sum(cost.shares.values()) == pytest.approx(1.0)
    p = cost.plan
    assert p is not None and (p.trials, p.cells, p.per_cell) == (9, 3, 3)
    # 3 × 10 s (SGD) + 3 × 39.5/3 s (λ=1e-3) + 3 × 20 s (λ=1)
    assert p.worker_seconds == pytest.approx(30 + 39.5 + 60, rel=1e-15)
    assert p.wall_seconds == pytest.approx(p.worker_seconds / (89.5 / 60), rel=1e-15)


def test_a_rerun_without_its_seconds_is_not_recorded_never_guessed() -> None:
    old = RerunOutcome.from_json({**_outcome(1.0).to_json(), "seconds": None})
    cost = paired_rerun_cost([old, _outcome(3.0)])
    assert (cost.count, cost.timed, cost.seconds) == (2, 1, 3.0)
    bad = RerunRecord("sgd", 0, [1, 2], [0.1, 0.2], [0.9, 0.9], [])  # type: ignore[list-item]
    assert report_rerun_cost({"sgd": bad}) == report_rerun_cost({"sgd": bad})
    none = report_rerun_cost({"sgd": bad})
    assert (none.count, none.timed, none.seconds) == (2, 0, 0.0)
    training = training_cost([], [])
    blocks = cost_blocks(
        StudyCost(training, [cost, none], AnalysisCost({"figures": 1.0}, None), plan(training))
    )
    text = "\n".join(str(b) for b in blocks)
    assert "2 (time recorded for 1)" in text and "2 (time not recorded)" in text
    assert "reading the study not measured" in text
    assert "no timed trial yet" in text


def test_the_section_reads_the_numbers(study: StudySet) -> None:
    cost = study_cost(study, {}, [], Laps({"figures": 2.0}), load_seconds=1.0)
    text = training_sentence(cost.training)
    assert "6 finished trials (1 diverged) and 1 failed; 1 still running" in text
    assert "Wall time 1 h 01 min" in text and "1 min once 1 idle gap(s)" in text
    assert "0.117 trials per second" in text and "1.49 trials ran at once" in text
    blocks = cost_blocks(cost)
    table = blocks[2]
    assert table.rows[0] == ["SGD", "3/3", "0", "0", "30.0 s", "10.0", "34%"]  # type: ignore[attr-defined]
    assert table.rows[-1][:5] == ["all", "6/9", "1", "1", "1 min 30 s"]  # type: ignore[attr-defined]
    assert "9 trials ≈ 0.0360 worker-hours" in blocks[-1].text  # type: ignore[attr-defined]


def test_laps_add_up_by_name() -> None:
    laps = Laps()
    laps.lap("a")
    laps.lap("b")
    laps.lap("a")
    assert list(laps.seconds) == ["a", "b"] and all(v >= 0 for v in laps.seconds.values())


def test_durations_read_at_a_glance() -> None:
    assert duration(0) == "0 s" and duration(0.01) == "under 0.1 s" and duration(42) == "42.0 s"
    assert duration(185) == "3 min 05 s" and duration(600) == "10 min"
    assert duration(7620) == "2 h 07 min"
    assert duration(None) == "–" and duration(math.nan) == "–"


def test_the_report_of_a_real_sweep_has_the_section(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    study_dir = smoke_dir(tmp_path_factory.getbasetemp())
    assert main(["report", str(study_dir), "--out", str(tmp_path), "--no-reruns"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Cost of this study") < md.index("## Protocol")
    assert "Training: 9 finished trials" in md
    assert "reading the study " in md and "reading the study not measured" not in md
    assert "Planning: at this study's measured rates" in md


def _outcome(seconds: float) -> RerunOutcome:
    return RerunOutcome("sgd", "SGD", None, 0, 0, 1, "k", 0.1, None, seconds, [2.3, 0.1])
