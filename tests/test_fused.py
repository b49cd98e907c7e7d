"""FusedKFAC (run_trial's fast K-FAC path) against the general KFAC optimizer, its oracle.

Whole trials are run both ways in float64 — forward with layer 1's pending correction, backward
by hand, stacked factors, inversions, the deferred rotation, momentum, histograms, curvature
diagnostics, evaluations — and must agree up to rounding. The two compute the same products in
different groupings, and K-FAC's small-λ dynamics amplify rounding over steps, so the tolerance
is relative 1e-9 over ~35 steps (a 1e-14 change of the learning rate moves the general path's
own losses by up to ~1e-8 on the chaotic tanh case, which is therefore run with a smaller lr).

Trials run on each available device (the ``device`` fixture, TrialConfig.device).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kfaclab.data import load_dataset
from kfaclab.optim import InputStreamCache
from kfaclab.train import build, loop, run_trial
from kfaclab.train.fused import FusedKFAC, fusable
from kfaclab.trial_types import TrialConfig, TrialResult
from rerun import assert_same, assert_same_float


def _config(mnist_dir: Path, **overrides: Any) -> TrialConfig:
    base: dict[str, Any] = dict(
        optimizer="kfac",
        lr=0.01,
        lr_decay=0.5,
        momentum=0.9,
        damping=1e-2,
        steps=35,
        inverse_every=10,
        histogram_steps=(3, 12, 20),
        eval_steps=(15,),
        dtype="float64",
        data_dir=str(mnist_dir),
    )
    base.update(overrides)
    return TrialConfig(**base)


def _assert_close(general: TrialResult, fused: TrialResult, rel: float = 1e-9) -> None:
    assert fused.status == general.status
    assert fused.diverged_at == general.diverged_at
    assert len(fused.step_losses) == len(general.step_losses)
    for a, b in zip(general.step_losses, fused.step_losses, strict=True):
        assert b == pytest.approx(a, rel=rel)
    assert [e.step for e in fused.evals] == [e.step for e in general.evals]
    for a, b in zip(general.evals, fused.evals, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=rel)
        assert b.test_loss == pytest.approx(a.test_loss, rel=rel)
        assert b.test_accuracy == a.test_accuracy
    assert fused.histograms == general.histograms
    assert fused.curvature.keys() == general.curvature.keys()
    for step, layers in general.curvature.items():
        assert fused.curvature[step].keys() == layers.keys()
        for name, numbers in layers.items():
            for key, value in numbers.items():
                other = fused.curvature[step][name][key]
                # A minimum eigenvalue is rounding noise near 0: compare it on the max's scale.
                scale = abs(numbers[key.replace("min", "max")]) if "min" in key else abs(value)
                assert abs(other - value) <= rel * scale + 1e-300, (step, name, key)
    assert fused.counters.keys() == general.counters.keys()
    for key, value in general.counters.items():  # counts exactly, the last KL factor ν to rel
        if key == "standard_form_steps":  # where each path could defer: speed, not mathematics
            continue
        assert fused.counters[key] == pytest.approx(value, rel=rel), key
    assert fused.damping_trace == general.damping_trace


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"momentum": 0.0, "damping": 1.0},
        {"activation": "tanh", "lr": 3e-3},
        {"activation": "identity", "lr": 1e-3},
        {"depth": 2},
        {"depth": 3, "width": 30, "lr": 1e-3, "inverse_every": 4},
        # The strategies, forms and profiles the fused path takes since it runs on the engine:
        {"damping": {"kind": "levenberg_marquardt", "initial": 1.0, "every": 3}},
        {"damping": {"kind": "exponential_decay", "start": 1.0, "end": 1e-2, "steps": 30}},
        {"damping": {"kind": "spectrum_relative", "c": 0.1}},
        {"fisher": "mc"},
        {"damping_form": "factored"},
        {"kl_clip": 1e-3, "lr": 0.1},
        {"factor_every": 2, "inverse_every": 5, "damping": 0.1},
        {
            "factor_init": "identity",
            "factor_every": 3,
            "inverse_every": 7,
            "eigen_floor": 1e-10,
            "kl_clip": 1e-3,
        },
        {
            "factor_init": "identity",
            "factor_every": 3,
            "inverse_every": 7,
            "eigen_floor": 1e-10,
            "fisher": "mc",
        },
    ],
    ids=[
        "relu",
        "no-momentum",
        "tanh",
        "identity",
        "depth-2",
        "narrow-depth-3",
        "levenberg-marquardt",
        "schedule",
        "spectrum-relative",
        "mc-fisher",
        "factored",
        "kl-clip",
        "factor-every-2",
        "popular-profile",
        "popular-noclip",
    ],
)
def test_fused_trial_equals_the_general_optimizer(
    mnist_dir: Path, overrides: Any, device: torch.device
) -> None:
    config = _config(mnist_dir, device=device.type, **overrides)
    assert fusable(config)
    fused = run_trial(config, fused=True)
    _assert_close(run_trial(config, fused=False), fused)
    constant = isinstance(config.damping, float)  # Levenberg–Marquardt steps need d itself
    if config.damping_form == "exact" and constant:
        # The fused step keeps layer 1's update rotated on every step, whatever the factor
        # start, schedule, Fisher or KL clip: it projects the batch itself where no stream
        # shares it, and takes a clip's dᵀ∇ from the rotated step.
        assert fused.counters["standard_form_steps"] == 0


def test_fused_trial_diverges_where_the_general_one_does(
    mnist_dir: Path, device: torch.device
) -> None:
    config = _config(mnist_dir, damping=1e-5, lr=1.0, momentum=0.9, device=device.type)
    general, fused = run_trial(config, fused=False), run_trial(config, fused=True)
    assert general.status == "diverged"
    assert math.isinf(fused.value)
    _assert_close(general, fused)


def test_without_the_shared_stream_the_fused_step_projects_its_own_batches(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    """A stream with no room records nothing: layer 1 then gets no shared projection (as in a
    long training past the budget). The general path preconditions it in standard coordinates;
    the fused one still defers, on projections of its own batches: the two agree."""
    no_room = InputStreamCache(max_bytes=0)
    monkeypatch.setattr(loop, "INPUT_STREAMS", no_room)
    monkeypatch.setattr(build, "INPUT_STREAMS", no_room)
    config = _config(mnist_dir, device=device.type)
    _assert_close(run_trial(config, fused=False), run_trial(config, fused=True))
    assert no_room.nbytes == 0 and no_room.shared_projections == 0  # nothing to defer with


POPULAR = {"factor_init": "identity", "factor_every": 3, "inverse_every": 7, "eigen_floor": 1e-10}


@pytest.mark.parametrize(
    "overrides",
    [{}, {**POPULAR, "fisher": "mc"}, {**POPULAR, "kl_clip": 1e-3}],
    ids=["base", "popular-noclip", "popular-clip"],
)
def test_fused_trial_is_bitwise_reproducible_recording_or_following(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    """The first trial in a process records layer 1's stream, later ones follow it: the result
    must not depend on which (nor on the lr of the trial that recorded it). Identity-started
    factors have streams of their own, shared as first-batch ones are."""
    # CPU only: the claim is bitwise equality of whole records (histogram counts included),
    # which CUDA does not guarantee without deterministic algorithms.
    cache = InputStreamCache()
    monkeypatch.setattr(loop, "INPUT_STREAMS", cache)
    config = _config(mnist_dir, dtype="float32", steps=25, **overrides)
    run_trial(dataclasses.replace(config, lr=0.05), fused=True)  # records
    followed = run_trial(config, fused=True)
    assert cache.shared_projections > 0 and cache.followed_updates > 0
    assert cache.shared_decompositions > 0
    if config.factor_every > 1:  # the batches between factor updates are shared too
        assert cache.shared_batch_projections > 0
    cache.clear()
    recorded = run_trial(config, fused=True)
    for a, b in ((followed, recorded), (recorded, run_trial(config, fused=True))):
        assert a.step_losses == b.step_losses
        assert a.evals == b.evals
        assert a.histograms == b.histograms
        assert a.curvature == b.curvature


def test_a_batch_that_differs_from_the_streams_ends_the_batch_sharing(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower compares each batch between factor updates with the stream's record, bit for
    bit, before taking its projection: a record that differs (here planted, with a garbage
    projection beside it) is not used, from there on, and the trial is the one run alone."""
    cache = InputStreamCache()
    monkeypatch.setattr(loop, "INPUT_STREAMS", cache)
    config = _config(mnist_dir, dtype="float32", steps=25, **POPULAR)
    run_trial(config, fused=True)  # records batches 1..25 and their projections
    (stream,) = cache._streams.values()
    assert len(stream.batches) == 25
    planted = 8  # batch 8 (step 7): not a factor step (every 3), rotation pending
    eigen_at, projection = stream.batch_projections[planted]
    stream.batches[planted - 1] = stream.batches[planted - 1].clone().add_(1.0)
    stream.batch_projections[planted] = (eigen_at, torch.full_like(projection, 1e3))
    before = cache.shared_batch_projections
    followed = run_trial(config, fused=True)
    shared = cache.shared_batch_projections - before
    # batches 2, 3, 5, 6 (steps 1, 2, 4, 5) shared; from batch 8 on nothing
    assert 0 < shared <= 5
    monkeypatch.setattr(loop, "INPUT_STREAMS", InputStreamCache(max_bytes=0))
    alone = run_trial(config, fused=True)
    assert followed.step_losses == alone.step_losses and followed.evals == alone.evals


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, True),
        ({"damping": {"kind": "constant", "value": 0.5}}, True),
        ({"fisher": "mc"}, True),
        ({"damping_form": "factored"}, True),
        ({"kl_clip": 1e-3}, True),
        ({"factor_every": 2}, True),
        ({"damping": {"kind": "levenberg_marquardt", "initial": 1.0}}, True),
        ({"optimizer": "sgd"}, False),
        ({"depth": 1}, False),
    ],
)
def test_fusable_wherever_the_model_is_build_mlps_chain(
    mnist_dir: Path, overrides: dict[str, Any], expected: bool
) -> None:
    assert fusable(_config(mnist_dir, **overrides)) is expected


