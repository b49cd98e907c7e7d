"""Weight initialisation (models.initialise, model.init): each law against its formula, and
"torch" bitwise the models built before the option existed."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from kfaclab.errors import UsageError
from kfaclab.models import build_cnn, build_mlp
from kfaclab.study.protocol import parse_protocol
from kfaclab.train.build import build_model, seeded
from kfaclab.trial_types import TrialConfig


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def test_torch_init_is_bitwise_the_plain_nn_linear_stack() -> None:
    # The oracle: nn.Linear layers constructed one after another from the same seed, which is
    # what build_mlp did before `init` existed (activations draw no random numbers).
    torch.manual_seed(7)
    model = build_mlp(depth=6, width=100, activation="relu", init="torch")
    torch.manual_seed(7)
    sizes = [784, 100, 100, 100, 100, 100, 10]
    plain = [nn.Linear(sizes[i], sizes[i + 1]) for i in range(6)]
    for ours, ref in zip(_linears(model), plain, strict=True):
        assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
        bound = 1 / math.sqrt(ref.in_features)  # PyTorch's U(±1/sqrt(fan_in))
        assert float(ours.weight.detach().abs().max()) <= bound
    torch.manual_seed(7)
    assert all(
        torch.equal(a, b)
        for a, b in zip(build_mlp().state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_he_weights_are_normal_with_variance_two_over_fan_in() -> None:
    torch.manual_seed(0)
    model = build_mlp(depth=2, width=1000, activation="relu", init="he")
    fc1 = model.fc1
    w = fc1.weight.detach().double().flatten().numpy()  # 784 000 draws
    std = math.sqrt(2.0 / 784)
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.005)  # sampling error ~0.08%
    assert stats.kstest(w / std, "norm").pvalue > 1e-3
    assert torch.count_nonzero(fc1.bias) == 0
    assert model.fc2.weight.std().item() == pytest.approx(math.sqrt(2.0 / 1000), rel=0.05)


def test_glorot_weights_are_uniform_on_the_glorot_bound() -> None:
    torch.manual_seed(1)
    model = build_mlp(depth=2, width=1000, activation="tanh", init="glorot")
    w = model.fc1.weight.detach().double().flatten().numpy()
    bound = math.sqrt(6.0 / (784 + 1000))
    assert w.max() <= bound and w.min() >= -bound
    assert w.max() > 0.999 * bound and w.min() < -0.999 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.005)
    assert stats.kstest(w, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    assert torch.count_nonzero(model.fc1.bias) == 0


def test_conv_fans_count_the_receptive_field() -> None:
    torch.manual_seed(2)
    model = build_cnn(init="he")
    conv2 = model.conv2  # 6 → 16 channels, 5×5: fan_in = 150
    assert conv2.weight.std().item() == pytest.approx(math.sqrt(2.0 / 150), rel=0.1)
    torch.manual_seed(2)
    glorot = build_cnn(init="glorot")
    bound = math.sqrt(6.0 / (6 * 25 + 16 * 25))
    assert glorot.conv2.weight.abs().max().item() <= bound
    assert glorot.conv2.weight.abs().max().item() > 0.99 * bound


def test_he_keeps_relu_forward_scale_where_torch_shrinks_it() -> None:
    # The reason for the option (review M7e): PyTorch's default has fan_in·Var(W) = 1/3, so a
    # ReLU layer scales the second moment by ~1/6; He's 2/fan_in keeps it ~1.
    x = torch.randn(4096, 784, dtype=torch.float64)
    scales = {}
    for init in ("torch", "he"):
        torch.manual_seed(3)
        model = build_mlp(depth=6, width=100, activation="relu", init=init).double()
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            h5 = model[:-1](x)  # the input of fc6
            for m in _linears(model):
                m.bias.zero_()
            h5_no_bias = model[:-1](x)
        scales[init] = (h5_no_bias.pow(2).mean() / h1.pow(2).mean()).item()
        assert h5.isfinite().all()
    assert scales["he"] == pytest.approx(1.0, rel=0.5)
    assert scales["torch"] < (1 / 6) ** 3  # four more layers, each ~1/6


def test_trial_config_and_protocol_carry_init() -> None:
    config = TrialConfig(optimizer="sgd", init="glorot", width=8, depth=3)
    with seeded(5, torch.device("cpu")):
        model = build_model(config, torch.device("cpu"))
    assert torch.count_nonzero(model.fc1.bias) == 0
    assert TrialConfig.from_dict(config.to_dict()).init == "glorot"
    legacy = {k: v for k, v in TrialConfig().to_dict().items() if k != "init"}
    assert TrialConfig.from_dict(legacy).init == "torch"  # records stored before the option


def _protocol(model: dict[str, object]) -> dict[str, object]:
    return {
        "protocol": {"name": "p"},
        "data": {"dataset": "mnist"},
        "model": {"depth": 2, "width": 4, **model},
        "training": {"batch_size": 8, "steps": 2},
        "cells": {"lambdas": [1.0]},
        "search": {
            "n_trials": 1,
            "lr": {"low": 0.1, "high": 1.0},
            "lr_decay": {"low": 0.0, "high": 1.0},
            "momentum": {"low": 0.0, "high": 0.5},
        },
    }


def test_protocol_model_init_is_checked() -> None:
    assert parse_protocol(_protocol({})).model.init == "torch"
    assert parse_protocol(_protocol({"init": "he"})).model.init == "he"
    with pytest.raises(
        UsageError, match=r"model.init must be one of torch, he, glorot, got 'xavier'"
    ):
        parse_protocol(_protocol({"init": "xavier"}))
    with pytest.raises(UsageError, match="init must be one of"):
        build_mlp(init="lecun")


def test_rerun_cache_keys_of_default_init_configs_are_unchanged() -> None:
    """The reruns cached beside existing reports were keyed before `init` existed: a "torch"
    config keeps its old key (the old formula, written out here), a "he" one gets a new key."""
    import dataclasses
    import hashlib
    import json

    from kfaclab.analysis.summary.reruns import rerun_key

    config = TrialConfig(lr=0.3, damping=1e-2)
    old = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("seed", "init", "lr_per_damping")
    }
    text = json.dumps({"study": "s", "config": old}, sort_keys=True, default=repr)
    assert rerun_key("s", config) == hashlib.sha256(text.encode()).hexdigest()[:24]
    he = dataclasses.replace(config, init="he")
    assert rerun_key("s", he) != rerun_key("s", config)
