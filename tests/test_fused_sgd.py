"""FusedSGD (run_trial's SGD path for build_mlp's model) against autograd + torch.optim.SGD.

FusedSGD calls the kernels autograd and torch's SGD call, on the same operands in the same
order, so a whole trial — losses, histograms, evaluations, divergence — must equal the autograd
path's bit for bit (tests/test_train.py also checks it against a hand-written torch SGD loop).
The batch size 100 is not a power of two on purpose: there (softmax − onehot)/B, the shared
backward's form, rounds differently from autograd's cross-entropy backward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kfaclab.data import load_dataset
from kfaclab.train import loop, run_trial
from kfaclab.train.fused_sgd import FusedSGD, sgd_fusable
from kfaclab.trial_types import TrialConfig, TrialResult


def _config(mnist_dir: Path, **overrides: Any) -> TrialConfig:
    base: dict[str, Any] = dict(
        optimizer="sgd",
        lr=0.05,
        lr_decay=0.3,
        momentum=0.9,
        steps=40,
        batch_size=100,
        histogram_steps=(3, 30),
        eval_steps=(20,),
        data_dir=str(mnist_dir),
    )
    base.update(overrides)
    return TrialConfig(**base)


def _assert_bitwise(a: TrialResult, b: TrialResult) -> None:
    assert (a.status, a.diverged_at, a.steps_done) == (b.status, b.diverged_at, b.steps_done)
    assert a.step_losses == b.step_losses
    assert a.evals == b.evals
    assert a.histograms == b.histograms
    assert a.value == b.value or (a.value != a.value and b.value != b.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"momentum": 0.0},
        {"activation": "tanh"},
        {"activation": "identity", "lr": 0.01},
        {"dtype": "float64"},
        {"init": "he", "depth": 3, "width": 40},
        {"batch_size": 128, "steps": None, "epochs": 1, "histogram_steps": (60,)},
        {"lr": 80.0},  # diverges: the same step, the same recorded losses
    ],
    ids=["relu", "no-momentum", "tanh", "identity", "float64", "he-narrow", "epoch", "diverges"],
)
def test_fused_sgd_trial_is_the_autograd_trial_bitwise(
    mnist_dir: Path, overrides: dict[str, Any]
) -> None:
    config = _config(mnist_dir, **overrides)
    fused, plain = run_trial(config, fused=True), run_trial(config, fused=False)
    _assert_bitwise(fused, plain)
    if overrides.get("lr") == 80.0:
        assert fused.status == "diverged"


def test_the_loop_runs_sgd_trials_of_the_mlp_by_hand(mnist_dir: Path) -> None:
    config = _config(mnist_dir)
    data = load_dataset(config.dataset, config.data_dir)
    trial = loop._Trial(config, data, torch.device("cpu"), True)
    assert isinstance(trial.steps, FusedSGD)
    assert not isinstance(loop._Trial(config, data, torch.device("cpu"), False).steps, FusedSGD)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, True),
        ({"optimizer": "kfac"}, False),
        ({"model": "cnn"}, False),
        ({"depth": 1}, False),
    ],
)
def test_sgd_fusable_only_for_sgd_on_the_mlp_chain(
    mnist_dir: Path, overrides: dict[str, Any], expected: bool
) -> None:
    assert sgd_fusable(_config(mnist_dir, **overrides)) is expected
