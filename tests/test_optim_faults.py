"""No silent fall-back left in KFAC (issue 28, points 3 and 7): the MC Fisher without samples,
layers no hook ever sees, tied weights, strategy requirements, non-finite logits, skipped steps,
non-finite statistics, GradScaler's loss scale and hooks that outlived their optimizer.

Each former silent failure is a test of the one-line message or of the equality it now meets."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfaclab import KFAC, LevenbergMarquardt
from kfaclab.damping import LossTrend
from kfaclab.errors import UsageError
from kfaclab.optim import KFACOptions


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _batches(n: int, dtype: torch.dtype = torch.float64) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(21)
    return [
        (torch.randn(8, 5, generator=g).to(dtype), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n)
    ]


def _step(model: nn.Module, opt: KFAC, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step(loss=loss)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --- point 3: no silent fall-back ---------------------------------------------------------


def test_mc_fisher_without_sample_fisher_is_refused_at_the_first_step() -> None:
    model = _mlp()
    opt = KFAC(model, lr=0.1, options=KFACOptions(fisher="mc"))
    x, y = _batches(1)[0]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    with pytest.raises(UsageError) as info:
        opt.step(loss=loss)
    assert str(info.value) == (
        "fisher='mc' needs opt.sample_fisher(logits) on every factor step, after zero_grad() "
        "and the forward pass, before loss.backward(); got no sampled gradients this step"
    )
    assert opt.counters["inversions"] == 0 and opt.counters["factor_updates"] == 0


def test_sample_fisher_names_non_finite_logits() -> None:
    model = _mlp()
    opt = KFAC(model, lr=0.1, options=KFACOptions(fisher="mc"))
    x, _ = _batches(1)[0]
    logits = model(x)
    with pytest.raises(UsageError) as info:
        opt.sample_fisher(logits * torch.tensor([1.0, math.nan, 1.0], dtype=logits.dtype))
    assert str(info.value) == (
        "sample_fisher: logits must be finite, got 8 non-finite of 24 entries (the model "
        "diverged: a smaller lr or a larger damping)"
    )


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.att(x, x, x, need_weights=False)[0].mean(1))


def test_attention_out_proj_is_named_and_gets_the_plain_gradient() -> None:
    model = _Attention()
    with pytest.warns(UserWarning, match=r"'att\.out_proj' is nn\.MultiheadAttention's out_proj"):
        opt = KFAC(model, lr=0.1, damping=1e-3)
    assert opt.layer_names == ["out"]
    assert "att.out_proj.weight" in opt.unpreconditioned_names
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(2))
    loss = F.cross_entropy(model(x), torch.arange(6) % 3)
    opt.zero_grad()
    loss.backward()
    weight = model.att.out_proj.weight
    assert weight.grad is not None
    expected = weight.detach().add(weight.grad, alpha=-0.1)  # not ∇/λ, a 1000× step
    opt.step(loss=loss)
    assert torch.equal(weight.detach(), expected)


class _ViaFunctional(nn.Module):
    """A Linear used through F.linear: its forward, and so its hook, never runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.hidden = nn.Linear(5, 4).double()
        self.out = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(F.linear(x, self.hidden.weight, self.hidden.bias)))


def test_a_layer_no_hook_ever_sees_is_named_and_gets_the_plain_gradient() -> None:
    model = _ViaFunctional()
    opt = KFAC(model, lr=0.1, damping=1e-3)
    x, y = _batches(1)[0]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    grad = model.hidden.weight.grad
    assert grad is not None
    expected = model.hidden.weight.detach().add(grad, alpha=-0.1)
    with pytest.warns(UserWarning, match=r"layers hidden have gradients, but their forward hooks"):
        opt.step(loss=loss)
    assert torch.equal(model.hidden.weight.detach(), expected)
    assert "hidden (never captured)" in opt.unpreconditioned_names
    assert opt.engine.layers[0].inverse is None  # never decomposed, never counted
    assert opt.engine.layers[1].inverse is not None


