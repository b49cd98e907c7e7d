"""The engine's implementation-profile options and the hook backend's contracts, against dense
float64 oracles: identity-initialised factors, factor statistics every N steps, the eigenvalue
floor, the first-inversion fall-back, gradient accumulation, and every misuse that used to fail
silently or deep inside (weight sharing, step without backward, a state_dict of another width,
an empty batch, parameters K-FAC does not precondition, speed-ups that cannot apply).

Every test runs KFAC on each available device (the ``device`` fixture); a single-step oracle is
computed on the CPU before the model moves, a multi-step one follows the model (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_oracle import batch_factors
from kfac_kwargs import make_kfac
from kfaclab.curvature import eigen as eigen_module
from kfaclab.optim import KFAC, InputStreamCache, KFACOptions, Speedups
from rerun import assert_same


def _mlp(seed: int = 0, width: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3)).double()


def _data(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def _step(model: nn.Module, opt: KFAC, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step(loss=loss)


def _blocks(model: nn.Sequential) -> list[torch.Tensor]:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return [torch.cat([m.weight.detach(), m.bias.detach()[:, None]], 1) for m in linears]


def _grad_blocks(model: nn.Sequential) -> list[torch.Tensor]:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return [torch.cat([m.weight.grad, m.bias.grad[:, None]], 1) for m in linears]  # type: ignore[index]


@pytest.mark.parametrize("factor_every", [1, 3])
def test_identity_initialised_factors_are_the_decayed_identity_plus_the_ema(
    factor_every: int, device: torch.device
) -> None:
    """factor_init="identity": after k updates A = β^k I + Σ_j (1−β) β^(k−1−j) Â_j (the same
    for G), updates only on every ``factor_every``-th step."""
    model, decay = _mlp(1).to(device), 0.95
    opt = make_kfac(model, lr=0.01, damping=0.1, factor_init="identity", factor_every=factor_every)

    def eye(n: int) -> torch.Tensor:
        return torch.eye(n, dtype=torch.float64, device=device)

    expected = [(eye(s_a), eye(s_g)) for s_a, s_g in ((6, 4), (5, 3))]
    updates = 0
    for t in range(7):
        x, y = (v.to(device) for v in _data(t))
        if t % factor_every == 0:
            batch = batch_factors(model, x, y)
            expected = [
                (decay * ea + (1 - decay) * a, decay * eg + (1 - decay) * g)
                for (ea, eg), (a, g) in zip(expected, batch, strict=True)
            ]
            updates += 1
        _step(model, opt, x, y)
    assert opt.counters["factor_updates"] == updates
    for layer, (a, g) in zip(opt.engine.layers, expected, strict=True):
        torch.testing.assert_close(layer.factor_a, a, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(layer.factor_g, g, rtol=1e-13, atol=1e-15)
    # The identity's remaining weight is β^updates in both factors (extra damping on top of λ).
    identity_weight = decay**updates
    assert float(opt.engine.layers[0].factor_a[0, 1]) != identity_weight  # off-diagonal: no I
    assert identity_weight == pytest.approx(0.95**updates)


def _floored(factor: torch.Tensor, floor: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(factor)
    values = torch.where(values < floor, torch.zeros_like(values), values)
    return vectors @ torch.diag(values) @ vectors.T


@pytest.mark.parametrize("floor", [0.0, 1e-10, 0.05])
def test_eigen_floor_first_step_equals_the_dense_floored_damped_inverse(
    floor: float, device: torch.device
) -> None:
    """eigen_floor: eigenvalues of A and G below it become 0, then d = (G̃⊗Ã + λI)⁻¹∇ (the step
    on ``device``, the oracle on the CPU)."""
    model, lam, lr = _mlp(2), 1e-3, 0.1
    x, y = _data(11)
    factors = batch_factors(model, x, y)
    before = _blocks(model)
    model.to(device)
    opt = make_kfac(model, lr=lr, damping=lam, eigen_floor=floor)
    loss = F.cross_entropy(model(x.to(device)), y.to(device))
    opt.zero_grad()
    loss.backward()
    grads = [g.cpu() for g in _grad_blocks(model)]
    opt.step()
    after_blocks = [b.cpu() for b in _blocks(model)]
    for (a, g), theta, grad, after in zip(factors, before, grads, after_blocks, strict=True):
        a_f, g_f = _floored(a, floor), _floored(g, floor)
        n = a.shape[0] * g.shape[0]
        curvature = torch.kron(g_f, a_f) + lam * torch.eye(n, dtype=torch.float64)
        direction = torch.linalg.solve(curvature, grad.reshape(-1)).reshape(grad.shape)
        torch.testing.assert_close(after, theta - lr * direction, rtol=1e-8, atol=1e-12)


def test_a_failed_first_inversion_steps_with_the_exactly_damped_diagonal(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    """No basis to keep yet: the step uses (diag G ⊗ diag A + λI)⁻¹∇, not ∇/λ, and counts it."""
    model, lam, lr = _mlp(3), 1e-2, 0.1
    x, y = _data(5)
    factors = batch_factors(model, x, y)
    before = _blocks(model)
    model.to(device)
    opt = make_kfac(model, lr=lr, damping=lam)
    monkeypatch.setattr(eigen_module, "robust_eigh", lambda m, counter: None)
    loss = F.cross_entropy(model(x.to(device)), y.to(device))
    opt.zero_grad()
    loss.backward()
    grads = [g.cpu() for g in _grad_blocks(model)]
    opt.step()
    assert opt.counters["diagonal_fallback_steps"] == 2  # both layers
    after_blocks = [b.cpu() for b in _blocks(model)]
    for (a, g), theta, grad, after in zip(factors, before, grads, after_blocks, strict=True):
        denominator = torch.outer(torch.diagonal(g), torch.diagonal(a)) + lam
        torch.testing.assert_close(after, theta - lr * grad / denominator, rtol=1e-10, atol=1e-13)


def test_gradient_accumulation_gives_the_factors_and_step_of_the_concatenated_batch(
    device: torch.device,
) -> None:
    """Two micro-batches, each mean loss scaled by its share (the usual accumulation), then one
    step: the same factors and parameters as one step on the concatenated batch."""
    x, y = (t.to(device) for t in _data(21, n=12))
    whole_model, parts_model = _mlp(4).to(device), _mlp(4).to(device)
    whole = make_kfac(whole_model, lr=0.1, damping=0.1, momentum=0.5)
    parts = make_kfac(parts_model, lr=0.1, damping=0.1, momentum=0.5)
    _step(whole_model, whole, x, y)
    parts.zero_grad()
    for sl in (slice(0, 5), slice(5, 12)):
        n = sl.stop - sl.start
        (F.cross_entropy(parts_model(x[sl]), y[sl]) * n / 12).backward()
    parts.step()
    for ours, theirs in zip(parts.engine.layers, whole.engine.layers, strict=True):
        torch.testing.assert_close(ours.factor_a, theirs.factor_a, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(ours.factor_g, theirs.factor_g, rtol=1e-13, atol=1e-15)
    for p, q in zip(parts_model.parameters(), whole_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_many_backward_passes_without_a_step_warn_once(device: torch.device) -> None:
    model = _mlp(4).to(device)
    opt = make_kfac(model, lr=0.1, damping=0.1)
    x, y = (t.to(device) for t in _data(1))
    with pytest.warns(UserWarning, match="captures are piling up"):
        for _ in range(70):
            F.cross_entropy(model(x), y).backward()
    opt.step()  # consumes them all


def test_a_layer_applied_twice_in_one_graph_is_refused(device: torch.device) -> None:
    layer = nn.Linear(4, 4).double().to(device)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    opt = make_kfac(model, lr=0.1, damping=0.1)  # held: a collected optimizer's hooks are gone
    x = torch.randn(6, 4, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=r"layer '0' was applied more than once in one graph"):
        model(x).pow(2).sum().backward()
    del opt


def test_a_forward_that_is_never_backpropagated_does_not_enter_the_factors(
    device: torch.device,
) -> None:
    model, reference = _mlp(5).to(device), _mlp(5).to(device)
    opt, ref = make_kfac(model, lr=0.1, damping=0.1), make_kfac(reference, lr=0.1, damping=0.1)
    x, y = (t.to(device) for t in _data(3))
    model(_data(4)[0].to(device))  # a side computation with gradients enabled, then discarded
    _step(model, opt, x, y)
    _step(reference, ref, x, y)
    for ours, theirs in zip(opt.engine.layers, ref.engine.layers, strict=True):
        assert ours.factor_a is not None and theirs.factor_a is not None
        assert_same(ours.factor_a, theirs.factor_a)


def test_step_without_backward_says_so(device: torch.device) -> None:
    model = _mlp().to(device)
    opt = make_kfac(model, lr=0.1)
    model(_data(0)[0].to(device))
    with pytest.raises(ValueError, match=r"call loss.backward\(\) before step\(\)"):
        opt.step()


def test_a_state_dict_of_another_width_is_refused_before_anything_changes(
    device: torch.device,
) -> None:
    narrow, wide = _mlp(0, width=4).to(device), _mlp(0, width=7).to(device)
    opt_narrow, opt_wide = make_kfac(narrow, lr=0.1), make_kfac(wide, lr=0.1)
    for model, opt in ((narrow, opt_narrow), (wide, opt_wide)):
        _step(model, opt, *(t.to(device) for t in _data(0)))
    before = opt_wide.engine.layers[0].factor_g.clone()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"'0' must have factor_g of shape \(7, 7\), got \(4, 4\)"):
        opt_wide.load_state_dict(opt_narrow.state_dict())
    assert torch.equal(opt_wide.engine.layers[0].factor_g, before)  # type: ignore[arg-type]


def test_an_empty_batch_is_refused_by_name(device: torch.device) -> None:
    model = _mlp().to(device)
    opt = make_kfac(model, lr=0.1)  # held: a collected optimizer's hooks are gone
    with pytest.raises(ValueError, match=r"layer '0' got an empty batch of shape \(0, 5\)"):
        model(torch.zeros(0, 5, dtype=torch.float64, device=device))
    del opt


def _with_norm() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))


def test_unpreconditioned_parameters_are_named_once_or_refused(device: torch.device) -> None:
    with pytest.warns(UserWarning, match=r"plain gradient .*: 1\.weight, 1\.bias"):
        opt = KFAC(_with_norm().to(device), lr=0.1)
    assert opt.diagnostics()["(unpreconditioned)"]["parameters"] == ["1.weight", "1.bias"]
    with pytest.raises(ValueError, match=r"would get the plain gradient: 1\.weight, 1\.bias"):
        KFAC(_with_norm().to(device), lr=0.1, unpreconditioned="error")


def test_a_speedup_that_cannot_apply_is_reported(device: torch.device) -> None:
    speedups = Speedups(InputStreamCache(), batch_gradients_only=True)
    with pytest.warns(UserWarning, match=r"batch_gradients_only: the MC Fisher"):
        opt = KFAC(_mlp().to(device), lr=0.1, options=KFACOptions(fisher="mc"), speedups=speedups)
    assert set(opt.speedups) == {"batch_gradients_only"}
    assert not opt.engine.in_effect.from_batch


def _deep_mlp() -> nn.Sequential:
    """Four equally shaped layers (5×6 blocks): the engine preconditions them as one stack."""
    torch.manual_seed(3)
    layers: list[nn.Module] = [nn.Linear(5, 5), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(5, 5), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(5, 3)).double()


def _train_deep(model: nn.Module, opt: KFAC, seeds: range) -> None:
    for seed in seeds:
        _step(model, opt, *_data(seed, n=16))


def test_a_stacks_momentum_is_one_buffer_and_changes_no_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v ← μv + d on one stacked buffer is the per-layer arithmetic: the same bits as with the
    stacked path switched off; and after a state_dict round trip (separate tensors) the buffers
    are stacked again and the run continues bit for bit."""

    def make(model: nn.Module) -> KFAC:
        return KFAC(model, lr=0.1, damping=0.05, momentum=0.9, options=KFACOptions(inverse_every=3))

    model = _deep_mlp()
    opt = make(model)
    _train_deep(model, opt, range(6))
    stacked = opt.engine.directions.factors.stacks
    assert stacked and stacked[0][0] == [0, 1, 2, 3]
    hidden = [opt.engine.layers[i].weight for i in stacked[0][0]]
    buffers = [opt.state[w]["momentum_buffer"] for w in hidden]
    assert all(b._base is buffers[0]._base is not None for b in buffers)

    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    twin = _deep_mlp()
    twin.load_state_dict(saved_model)
    twin_opt = make(twin)
    twin_opt.load_state_dict(saved_opt)
    _train_deep(model, opt, range(6, 10))
    _train_deep(twin, twin_opt, range(6, 10))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert_same(p, q)
    twin_buffers = [twin_opt.state[p]["momentum_buffer"] for p in list(twin.parameters())[0:8:2]]
    assert all(b._base is twin_buffers[0]._base is not None for b in twin_buffers)

    from kfaclab.optim.engine_directions import DirectionSide

    monkeypatch.setattr(DirectionSide, "_stacked_momentum", lambda self, stacked, mu: set())
    per_layer = _deep_mlp()
    per_layer_opt = make(per_layer)
    _train_deep(per_layer, per_layer_opt, range(10))
    for p, q in zip(model.parameters(), per_layer.parameters(), strict=True):
        assert_same(p, q)
