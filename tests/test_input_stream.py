"""Sharing layer 1's data-only work between optimizers: cheaper, and bitwise nothing else.

The oracle is the same optimizer without a cache: every follower must end with parameters (and
state) bitwise equal to a fresh run, whatever it does between inversions. Every test runs on each
available device (the ``device`` fixture); "bitwise" is tests/rerun.py's tolerance on CUDA.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfac_kwargs import make_kfac
from kfaclab import KFAC, LevenbergMarquardt
from kfaclab.optim import InputStreamCache, KFACOptions, Speedups
from kfaclab.optim.input_stream import bitwise_equal
from rerun import assert_same

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _mlp(
    seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(300, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).to(device, dtype)


def _batches(
    n: int, device: torch.device, seed: int = 7, dtype: torch.dtype = torch.float32
) -> Batches:
    """Sparse wide inputs (blank columns differ per batch): the factor's blank-column path runs.
    Drawn on the CPU (the same numbers for every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(24, 300, generator=g)
        x[:, torch.randperm(300, generator=g)[:150]] = 0.0
        y = torch.randint(0, 3, (24,), generator=g)
        out.append((x.to(device, dtype), y.to(device)))
    return out


def _run(batches: Batches, cache: InputStreamCache | None, **kwargs: Any) -> list[torch.Tensor]:
    model = _mlp(0, batches[0][0].dtype, batches[0][0].device)
    options: dict[str, Any] = {"lr": 0.05, "damping": 1e-2, "inverse_every": 3} | kwargs
    opt = make_kfac(model, **options, input_stream_cache=cache)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss, loss_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))
    state = opt.state_dict()["kfac"]["layers"][0]
    return [p.detach().clone() for p in model.parameters()] + [state["factor_a"]]


def _assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Bitwise on the CPU, tests/rerun.py's tolerance on CUDA."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert_same(x, y)


@pytest.mark.parametrize("form", ["exact", "factored"])
def test_followers_equal_fresh_runs_and_skip_the_work(form: str, device: torch.device) -> None:
    batches = _batches(10, device)
    cache = InputStreamCache()
    recorded = _run(batches, cache, damping_form=form)
    _assert_bitwise(recorded, _run(batches, None, damping_form=form))
    assert cache.followed_updates == 0
    # Another learning rate: a different trajectory, the same layer-1 inputs.
    followed = _run(batches, cache, lr=0.02, damping_form=form)
    _assert_bitwise(followed, _run(batches, None, lr=0.02, damping_form=form))
    assert cache.followed_updates == 10
    if form == "exact":
        assert cache.shared_decompositions == 4  # inversions at steps 0, 3, 6, 9
    assert len(cache) == 1


def test_follower_with_another_schedule_and_lm_damping_replays_exactly(
    device: torch.device,
) -> None:
    """LM reads the factor between snapshots (model reduction) and inverse_every differs: the
    follower replays skipped updates from the record and still matches a fresh run."""
    batches = _batches(12, device)
    cache = InputStreamCache()
    _run(batches, cache)

    def lm() -> LevenbergMarquardt:
        return LevenbergMarquardt(initial=0.1, every=2)

    followed = _run(batches, cache, inverse_every=4, damping=lm())
    _assert_bitwise(followed, _run(batches, None, inverse_every=4, damping=lm()))
    assert cache.followed_updates == 12


def test_a_different_batch_ends_following_and_the_rest_is_computed(device: torch.device) -> None:
    batches = _batches(9, device)
    cache = InputStreamCache()
    _run(batches, cache)
    changed = batches[:5] + _batches(4, device, seed=99)
    _assert_bitwise(_run(changed, cache), _run(changed, None))
    assert cache.followed_updates == 5
    assert len(cache) == 1  # the branch is not recorded: a stream is one sequence from update 1
    other_start = _batches(9, device, seed=3)
    _assert_bitwise(_run(other_start, cache), _run(other_start, None))
    assert len(cache) == 2