def test_inversions_are_not_counted_when_no_layer_has_factors() -> None:
    model = _ViaFunctional()
    model.out = nn.Linear(4, 3).double()
    model.forward = lambda x: F.linear(  # type: ignore[method-assign]
        torch.tanh(F.linear(x, model.hidden.weight, model.hidden.bias)),
        model.out.weight,
        model.out.bias,
    )
    opt = KFAC(model, lr=0.1, damping=1e-3)
    with pytest.warns(UserWarning, match="never saw a batch"):
        for x, y in _batches(3):
            _step(model, opt, x, y)
    assert opt.counters["inversions"] == 0
    assert opt.counters["steps_without_capture"] == 3


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.emb = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.emb(tokens))))


def test_a_layer_tied_to_an_embedding_is_named_and_gets_the_plain_gradient() -> None:
    model = _Tied()
    with pytest.warns(UserWarning, match=r"'out' shares its parameters with emb\.weight \(tied"):
        opt = KFAC(model, lr=0.1, damping=1e-3)
    assert opt.layer_names == ["hidden"]
    tokens = torch.tensor([1, 2, 3, 4, 5, 6])
    loss = F.cross_entropy(model(tokens), torch.tensor([2, 3, 4, 5, 6, 0]))
    opt.zero_grad()
    loss.backward()
    shared = model.emb.weight
    assert shared.grad is not None
    expected = shared.detach().add(shared.grad, alpha=-0.1)  # both modules' part, as is
    opt.step(loss=loss)
    assert torch.equal(shared.detach(), expected)
    with pytest.raises(UsageError, match=r"'out' shares its parameters with emb\.weight"):
        KFAC(_Tied(), lr=0.1, unpreconditioned="error")


def test_strategy_requirements_are_refused_at_the_first_step() -> None:
    """README's `damping=LevenbergMarquardt(initial=1.0)` with `step(loss=loss)` used to fail at
    step 4, the first λ update; LossTrend without a loss used to warn and adapt to nothing."""
    x, y = _batches(1)[0]
    model = _mlp()
    opt = KFAC(model, lr=0.1, damping=LevenbergMarquardt(initial=1.0))
    with pytest.raises(UsageError) as info:
        _step(model, opt, x, y)
    assert str(info.value) == (
        "loss_closure is required by damping LevenbergMarquardt (it re-evaluates the minibatch "
        "after the step): step(loss=loss, loss_closure=lambda: loss_fn(model(x), y)), or "
        "source='next_batch'; got loss_closure=None"
    )
    assert opt.steps_done == 0
    trend = KFAC(model, lr=0.1, damping=LossTrend(initial=1.0))
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(
        UsageError, match=r"^loss is required by damping LossTrend .* got loss=None$"
    ):
        trend.step()
    next_batch = KFAC(model, lr=0.1, damping=LevenbergMarquardt(source="next_batch"))
    for _ in range(6):
        _step(model, next_batch, x, y)


# --- point 7: skipped steps, non-finite statistics, GradScaler, hooks ----------------------------


def test_a_skipped_step_leaves_nothing_behind() -> None:
    """The usual loop: a non-finite loss → skip step(); zero_grad() at the next iteration. The run
    equals one that never saw the bad batch, factors and parameters bit for bit."""
    batches = _batches(6)
    bad = (batches[2][0].clone(), batches[2][1])
    bad[0][0, 0] = math.nan
    runs = []
    for with_bad in (True, False):
        model = _mlp(5)
        opt = KFAC(model, lr=0.1, damping=1e-2, momentum=0.9, options=KFACOptions(inverse_every=1))
        for i, (x, y) in enumerate(batches):
            if with_bad and i == 3:
                opt.zero_grad()
                loss = F.cross_entropy(model(bad[0]), bad[1])
                loss.backward()
                assert not math.isfinite(loss.item())  # skipped: no step()
            _step(model, opt, x, y)
        runs.append((model, opt))
    (model, opt), (ref, ref_opt) = runs
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    for mine, theirs in zip(opt.engine.layers, ref_opt.engine.layers, strict=True):
        assert torch.equal(mine.factor_a, theirs.factor_a)  # type: ignore[arg-type]
        assert torch.equal(mine.factor_g, theirs.factor_g)  # type: ignore[arg-type]
    assert opt.counters["decomposition_failures"] == 0


