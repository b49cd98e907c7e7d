"""A population of trials stepped as one batched model against each trial run alone.

The oracle is ``run_trial`` (the fused K-FAC step, or torch's SGD through autograd), one trial at
a time. A population computes the same mathematics in other groupings (batched products, layer 1
in its eigenbasis, full-matrix eigh), so in float64 every number a trial records — minibatch
losses, evaluations, curvature diagnostics — must agree to 1e-12 relative, and what is discrete
— status, step of divergence, histogram counts, counters, λ trace — exactly. Trials run on each
available device (the ``device`` fixture).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kfaclab.errors import UsageError
from kfaclab.train import run_trial
from kfaclab.train.population import Population, population_unsupported, run_population
from kfaclab.train.population_kfac import eigh_on_cpu
from kfaclab.trial_types import TrialConfig, TrialResult

REL = 1e-12


def _config(mnist_dir: Path, device: torch.device, **overrides: Any) -> TrialConfig:
    base: dict[str, Any] = dict(
        optimizer="kfac",
        lr=0.01,
        lr_decay=0.5,
        momentum=0.9,
        damping=1e-2,
        steps=25,
        depth=3,
        width=16,
        inverse_every=10,
        histogram_steps=(3, 12),
        eval_steps=(0, 5),
        dtype="float64",
        data_dir=str(mnist_dir),
        device=str(device),
    )
    base.update(overrides)
    return TrialConfig(**base)


def _close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-300)


def assert_equivalent(alone: TrialResult, batched: TrialResult) -> None:
    assert batched.config == alone.config
    assert (batched.status, batched.diverged_at) == (alone.status, alone.diverged_at)
    assert batched.steps_done == alone.steps_done
    assert len(batched.step_losses) == len(alone.step_losses)
    for a, b in zip(alone.step_losses, batched.step_losses, strict=True):
        assert _close(a, b), (alone.step_losses, batched.step_losses)
    assert _close(alone.value, batched.value)
    assert [e.step for e in batched.evals] == [e.step for e in alone.evals]
    for e, f in zip(alone.evals, batched.evals, strict=True):
        assert _close(e.train_loss, f.train_loss) and _close(e.test_loss, f.test_loss)
        assert e.test_accuracy == f.test_accuracy
    assert batched.histograms == alone.histograms
    assert batched.damping_trace == alone.damping_trace
    assert batched.counters == alone.counters
    assert batched.curvature.keys() == alone.curvature.keys()
    for step, layers in alone.curvature.items():
        assert batched.curvature[step].keys() == layers.keys()
        for name, numbers in layers.items():
            for key, value in numbers.items():
                got = batched.curvature[step][name][key]
                # eigenvalues that are 0 alone may come out ~1e-18 from a full-matrix eigh
                assert _close(value, got) or abs(value - got) < 1e-15, (step, name, key)
    assert batched.seconds > 0


def _population(mnist_dir: Path, device: torch.device, optimizer: str) -> list[TrialConfig]:
    """Four trials: two ordinary, one diverging within steps, one with another seed (its own
    cohort); momentum 0 and > 0; several λ (K-FAC) and learning rates."""
    base = _config(mnist_dir, device, optimizer=optimizer)
    lrs = (0.01, 0.02, 0.3) if optimizer == "kfac" else (0.1, 0.2, 0.05)
    return [
        dataclasses.replace(base, lr=lrs[0]),
        dataclasses.replace(base, lr=lrs[1], damping=0.1, momentum=0.0, lr_decay=1.0),
        dataclasses.replace(base, lr=300.0, damping=1e-3, momentum=0.5),
        dataclasses.replace(base, seed=1, lr=lrs[2], damping=1.0, momentum=0.3),
    ]


@pytest.mark.parametrize("optimizer", ["kfac", "sgd"])
def test_a_population_equals_its_trials_run_alone(
    mnist_dir: Path, device: torch.device, optimizer: str
) -> None:
    configs = _population(mnist_dir, device, optimizer)
    batched = run_population(configs)
    alone = [run_trial(c) for c in configs]
    assert [r.status for r in alone] == ["ok", "ok", "diverged", "ok"]  # each path is exercised
    assert alone[2].diverged_at is not None and alone[2].diverged_at < 10
    for a, b in zip(alone, batched, strict=True):
        assert_equivalent(a, b)


@pytest.mark.parametrize(("activation", "depth"), [("tanh", 2), ("identity", 4)])
def test_other_chains_equal_their_trials_run_alone(
    mnist_dir: Path, activation: str, depth: int
) -> None:
    base = _config(mnist_dir, torch.device("cpu"), activation=activation, depth=depth, steps=15)
    configs = [
        dataclasses.replace(base, lr=0.002, momentum=0.5),
        dataclasses.replace(base, lr=0.003, damping=0.1, momentum=0.0),
    ]
    for alone, batched in zip(
        [run_trial(c) for c in configs], run_population(configs), strict=True
    ):
        assert alone.status == "ok"
        assert_equivalent(alone, batched)


def test_a_slot_freed_by_divergence_takes_a_new_trial(mnist_dir: Path) -> None:
    """A trial added while others run (its own cohort, the same seed: layer 1's bases are
    shared between the cohorts) gives what it gives alone, and so do the others."""
    device = torch.device("cpu")
    steady = _config(mnist_dir, device)
    doomed = dataclasses.replace(steady, lr=300.0, damping=1e-3)
    late = dataclasses.replace(steady, lr=0.05, damping=0.3, momentum=0.5)
    population = Population()
    population.add(steady, "steady")
    population.add(doomed, "doomed")
    finished: dict[Any, TrialResult] = {}
    steps = 0
    while "doomed" not in finished:
        finished.update(population.step())
        steps += 1
    assert len(population) == 1 and steps < 10
    population.add(late, "late")  # into the freed slot, at step `steps` of the others
    finished.update(population.run())
    for tag, config in (("steady", steady), ("doomed", doomed), ("late", late)):
        assert_equivalent(run_trial(config), finished[tag])


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_a_trial_that_outlives_the_recorded_stream_computes_on(
    mnist_dir: Path, budget: int
) -> None:
    """Layer 1's shared work recorded by a cohort that diverges after one inversion (budget
    1 GiB), or not recorded at all (budget 0): a later cohort of the same seed takes what is
    there and computes the rest, replaying its batches onto the last factor."""
    device = torch.device("cpu")
    doomed = _config(mnist_dir, device, lr=300.0, damping=1e-3)
    late = _config(mnist_dir, device, lr=0.05, damping=0.3, momentum=0.5)
    population = Population()
    population.streams.max_bytes = budget
    population.add(doomed, "doomed")
    finished = dict(population.step())
    while "doomed" not in finished:
        finished.update(population.step())
    population.add(late, "late")
    finished.update(population.run())
    recorded = population.streams.stream(late.seed)
    assert sorted(recorded.bases) == ([] if budget == 0 else [0, 10, 20])
    assert population.streams.nbytes <= budget
    for tag, config in (("doomed", doomed), ("late", late)):
        assert_equivalent(run_trial(config), finished[tag])


def test_factors_decomposed_on_the_host_give_the_same_trials(mnist_dir: Path) -> None:
    """``eigh_on_cpu`` (for GPUs with a slow batched eigh): the batch split over host threads
    decomposes each factor as the batched call does, bitwise on the CPU."""
    rows = torch.randn(37, 40, 12, dtype=torch.float64)
    factors = rows.transpose(1, 2) @ rows
    for got, want in zip(eigh_on_cpu(factors), torch.linalg.eigh(factors), strict=True):
        assert torch.equal(got, want)
    configs = _population(mnist_dir, torch.device("cpu"), "kfac")[:2]
    population = Population(eigh_on_cpu=True)
    for i, config in enumerate(configs):
        population.add(config, i)
    finished = dict(population.run())
    for i, config in enumerate(configs):
        assert_equivalent(run_trial(config), finished[i])


def test_population_refuses_what_it_does_not_compute(mnist_dir: Path) -> None:
    base = _config(mnist_dir, torch.device("cpu"))
    for change, field in (
        ({"kl_clip": 1e-3}, "kl_clip"),
        ({"damping": {"kind": "levenberg_marquardt", "initial": 1.0}}, "damping"),
        ({"fisher": "mc"}, "fisher"),
        ({"factor_init": "identity"}, "factor_init"),
        ({"model": "cnn"}, "model"),
    ):
        reason = population_unsupported(dataclasses.replace(base, **change))
        assert reason is not None and reason.startswith(field)
        with pytest.raises(UsageError, match=f"^{field} must be"):
            Population().add(dataclasses.replace(base, **change))
    population = Population()
    population.add(base)
    with pytest.raises(UsageError, match="batch_size"):
        population.add(dataclasses.replace(base, batch_size=64))
    population.add(dataclasses.replace(base, lr=0.3, damping=0.5, seed=4))  # per-trial fields


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_population_without_cuda_is_a_one_line_error(mnist_dir: Path) -> None:
    config = _config(mnist_dir, torch.device("cuda"))
    with pytest.raises(UsageError, match=r"^device must be available, got 'cuda' \(no CUDA"):
        run_population([config])


@pytest.mark.slow
def test_a_reference_sized_population_equals_its_trials(mnist_dir: Path) -> None:
    """The protocol's MLP (784-100×5-10, ReLU), 30 steps in float64, three trials."""
    base = _config(mnist_dir, torch.device("cpu"), depth=6, width=100, steps=30)
    configs = [
        dataclasses.replace(base, lr=0.02, damping=0.1),
        dataclasses.replace(base, lr=0.001, damping=1e-3, momentum=0.5),
        dataclasses.replace(base, lr=1.0, damping=10.0, momentum=0.0, lr_decay=0.1),
    ]
    for alone, batched in zip(
        [run_trial(c) for c in configs], run_population(configs), strict=True
    ):
        assert alone.status == "ok"
        assert_equivalent(alone, batched)