def test_a_stream_over_budget_stops_growing_and_followers_compute_past_its_end(
    device: torch.device,
) -> None:
    batches = _batches(8, device)
    one_batch = batches[0][0].numel() * 4
    cache = InputStreamCache(max_bytes=4 * one_batch)  # 4 batches; no room for any snapshot
    _run(batches, cache)
    assert cache.nbytes <= cache.max_bytes
    _assert_bitwise(_run(batches, cache, lr=0.01), _run(batches, None, lr=0.01))
    assert 0 < cache.followed_updates < 8


def test_state_dict_between_inversions_is_exact_and_resumes_bitwise(device: torch.device) -> None:
    batches = _batches(8, device)
    cache = InputStreamCache()
    _run(batches, cache)
    model = _mlp(0, device=device)
    opt = KFAC(
        model,
        lr=0.05,
        damping=1e-2,
        options=KFACOptions(inverse_every=3),
        speedups=Speedups(input_stream_cache=cache),
    )
    fresh_model = _mlp(0, device=device)
    fresh = KFAC(fresh_model, lr=0.05, damping=1e-2, options=KFACOptions(inverse_every=3))
    for x, y in batches[:5]:  # update 5 is followed, after the snapshot at update 4
        for m, o in ((model, opt), (fresh_model, fresh)):
            loss = F.cross_entropy(m(x), y)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step(loss=loss)
    ours, theirs = opt.state_dict()["kfac"], fresh.state_dict()["kfac"]
    assert_same(ours["layers"][0]["factor_a"], theirs["layers"][0]["factor_a"])


def test_invalid_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 0"):
        InputStreamCache(max_bytes=-1)