def test_a_non_finite_capture_never_enters_a_factor() -> None:
    model = _mlp(6)
    opt = KFAC(model, lr=0.1, damping=1e-2, options=KFACOptions(factor_decay=0.5))
    x, y = _batches(1)[0]
    _step(model, opt, x, y)
    factors = [(lay.factor_a.clone(), lay.factor_g.clone()) for lay in opt.engine.layers]  # type: ignore[union-attr]
    poisoned = x.clone()
    poisoned[3, 1] = math.nan
    loss = F.cross_entropy(model(poisoned), y)
    opt.zero_grad()
    loss.backward()
    named = r"non-finite inputs or output gradients captured for layers 0, 2"
    with pytest.warns(UserWarning, match=named):
        opt.step(loss=loss)
    for layer, (a, g) in zip(opt.engine.layers, factors, strict=True):
        assert torch.equal(layer.factor_a, a) and torch.equal(layer.factor_g, g)  # type: ignore[arg-type]
    assert opt.nonfinite_captures == 2
    assert opt.counters["decomposition_failures"] == 0


def _train_scaled(
    scaler: torch.amp.GradScaler | None, steps: int, pass_scaler: bool = True
) -> nn.Module:
    model = _mlp(7, torch.float32)
    opt = KFAC(model, lr=0.1, damping=1e-2, grad_scaler=scaler if pass_scaler else None)
    for x, y in _batches(steps, torch.float32):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step(loss=loss)
            continue
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # as for clipping; then step() does not unscale again
        scaler.step(opt, loss=loss)
        scaler.update()
    return model


def _largest_change(model: nn.Module, start: nn.Module) -> float:
    pairs = zip(model.parameters(), start.parameters(), strict=True)
    return max(float((p - q).detach().abs().max()) for p, q in pairs)


def test_grad_scaler_steps_equal_unscaled_steps_bit_for_bit() -> None:
    """GradScaler multiplies the loss by 2¹⁶ and divides .grad by it; the captured ∂L/∂s must be
    divided too, or G is 2³² too large and the step shrinks about that much. With a power-of-two
    scale every product is exact, so the two runs agree to the bit."""
    plain = _train_scaled(None, 4)
    scaled = _train_scaled(torch.amp.GradScaler("cpu"), 4)
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)
    unscaled = _train_scaled(torch.amp.GradScaler("cpu"), 4, pass_scaler=False)
    start = _mlp(7, torch.float32)
    moved, wanted = _largest_change(unscaled, start), _largest_change(plain, start)
    assert moved < 1e-6 * wanted  # the bug this guards against: no training at all


def test_grad_scaler_inf_steps_are_skipped_without_poisoning_the_factors() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    model = _mlp(8, torch.float32)
    opt = KFAC(model, lr=0.1, damping=1e-2, grad_scaler=scaler)
    for x, y in _batches(8, torch.float32):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt, loss=loss)
        scaler.update()
    assert opt.steps_done > 0 and scaler.get_scale() < 1e38
    for layer in opt.engine.layers:
        for factor in (layer.factor_a, layer.factor_g):
            assert factor is not None and bool(torch.isfinite(factor).all())
    assert opt.counters["decomposition_failures"] == 0


def test_hooks_go_with_their_optimizer() -> None:
    """torch users never clean up optimizers: a second KFAC on the same model must not inherit
    the first one's hooks, which kept appending every batch to a capture nobody stepped."""
    model = _mlp(9)
    first = KFAC(model, lr=0.1)
    _step(model, first, *_batches(1)[0])
    alive = weakref.ref(first)
    capture = first._capture
    del first
    gc.collect()
    assert alive() is None
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    second = KFAC(model, lr=0.1)
    for x, y in _batches(3):
        _step(model, second, x, y)
    assert all(not layer.pairs and layer.forwards == 1 for layer in capture.layers)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 2
