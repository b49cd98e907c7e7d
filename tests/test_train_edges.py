"""Edges of run_trial that mutation testing found unguarded: where divergence stops a run, a NaN
final evaluation, and whether the step-0 histogram is the gradient of step 0 (not of step 1)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kfaclab.data import load_dataset
from kfaclab.train import run_trial
from kfaclab.train.build import build_model, seeded
from kfaclab.train.schedule import batch_indices
from kfaclab.trial_types import HistogramBins, TrialConfig


def test_sgd_stops_at_the_first_non_finite_minibatch_loss(mnist_dir: Path) -> None:
    """With no loss bound (divergence_loss = inf) only a non-finite loss can stop the run: at
    lr 1e4 the loss explodes to ~1e10 at step 1 and is NaN at step 2, where the run must stop."""
    result = run_trial(
        TrialConfig(optimizer="sgd", lr=1e4, momentum=0.0, steps=30, data_dir=str(mnist_dir),
                    histogram_steps=(), eval_steps=(), divergence_loss=math.inf)
    )  # fmt: skip
    losses = result.step_losses
    first_bad = next(i for i, x in enumerate(losses) if not math.isfinite(x))
    assert first_bad == len(losses) - 1  # nothing recorded after it
    assert all(math.isfinite(x) for x in losses[:first_bad])
    assert result.status == "diverged" and result.value == math.inf
    assert result.diverged_at == result.steps_done == first_bad
    assert first_bad < 30


def test_a_nan_final_evaluation_is_not_ok(mnist_dir: Path) -> None:
    """One step at lr 1e30 leaves weights at ±inf: the step's own minibatch loss was finite,
    the final full-training-set loss is NaN. That is a diverged trial, never status "ok"."""
    result = run_trial(
        TrialConfig(optimizer="sgd", lr=1e30, momentum=0.0, steps=1, data_dir=str(mnist_dir),
                    histogram_steps=(), eval_steps=(), divergence_loss=math.inf)
    )  # fmt: skip
    assert math.isfinite(result.step_losses[0])
    assert math.isnan(result.evals[-1].train_loss)
    assert result.status == "diverged" and result.value == math.inf
    assert result.diverged_at == result.steps_done == 1


def _histogram(grads: list[torch.Tensor], bins: HistogramBins) -> list[int]:
    """HistogramBins' layout by numpy: [below 10**log10_min, n_bins bins, at or above max]."""
    values = np.concatenate([g.detach().double().reshape(-1).numpy() for g in grads]) ** 2
    with np.errstate(divide="ignore"):
        logs = np.log10(values)
    edges = np.asarray(bins.edges())
    below = int(np.sum(logs < edges[0]))
    above = int(np.sum(logs >= edges[-1]))
    inner, _ = np.histogram(logs[(logs >= edges[0]) & (logs < edges[-1])], bins=edges)
    return [below, *inner.tolist(), above]


def _hand_histograms(config: TrialConfig, steps: int) -> list[dict[str, list[int]]]:
    """The gradient histograms of steps 0 … steps-1 of plain SGD (momentum 0, constant lr),
    computed by hand: same initialisation and batches as the trial, textbook updates."""
    data = load_dataset(config.dataset, config.data_dir)
    device = torch.device("cpu")
    with seeded(config.seed, device):
        model = build_model(config, device)
    gen = torch.Generator().manual_seed(config.seed)
    batches = batch_indices(len(data.train_y), config.batch_size, steps, gen, device)
    out = []
    for idx in batches:
        model.zero_grad()
        F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
        bins = config.histogram_bins
        out.append(
            {
                name: _histogram([m.weight.grad, m.bias.grad], bins)
                for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        with torch.no_grad():
            for p in model.parameters():
                p -= config.lr * p.grad
    return out


def test_step_histograms_equal_an_independent_computation(mnist_dir: Path) -> None:
    config = TrialConfig(optimizer="sgd", lr=0.1, momentum=0.0, steps=3, data_dir=str(mnist_dir),
                         histogram_steps=(0, 1, 2), eval_steps=())  # fmt: skip
    expected = _hand_histograms(config, 3)
    result = run_trial(config)
    # The steps differ from each other, so a histogram recorded one step late cannot pass.
    assert expected[0] != expected[1] != expected[2]
    for step in range(3):
        assert result.histograms[str(step)] == expected[step], step


@pytest.mark.parametrize("fused", [True, False])
def test_kfac_step0_histogram_is_the_first_gradient(mnist_dir: Path, fused: bool) -> None:
    """Before the first step every optimizer sees the same gradient: K-FAC's step-0 histogram
    (fused hand-written path or autograd hooks) equals SGD's, computed by hand."""
    config = TrialConfig(optimizer="kfac", damping=0.1, lr=0.05, steps=2,
                         data_dir=str(mnist_dir), histogram_steps=(0,), eval_steps=())  # fmt: skip
    sgd = dataclasses.replace(config, optimizer="sgd")
    assert run_trial(config, fused=fused).histograms["0"] == _hand_histograms(sgd, 1)[0]