def _smoke_protocol(n_trials: int, steps: int) -> Any:
    from cli_helpers import SMOKE, smoke_top1
    from kfaclab.study.protocol import parse_protocol

    raw = smoke_top1("pop", n_trials)
    raw["training"].update({"steps": steps, "eval_steps": [steps], "histogram_steps": [2]})
    return parse_protocol(raw, base_dir=SMOKE.parent)


def _stored(folder: Path) -> dict[str, list[tuple[dict[str, float], float, str]]]:
    import optuna
    from optuna.trial import TrialState

    from kfaclab.study.storage import StorageSpec, open_storage

    storage = open_storage(StorageSpec(folder=folder), create=False)
    out = {}
    for summary in storage.get_all_studies():
        if not summary.study_name.startswith("pop/"):
            continue  # the protocol's index
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        assert all(t.state == TrialState.COMPLETE for t in trials)
        out[summary.study_name] = [
            (t.params, float(t.value or 0.0), str(t.user_attrs.get("status", "ok"))) for t in trials
        ]
    return out


def test_a_population_sweep_stores_the_sequential_sweeps_trials(tmp_path: Path) -> None:
    """SGD and two λ cells, 2 trials each (TPE from the second): the same proposals in the same
    order per cell, the same statuses, values equal up to float32 rounding (sweeps train in
    float32; a near-divergent λ = 1e-3 trial amplifies a rounding difference to ~2e-3 in 6
    steps, so the values are compared to 1e-2; the float64 tests above bound the mathematics)."""
    from kfaclab.study.runner import run_sweep
    from kfaclab.study.storage import StorageSpec

    protocol = _smoke_protocol(n_trials=2, steps=6)
    quiet = open(tmp_path / "table.txt", "w")  # noqa: SIM115 (closed below)
    assert run_sweep(protocol, StorageSpec(folder=tmp_path / "seq"), stream=quiet) == 0
    spec = StorageSpec(folder=tmp_path / "pop")
    assert run_sweep(protocol, spec, stream=quiet, population=True) == 0
    quiet.close()
    sequential, batched = _stored(tmp_path / "seq"), _stored(tmp_path / "pop")
    assert sequential.keys() == batched.keys() and len(sequential) == 3
    for name, trials in sequential.items():
        assert [t[0] for t in batched[name]] == [t[0] for t in trials], name
        assert [t[2] for t in batched[name]] == [t[2] for t in trials], name
        for (_, a, _), (_, b, _) in zip(trials, batched[name], strict=True):
            assert b == pytest.approx(a, rel=1e-2), name