def test_fused_refuses_a_model_that_is_not_build_mlps(
    mnist_dir: Path, device: torch.device
) -> None:
    narrowing = nn.Sequential(nn.Linear(784, 100), nn.Linear(100, 50), nn.Linear(50, 10))
    config = _config(mnist_dir, device=device.type)
    with pytest.raises(ValueError, match="every hidden layer 100 wide"):
        FusedKFAC(narrowing.to(device), config, InputStreamCache())


@pytest.mark.parametrize(
    "damping",
    [1e-2, {"kind": "levenberg_marquardt", "initial": 1.0, "every": 3}],
    ids=["constant", "levenberg-marquardt"],
)
def test_a_fused_trial_resumes_bit_for_bit_from_its_state_dict(
    mnist_dir: Path, damping: Any, device: torch.device
) -> None:
    """Checkpoint mid-window (layer 1's update pending in A's eigenbasis), restore into another
    model and backend, and both continue identically to the last bit (on CUDA: to
    tests/rerun.py's tolerance)."""
    config = _config(mnist_dir, dtype="float32", damping=damping, device=device.type)
    data = load_dataset("mnist", str(mnist_dir), device=device)
    batches = [
        (data.train_x[i * 64 : (i + 1) * 64], data.train_y[i * 64 : (i + 1) * 64])
        for i in range(16)
    ]
    with build.seeded(0, device):
        model = build.build_model(config, device)
    fused = FusedKFAC(model, config, InputStreamCache())

    def step(backend: FusedKFAC, x: torch.Tensor, y: torch.Tensor) -> None:
        backend.forward(x, y)
        backend.backward()
        backend.step(0.01)

    for x, y in batches[:7]:
        step(fused, x, y)
    saved = copy.deepcopy(fused.state_dict())
    saved_model = copy.deepcopy(model.state_dict())
    with build.seeded(1, device):
        twin_model = build.build_model(config, device)
    twin_model.load_state_dict(saved_model)
    twin = FusedKFAC(twin_model, config, InputStreamCache())
    twin.load_state_dict(saved)
    for x, y in batches[7:]:
        step(fused, x, y)
        step(twin, x, y)
        for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
            assert_same(p, q)
    assert fused.counters == twin.counters  # counts of events: exact on every device
    assert_same_float(fused.damping(), twin.damping(), device)