def test_preconditioning_from_shared_batch_projections_is_the_same_direction(
    device: torch.device,
) -> None:
    """batch_gradients_only: layer 1's Q_Gᵀ∇Q_A comes from (O Q_G)ᵀ(X̄ Q_A), X̄ Q_A shared. The
    recorder and its followers agree bitwise; the standard path agrees up to rounding."""
    batches = _batches(10, device, dtype=torch.float64)
    cache = InputStreamCache()
    options: dict[str, Any] = {"batch_gradients_only": True, "momentum": 0.5}
    recorded = _run(batches, cache, **options)
    assert cache.shared_projections == 0 and cache.nbytes > 0
    followed = _run(batches, cache, **options)
    assert cache.shared_projections == 10
    _assert_bitwise(recorded, followed)
    standard = _run(batches, None, momentum=0.5)
    for ours, theirs in zip(followed, standard, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # Other lrs follow the same projections (they depend on the data only).
    other = _run(batches, cache, lr=0.01, **options)
    for ours, theirs in zip(other, _run(batches, None, lr=0.01, momentum=0.5), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_batch_gradients_only_must_be_a_bool(device: torch.device) -> None:
    with pytest.raises(ValueError, match="batch_gradients_only must be True or False"):
        KFAC(_mlp(0, device=device), lr=0.1, speedups=Speedups(batch_gradients_only="yes"))  # type: ignore[arg-type]


def _deferred_options(**extra: Any) -> dict[str, Any]:
    return {"batch_gradients_only": True, "deferred_rotation": True} | extra


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_deferred_rotation_equals_the_standard_update(
    momentum: float, device: torch.device
) -> None:
    """Layer 1's updates kept in A's eigenbasis between inversions (forward-hook correction,
    folded in at inversions and by state_dict): the same training run up to rounding."""
    from kfaclab import ExponentialDecay

    batches = _batches(11, device, dtype=torch.float64)
    cache = InputStreamCache()
    cases: list[tuple[Any, dict[str, Any]]] = [
        (lambda: 1e-2, {}),
        (lambda: ExponentialDecay(start=0.5, end=1e-3, steps=11), {}),
        # a KL clip that binds: dᵀ∇ of layer 1 from its rotated step, the clip on that step
        (lambda: 1e-2, {"kl_clip": 1e-6}),
    ]
    for damping, extra in cases:
        options = dict(momentum=momentum, **extra)
        first = _run(batches, cache, **_deferred_options(damping=damping(), **options))
        second = _run(batches, cache, **_deferred_options(damping=damping(), **options))
        _assert_bitwise(first, second)  # recorder and follower
        standard = _run(batches, None, damping=damping(), **options)
        for ours, theirs in zip(second, standard, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_deferred_layer_is_exact_mid_window_for_forward_eval_and_state(
    device: torch.device,
) -> None:
    """Between inversions the weights are W' (not W): the model's output (with grad or not),
    materialize() and the optimizer state must still be those of the standard run."""
    batches = _batches(5, device, dtype=torch.float64)
    cache = InputStreamCache()
    _run(batches, cache, **_deferred_options())
    runs = []
    for options in (_deferred_options(momentum=0.6), {"momentum": 0.6}):
        model = _mlp(0, torch.float64, device)
        opt = make_kfac(
            model,
            lr=0.05,
            damping=1e-2,
            **options,
            inverse_every=10,
            input_stream_cache=cache if "deferred_rotation" in options else None,
        )
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(loss=loss)
        probe = batches[2][0][:7]
        with_grad = model(probe).detach()  # through the hook's correction
        with torch.no_grad():
            without_grad = model(probe)  # the hook folds the rotation in first
        state = opt.state_dict()
        buffer = state["state"][0]["momentum_buffer"]  # layer 1's weight
        runs.append(
            (with_grad, without_grad, buffer, [p.detach().clone() for p in model.parameters()])
        )
    (ours_grad, ours_plain, ours_buffer, ours_params), (ref, ref_plain, ref_buffer, ref_params) = (
        runs
    )
    for a, b in [(ours_grad, ref), (ours_plain, ref_plain), (ours_buffer, ref_buffer)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours_params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_inputs_changed_in_place_after_the_forward_check_are_compared_again(
    device: torch.device,
) -> None:
    """The forward hook's equality check is reused by the step only for the unchanged tensor: an
    in-place write between them (here after backward) must end following, as in a fresh run."""
    batches = _batches(6, device, dtype=torch.float64)
    cache = InputStreamCache()
    _run(batches, cache, **_deferred_options())
    before = cache.followed_updates
    results = []
    for options, shared in ((_deferred_options(), cache), ({}, None)):
        model = _mlp(0, torch.float64, device)
        opt = make_kfac(
            model,
            lr=0.05,
            damping=1e-2,
            **options,
            inverse_every=3,
            input_stream_cache=shared,
        )
        for step, (x, y) in enumerate(batches):
            x = x.clone()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 4:
                x.mul_(1.5)  # the captured inputs are a view of x: the factor sees the change
            opt.step(loss=loss)
        layer = opt.state_dict()["kfac"]["layers"][0]
        results.append([layer["factor_a"]] + [p.detach().clone() for p in model.parameters()])
    assert cache.followed_updates - before == 4
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_deferred_rotation_needs_its_prerequisites(device: torch.device) -> None:
    with pytest.raises(ValueError, match="deferred_rotation needs batch_gradients_only=True"):
        KFAC(
            _mlp(0, device=device),
            lr=0.1,
            speedups=Speedups(deferred_rotation=True, input_stream_cache=InputStreamCache()),
        )


def test_a_follower_needs_the_recorded_bytes_not_just_equal_values() -> None:
    """Following is decided on bytes: −0.0 is not 0.0 (torch.equal says it is) and a NaN input
    is its own recording (torch.equal says it is not); odd sizes and strided inputs compare too."""
    recorded = torch.rand(128, 784)
    assert bitwise_equal(recorded, recorded.clone())
    nudged = recorded.clone()
    nudged[5, 7] = torch.nextafter(nudged[5, 7], torch.tensor(2.0))
    assert not bitwise_equal(recorded, nudged)
    zeros = torch.zeros(3)
    assert torch.equal(zeros, -zeros) and not bitwise_equal(zeros, -zeros)
    nans = torch.full((3,), float("nan"))
    assert not torch.equal(nans, nans.clone()) and bitwise_equal(nans, nans.clone())
    odd = torch.rand(3, 3)  # 36 bytes: not whole 64-bit words
    assert bitwise_equal(odd, odd.clone()) and not bitwise_equal(odd, odd + 1)
    strided = torch.rand(6, 4).T
    assert bitwise_equal(strided, strided.contiguous())
    assert not bitwise_equal(recorded, recorded.double())
    assert not bitwise_equal(recorded, recorded[:64])
