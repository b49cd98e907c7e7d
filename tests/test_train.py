"""run_trial: reproducibility, divergence, histograms, the learning-rate schedule, validation.

Short trials (≤ 40 steps) on real MNIST; whole-epoch trainings are marked slow.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import kfaclab.train.loop as loop
from kfaclab.data import load_dataset
from kfaclab.errors import UsageError
from kfaclab.train import eval_points, lr_schedule, run_trial, steps_per_epoch, total_steps
from kfaclab.train.build import build_model, seeded
from kfaclab.train.observe import GradHistogram
from kfaclab.train.schedule import batch_indices
from kfaclab.trial_types import HistogramBins, TrialConfig, TrialResult


def _config(mnist_dir: Path, **overrides: Any) -> TrialConfig:
    base: dict[str, Any] = dict(
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        steps=30,
        data_dir=str(mnist_dir),
        histogram_steps=(0, 10, 29),
        eval_steps=(0, 15),
    )
    base.update(overrides)
    return TrialConfig(**base)


def _without_time(result: TrialResult) -> dict[str, Any]:
    out = result.to_dict()
    out.pop("seconds")
    return out


# --- reproducibility -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"optimizer": "kfac", "damping": 0.1, "inverse_every": 5},
        {"optimizer": "kfac", "damping": 0.1, "fisher": "mc", "damping_form": "factored"},
    ],
    ids=["sgd", "kfac", "kfac-mc-factored"],
)
def test_seeded_rerun_is_bitwise_equal(mnist_dir: Path, overrides: dict[str, Any]) -> None:
    config = _config(mnist_dir, **overrides)
    first, second = run_trial(config), run_trial(config)
    assert _without_time(first) == _without_time(second)  # floats compared exactly
    assert first.status == "ok" and first.steps_done == 30 and len(first.step_losses) == 30
    other = run_trial(dataclasses.replace(config, seed=1))
    assert other.step_losses != first.step_losses


@pytest.mark.parametrize("optimizer", ["sgd", "kfac"])
def test_observation_does_not_change_the_trajectory(mnist_dir: Path, optimizer: str) -> None:
    observed = run_trial(_config(mnist_dir, optimizer=optimizer, damping=0.1, inverse_every=5))
    plain = run_trial(dataclasses.replace(observed.config, histogram_steps=(), eval_steps=None))
    assert observed.step_losses == plain.step_losses and observed.value == plain.value
    assert not plain.histograms and not plain.curvature and len(plain.evals) == 1


def test_sgd_trial_is_the_textbook_loop_bitwise(mnist_dir: Path) -> None:
    """Oracle: the same batches through torch.optim.SGD's per-parameter loop (foreach=False),
    written out here; run_trial uses the multi-tensor kernels and must not differ by one bit."""
    config = _config(mnist_dir, steps=25, lr_decay=0.3, histogram_steps=(), eval_steps=())
    result = run_trial(config)
    data = load_dataset(config.dataset, config.data_dir)
    with seeded(config.seed, torch.device("cpu")):
        model = build_model(config, torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, foreach=False)
        generator = torch.Generator().manual_seed(config.seed)
        lrs = lr_schedule(config.lr, config.lr_decay, config.steps or 0)
        losses = []
        batches = batch_indices(len(data.train_y), 128, 25, generator, torch.device("cpu"))
        for idx, lr in zip(batches, lrs, strict=True):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            losses.append(loss.item())
            loss.backward()
            opt.step()
    assert result.step_losses == losses


def test_trial_leaves_the_global_rng_alone(mnist_dir: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_trial(_config(mnist_dir, steps=3))
    assert torch.equal(torch.rand(3), expected)


# --- divergence ------------------------------------------------------------------------------


def test_huge_learning_rate_diverges_without_raising(mnist_dir: Path) -> None:
    result = run_trial(_config(mnist_dir, lr=1e4, steps=40))
    assert result.status == "diverged"
    assert result.value == math.inf
    assert result.diverged_at is not None and result.diverged_at < 40
    assert result.steps_done == result.diverged_at
    # The offending loss is kept as the last entry: one more than the steps done.
    assert len(result.step_losses) == result.steps_done + 1
    assert not result.step_losses[-1] <= result.config.divergence_loss
    assert all(int(s) <= result.diverged_at for s in result.histograms)
    # The record survives JSON (inf/nan are encoded) and reads back equal.
    back = TrialResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.value == math.inf and back.status == "diverged"


def test_kfac_with_tiny_damping_and_huge_lr_diverges(mnist_dir: Path) -> None:
    result = run_trial(_config(mnist_dir, optimizer="kfac", damping=1e-5, lr=100.0))
    assert result.status == "diverged" and result.value == math.inf
    assert len(result.damping_trace) == result.steps_done


# --- observation -----------------------------------------------------------------------------


def test_histograms_share_bins_and_count_every_parameter(mnist_dir: Path) -> None:
    sgd = run_trial(_config(mnist_dir))
    kfac = run_trial(_config(mnist_dir, optimizer="kfac", damping=1.0, seed=5))
    for result in (sgd, kfac):
        assert sorted(result.histograms) == ["0", "10", "29"]
        for per_layer in result.histograms.values():
            assert list(per_layer) == ["fc1", "fc2", "fc3", "fc4", "fc5", "fc6"]
            sizes = [784 * 100 + 100] + [100 * 100 + 100] * 4 + [100 * 10 + 10]
            assert [sum(c) for c in per_layer.values()] == sizes
            assert all(len(c) == HistogramBins().n_bins + 2 for c in per_layer.values())
    # Identical bins: both trials used the config's fixed HistogramBins.
    assert sgd.config.histogram_bins == kfac.config.histogram_bins
    assert sorted(kfac.curvature) == ["0", "10", "29"]
    assert set(kfac.curvature["10"]) == {"fc1", "fc2", "fc3", "fc4", "fc5", "fc6"}
    assert kfac.damping_trace == [1.0] * 30 and not sgd.damping_trace
    assert kfac.counters and not sgd.counters


def test_histogram_slots_follow_the_documented_layout() -> None:
    bins = HistogramBins(log10_min=-4.0, log10_max=0.0, n_bins=4)  # edges 1e-4, 1e-3, …, 1
    layer = nn.Linear(3, 2)
    # squared: 0 and 1e-10 (underflow), 2e-4 and 5e-4 (bin [1e-4, 1e-3)), 2e-3 (next bin),
    # 1 (= 10**log10_max: overflow), NaN and 4 (overflow). Values sit away from the edges, where
    # float32 rounding of the gradient would decide the bin.
    layer.weight.grad = torch.tensor([[0.0, 2e-4**0.5, 5e-4**0.5], [2e-3**0.5, 1.0, math.nan]])
    layer.bias.grad = torch.tensor([1e-5, 2.0])
    counts = GradHistogram({"fc": layer}, bins)()["fc"]
    assert counts == [2, 2, 1, 0, 0, 3]
    assert sum(counts) == 8


def test_eval_points_default_to_the_last_step(mnist_dir: Path) -> None:
    assert eval_points(None, 469) == [469]
    assert eval_points((0, 100, 500), 469) == [0, 100, 469]
    result = run_trial(_config(mnist_dir, steps=20, eval_steps=(0, 10, 99)))
    assert [e.step for e in result.evals] == [0, 10, 20]
    assert result.value == result.evals[-1].train_loss
    assert result.evals[0].train_loss == pytest.approx(math.log(10), abs=0.1)  # initial ≈ ln 10
    assert 0.0 <= result.final_test_accuracy <= 1.0


# --- length, batches, schedule ---------------------------------------------------------------


def test_one_epoch_keeps_the_partial_last_batch() -> None:
    assert steps_per_epoch(60000, 128) == 469
    assert total_steps(TrialConfig(), 60000) == 469
    assert total_steps(TrialConfig(epochs=2), 60000) == 938
    assert total_steps(TrialConfig(steps=7), 60000) == 7
    batches = list(
        batch_indices(1000, 128, 9, torch.Generator().manual_seed(0), torch.device("cpu"))
    )
    assert [len(b) for b in batches] == [128] * 7 + [104, 128]  # the 9th starts a new epoch
    assert sorted(torch.cat(batches[:8]).tolist()) == list(range(1000))


def test_decay_schedule_hits_its_endpoints() -> None:
    lr, alpha, T = 0.1, 0.2, 469
    lrs = lr_schedule(lr, alpha, T)
    assert len(lrs) == T
    assert lrs[0] == lr
    assert lrs[-1] == pytest.approx(lr * (1 - (1 - alpha) * (T - 1) / T))
    # α·η₀ is where the line ends at t = T, one step past the last update.
    assert 2 * lrs[-1] - lrs[-2] == pytest.approx(alpha * lr)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lr_schedule(lr, 1.0, 5) == [lr] * 5


def test_run_trial_sets_the_scheduled_lr_each_step(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.optim.Optimizer] = []
    real = loop.build_optimizer

    def spy(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
        seen.append(real(config, model))
        return seen[-1]

    monkeypatch.setattr(loop, "build_optimizer", spy)
    used: list[float] = []
    config = _config(mnist_dir, steps=10, lr=0.2, lr_decay=0.0)
    run_trial(  # the autograd path (an SGD trial of the MLP is otherwise FusedSGD's)
        config,
        progress=lambda done, total, loss: used.append(seen[0].param_groups[0]["lr"]),
        fused=False,
    )
    assert used == lr_schedule(0.2, 0.0, 10)
    assert used[0] == 0.2 and used[-1] == pytest.approx(0.02)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1.0}, "lr must be > 0, got -1.0"),
        ({"lr_decay": 1.5}, "lr_decay must be in [0, 1], got 1.5"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"optimizer": "kfac", "damping": -1.0}, "damping must be > 0, got -1.0"),
        ({"optimizer": "adam"}, "optimizer must be one of sgd, kfac, got 'adam'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"histogram_steps": (-1,)}, "histogram_steps must be a list of integers >= 0"),
    ],
)
def test_invalid_config_is_a_usage_error_before_any_work(
    overrides: dict[str, Any], message: str
) -> None:
    # data_dir does not exist: the error must come from validation, not from loading data.
    config = TrialConfig(**{"data_dir": "/nonexistent", **overrides})
    with pytest.raises(UsageError) as info:
        run_trial(config)
    assert message in str(info.value)


def test_damping_strategy_that_needs_the_loss_after_the_step(mnist_dir: Path) -> None:
    spec = {"kind": "levenberg_marquardt", "initial": 1.0}
    result = run_trial(_config(mnist_dir, optimizer="kfac", damping=spec, steps=25))
    assert result.status == "ok"
    assert len(result.damping_trace) == 25
    assert len(set(result.damping_trace)) > 1  # λ moved: the closure's loss reached the strategy


# --- whole epochs on real MNIST (slow) -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
        {"optimizer": "kfac", "damping": 0.1, "lr": 0.02, "momentum": 0.9},
        {"optimizer": "kfac", "damping": 1.0, "lr": 0.05, "momentum": 0.9},
    ],
    ids=["sgd", "kfac-lambda0.1", "kfac-lambda1"],
)
def test_one_epoch_reaches_a_low_training_loss(mnist_dir: Path, overrides: dict[str, Any]) -> None:
    # Measured (1 thread, CPU): SGD 0.179; K-FAC λ=0.1 0.205-0.223, λ=1 0.165. λ=1e-2 diverges in
    # 60 steps at lr 0.01–0.05 (momentum 0.9) and lr 0.02 (no momentum).
    config = TrialConfig(data_dir=str(mnist_dir), activation="relu", batch_size=128, **overrides)
    result = run_trial(config)
    assert result.status == "ok" and result.steps_done == 469
    assert result.value < 0.3, result.value
    assert result.final_test_accuracy > 0.9