def test_the_sweep_command_steps_populations_by_default_only_on_a_gpu() -> None:
    from kfaclab.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["sweep", "p.toml", "--out", "d"]).population is None  # cuda: on, cpu: off
    assert parse(["sweep", "p.toml", "--out", "d", "--population"]).population is True
    assert parse(["sweep", "p.toml", "--out", "d", "--no-population"]).population is False


def test_a_population_worker_stops_after_its_round_and_counts_exactly(tmp_path: Path) -> None:
    """max_trials caps a round; a stop while a round runs lets it finish (told, not left
    RUNNING), as Worker finishes its one trial."""
    import threading

    from optuna.trial import TrialState

    from kfaclab.study.population_worker import PopulationWorker
    from kfaclab.study.storage import StorageSpec

    protocol = _smoke_protocol(n_trials=2, steps=6)
    spec = StorageSpec(folder=tmp_path)
    assert PopulationWorker(protocol, spec).run(max_trials=2) == 2
    worker = PopulationWorker(protocol, spec)
    threading.Timer(0.5, worker.stop.set).start()
    ran = worker.run()
    states = [
        t.state for study in worker.studies.values() for t in study.get_trials(deepcopy=False)
    ]
    assert states.count(TrialState.COMPLETE) == 2 + ran
    assert not {TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL} & set(states)
    assert ran in (0, 3)  # a round (one trial of each of the 3 cells) is never cut short


def test_several_trials_of_a_cell_per_round(tmp_path: Path) -> None:
    """per_cell = 2: one round runs both trials of each of the 3 cells (6 in one population
    step), each cell gets exactly its 2, with 2 different proposals."""
    from optuna.trial import TrialState

    from kfaclab.study.population_worker import PopulationWorker
    from kfaclab.study.storage import StorageSpec

    protocol = _smoke_protocol(n_trials=2, steps=6)
    worker = PopulationWorker(protocol, StorageSpec(folder=tmp_path), per_cell=2)
    assert worker.run() == 6
    for study in worker.studies.values():
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        assert trials[0].params != trials[1].params


def test_per_cell_needs_a_population(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kfaclab.cli.main import main

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"
    out = tmp_path / "o"
    assert main(["sweep", str(smoke), "--out", str(out), "--per-cell", "4"]) == 2
    error = "--per-cell must be 1 without --population, got 4"
    assert capsys.readouterr().err.strip().endswith(error)
    assert not out.exists()  # refused before anything is stored
