"""KFAC(skip_weight_grads=True): backward stops computing the deferred layer's weight gradient,
and nothing the optimizer or a trial produces changes (on each available device: the ``device``
fixture)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kfaclab.optim
from kfac_kwargs import make_kfac
from kfaclab import KFAC, LevenbergMarquardt
from kfaclab.optim import InputStreamCache, KFACOptions, Speedups
from kfaclab.train import run_trial
from kfaclab.trial_types import TrialConfig

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _mlp(device: torch.device | str = "cpu") -> nn.Sequential:
    torch.manual_seed(0)
    # 300 inputs (above DENSE_BELOW, so layer 1 keeps an active block), 40 of them always blank.
    return nn.Sequential(
        nn.Linear(300, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)
    ).to(device, torch.float64)


def _batches(n: int, device: torch.device) -> Batches:
    """Drawn on the CPU (the same numbers for every device), then moved to ``device``."""
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        x = torch.rand(32, 300, generator=generator, dtype=torch.float64)
        x[:, :40] = 0.0
        y = torch.randint(0, 5, (32,), generator=generator)
        out.append((x.to(device), y.to(device)))
    return out


def _train(batches: Batches, cache: InputStreamCache, **options: Any) -> tuple[nn.Sequential, KFAC]:
    model = _mlp(batches[0][0].device)
    opt = make_kfac(
        model,
        lr=0.05,
        momentum=0.8,
        **options,
        inverse_every=3,
        input_stream_cache=cache,
        batch_gradients_only=True,
        deferred_rotation=True,
    )
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss, loss_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
    return model, opt


@pytest.mark.parametrize("damping", [lambda: 1e-2, lambda: LevenbergMarquardt(initial=0.1)])
def test_skipping_the_weight_gradient_changes_no_update(damping: Any, device: torch.device) -> None:
    """Same run with and without the skip; Levenberg–Marquardt's model reduction takes the
    standard (non-deferred) path on some steps, where the block comes from the capture."""
    batches = _batches(10, device)
    cache = InputStreamCache()
    _train(batches, cache, damping=damping())  # records the stream
    reference, reference_opt = _train(batches, cache, damping=damping())
    model, opt = _train(batches, cache, damping=damping(), skip_weight_grads=True)
    reference_opt.materialize()  # deferred layers hold W' until then
    opt.materialize()
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            p.detach(), dict(reference.named_parameters())[name].detach(), rtol=1e-10, atol=1e-12
        )
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5
    opt.remove_hooks()
    assert all(p.requires_grad for p in model.parameters())


def test_restored_weight_gradient_is_backwards(device: torch.device) -> None:
    batches = _batches(5, device)
    cache = InputStreamCache()
    _train(batches, cache)
    model, opt = _train(batches, cache, skip_weight_grads=True)
    weight = model[0].weight
    x, y = batches[2]
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    assert weight.grad is None  # backward skipped it
    opt.restore_weight_grads()
    restored = weight.grad
    assert restored is not None
    weight.requires_grad_(True)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()  # the same batch, the same parameters
    torch.testing.assert_close(restored, weight.grad, rtol=1e-12, atol=1e-15)


def test_skip_weight_grads_needs_deferral_and_a_capture_every_step(device: torch.device) -> None:
    with pytest.raises(ValueError, match="skip_weight_grads needs deferred_rotation=True"):
        KFAC(_mlp(device), lr=0.1, speedups=Speedups(skip_weight_grads=True))
    with pytest.warns(UserWarning, match=r"skip_weight_grads: it needs factor_every=1"):
        opt = KFAC(
            _mlp(device),
            lr=0.1,
            options=KFACOptions(factor_every=2),
            speedups=Speedups(
                input_stream_cache=InputStreamCache(),
                batch_gradients_only=True,
                deferred_rotation=True,
                skip_weight_grads=True,
            ),
        )
    assert "skip_weight_grads" in opt.speedups  # reported, and not applied:
    assert not opt.engine.in_effect.skip_weight_grads


def test_trial_results_do_not_depend_on_the_skip(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_trial skips layer 1's weight gradient and restores it for the histograms: the whole
    result (losses, histograms, curvature, evaluations) is the one computed without skipping."""
    # CPU only: the claim is bitwise equality of whole records (histogram counts included),
    # which CUDA does not guarantee without deterministic algorithms; the tests above cover the
    # skip on every device.
    config = TrialConfig(
        optimizer="kfac",
        lr=0.02,
        momentum=0.9,
        damping=0.1,
        steps=40,
        histogram_steps=(12, 31),
        data_dir=str(mnist_dir),
    )
    skipped = run_trial(config, fused=False)  # the general KFAC: what this file tests
    real = kfaclab.optim.KFAC

    def without_skip(*args: Any, **kwargs: Any) -> KFAC:
        kwargs["speedups"] = dataclasses.replace(kwargs["speedups"], skip_weight_grads=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(kfaclab.optim, "KFAC", without_skip)
    plain = run_trial(config, fused=False)
    assert skipped.step_losses == plain.step_losses
    assert skipped.histograms == plain.histograms
    assert skipped.evals == plain.evals
    assert skipped.curvature == plain.curvature
