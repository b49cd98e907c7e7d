"""lr_per_damping: an adaptive strategy's step size follows its λ_t (issue 26, point 5).

Oracles: a strategy whose λ never moves must give the trial of that fixed λ with lr = (lr/λ)·λ
(the same arithmetic up to the rounding of one product per step); a moving strategy's step must
receive exactly the scheduled lr/λ times the λ it reports for that step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kfaclab.analysis.summary.reruns import rerun_key
from kfaclab.errors import UsageError
from kfaclab.study.cells import build_cells
from kfaclab.study.protocol import parse_protocol
from kfaclab.study.sweep import trial_config
from kfaclab.train import fused, lr_schedule, run_trial
from kfaclab.trial_types import TrialConfig


def _config(mnist_dir: Path, **overrides: Any) -> TrialConfig:
    base: dict[str, Any] = dict(
        optimizer="kfac",
        lr=0.3,
        lr_decay=0.4,
        momentum=0.5,
        steps=30,
        inverse_every=5,
        histogram_steps=(),
        eval_steps=(),
        dtype="float64",
        data_dir=str(mnist_dir),
    )
    base.update(overrides)
    return TrialConfig(**base)


def test_a_constant_strategy_equals_the_fixed_lambda_searched_as_lr_over_lambda(
    mnist_dir: Path,
) -> None:
    lam, ratio = 0.05, 0.3
    still = {"kind": "exponential_decay", "start": lam, "end": lam, "steps": 30}
    coupled = run_trial(_config(mnist_dir, lr=ratio, damping=still, lr_per_damping=True))
    fixed = run_trial(_config(mnist_dir, lr=ratio * lam, damping=lam))
    assert coupled.status == fixed.status == "ok"
    assert coupled.step_losses == pytest.approx(fixed.step_losses, rel=1e-9)
    # and it is not what the same numbers give uncoupled (the test can fail)
    uncoupled = run_trial(_config(mnist_dir, lr=ratio, damping=still))
    assert uncoupled.step_losses[5:] != pytest.approx(fixed.step_losses[5:], rel=1e-3)


def test_a_moving_strategy_steps_with_lr_over_lambda_times_its_lambda(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    real = fused.FusedKFAC.step

    def spy(self: fused.FusedKFAC, lr: float) -> None:
        seen.append(lr)
        real(self, lr)

    monkeypatch.setattr(fused.FusedKFAC, "step", spy)
    moving = {"kind": "exponential_decay", "start": 1.0, "end": 1e-2, "steps": 30}
    result = run_trial(_config(mnist_dir, lr=0.2, damping=moving, lr_per_damping=True))
    lrs = lr_schedule(0.2, 0.4, 30)
    assert len(result.damping_trace) == len(seen) == 30
    assert seen == [r * lam for r, lam in zip(lrs, result.damping_trace, strict=True)]
    assert result.damping_trace[0] > 10 * result.damping_trace[-1]  # λ really moved


def test_lr_per_damping_needs_kfac(mnist_dir: Path) -> None:
    with pytest.raises(UsageError, match="lr_per_damping needs optimizer kfac"):
        run_trial(_config(mnist_dir, optimizer="sgd", lr_per_damping=True))


def _protocol(scale: str | None) -> dict[str, Any]:
    search: dict[str, Any] = {
        "n_trials": 3,
        "lr": {"low": 1e-2, "high": 1.0, "log": True},
        "lr_scale": "lambda",
        "lr_decay": {"low": 0.0, "high": 1.0},
        "momentum": {"low": 0.0, "high": 0.9},
    }
    if scale is not None:
        search["strategy_lr_scale"] = scale
    return {
        "protocol": {"name": "coupled", "description": "test"},
        "data": {"dataset": "mnist"},
        "model": {"depth": 3, "width": 20, "activation": "relu"},
        "training": {"batch_size": 64, "steps": 10},
        "cells": {
            "sgd": True,
            "lambdas": [0.1],
            "strategies": [
                {
                    "name": "decay",
                    "kind": "exponential_decay",
                    "steps": 10,
                    "search": {"start": {"low": 0.1, "high": 1.0, "log": True}},
                    "end": 0.01,
                }
            ],
        },
        "search": search,
    }


@pytest.mark.parametrize(("scale", "coupled"), [(None, False), ("none", False), ("damping", True)])
def test_strategy_lr_scale_couples_only_the_strategy_cells(
    scale: str | None, coupled: bool
) -> None:
    protocol = parse_protocol(_protocol(scale))
    params = {"lr": 0.5, "lr_decay": 1.0, "momentum": 0.0, "damping.start": 0.5}
    flags = {
        cell.damping_label: trial_config(protocol, cell, params, seed=0).lr_per_damping
        for cell in build_cells(protocol)
    }
    assert flags == {"sgd": False, "1e-01": False, "decay": coupled}


def test_an_unknown_strategy_lr_scale_names_the_allowed_values() -> None:
    with pytest.raises(UsageError, match=r"search\.strategy_lr_scale.*none.*damping"):
        parse_protocol(_protocol("lambda"))


def test_the_coupling_is_part_of_a_cached_rerun_key(mnist_dir: Path) -> None:
    # (the default leaves old keys as they were: tests/test_init.py)
    config = _config(mnist_dir)
    assert rerun_key("s", config) != rerun_key("s", _config(mnist_dir, lr_per_damping=True))
