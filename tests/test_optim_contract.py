"""KFAC keeps torch.optim's contract (issue 28, point 2): lr = 0 from schedulers, parameter
groups against a dense float64 oracle, add_param_group, torch's step(closure), the model as the
first argument, state_dicts across torch.compile and DDP name prefixes, one-line refusals.

Every former friction is a test of the message or of the equality it now satisfies."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from dense_oracle import batch_factors, dense_direction
from kfaclab import KFAC, Constant, LevenbergMarquardt
from kfaclab.errors import UsageError
from kfaclab.optim import KFACOptions
from rerun import assert_same


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _batches(n: int, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(11)
    return [
        (
            torch.randn(8, 5, generator=g, dtype=torch.float64).to(device),
            torch.randint(0, 3, (8,), generator=g).to(device),
        )
        for _ in range(n)
    ]


def _step(model: nn.Module, opt: KFAC, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step(loss=loss)
    return loss


def _block(module: nn.Linear) -> torch.Tensor:
    return torch.cat([module.weight.detach(), module.bias.detach()[:, None]], 1).clone()


def _grad_block(module: nn.Linear) -> torch.Tensor:
    assert module.weight.grad is not None and module.bias.grad is not None
    return torch.cat([module.weight.grad, module.bias.grad[:, None]], 1).clone()


# --- lr = 0 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 3)),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=0.0),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, end_factor=0.0, total_iters=2),
    ],
    ids=["warmup-from-0", "cosine-to-0", "linear-to-0"],
)
def test_schedulers_that_reach_lr_0_run_like_torch_sgd(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    model = _mlp(1)
    opt = KFAC(model, lr=0.1, damping=0.1, momentum=0.5)
    scheduler = make_scheduler(opt)
    for x, y in _batches(5):
        before = [p.detach().clone() for p in model.parameters()]
        lr = opt.param_groups[0]["lr"]
        _step(model, opt, x, y)
        scheduler.step()
        if lr == 0.0:  # a zero step: nothing moves
            for p, b in zip(model.parameters(), before, strict=True):
                assert torch.equal(p, b)
    assert opt.counters["factor_updates"] == 5


def test_lr_0_still_accumulates_the_statistics(device: torch.device) -> None:
    model = _mlp(2)
    ((x, y),) = _batches(1)
    factors = batch_factors(model, x, y)
    model.to(device)
    opt = KFAC(model, lr=0.0, damping=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt, x.to(device), y.to(device))
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    for layer, (a, g) in zip(opt.engine.layers, factors, strict=True):
        assert layer.factor_a is not None and layer.factor_g is not None
        torch.testing.assert_close(layer.factor_a.cpu(), a, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(layer.factor_g.cpu(), g, rtol=1e-12, atol=1e-14)


# --- parameter groups ------------------------------------------------------------------------


def test_parameter_groups_follow_a_dense_oracle_of_per_group_lr_momentum_and_decay(
    device: torch.device,
) -> None:
    """Three steps, two groups with different lr, momentum and weight decay: each layer takes
    v ← μ_g v + (G⊗A + λI)⁻¹(∇ + wd_g θ), θ ← θ − η_g v with its own group's values, and the extra
    group's free parameter the plain heavy ball. Factors are each batch's (β = 0, inverting every
    step), so the oracle needs nothing of the optimizer's."""
    model = _mlp(3)
    extra = nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    hyper = [(0.2, 0.9, 0.01), (0.05, 0.3, 0.0)]
    lam = 0.1
    first, second = model[0], model[2]
    groups = [
        {"params": list(first.parameters()), "lr": hyper[0][0], "momentum": hyper[0][1],
         "weight_decay": hyper[0][2]},
        {"params": [*second.parameters(), extra], "lr": hyper[1][0], "momentum": hyper[1][1],
         "weight_decay": hyper[1][2]},
    ]  # fmt: skip
    model.to(device)
    extra.data = extra.data.to(device)
    opt = KFAC(model, lr=1.0, damping=lam, params=groups, unpreconditioned="allow",
               options=KFACOptions(factor_decay=0.0, inverse_every=1))  # fmt: skip
    velocity: list[torch.Tensor | None] = [None, None, None]
    for x, y in _batches(3):
        oracle_model = _mlp(0)
        oracle_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        factors = batch_factors(oracle_model, x, y)
        thetas = [_block(first).cpu(), _block(second).cpu(), extra.detach().cpu().clone()]
        loss = F.cross_entropy(model(x.to(device)), y.to(device)) + (extra**2).sum() * 0.1
        opt.zero_grad()
        loss.backward()
        grads = [_grad_block(first).cpu(), _grad_block(second).cpu(), extra.grad.detach().cpu()]  # type: ignore[union-attr]
        opt.step(loss=loss)
        for i in range(3):
            lr, mu, wd = hyper[0] if i == 0 else hyper[1]
            grad = grads[i] + wd * thetas[i]
            d = grad if i == 2 else dense_direction(*factors[i], grad, lam, "exact")
            v = velocity[i]
            velocity[i] = d if v is None else mu * v + d
            expected = thetas[i] - lr * velocity[i]
            actual = [_block(first), _block(second), extra.detach()][i].cpu()
            torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_one_group_of_all_parameters_is_the_default_bit_for_bit() -> None:
    runs = []
    for params in (None, "explicit"):
        model = _mlp(4)
        groups = None if params is None else [{"params": list(model.parameters())}]
        opt = KFAC(model, lr=0.1, damping=0.1, momentum=0.9, weight_decay=0.01, params=groups)
        for x, y in _batches(3):
            _step(model, opt, x, y)
        runs.append([p.detach() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_a_layer_split_across_groups_is_refused_naming_it() -> None:
    model = _mlp()
    groups = [{"params": [model[0].weight, model[2].weight, model[2].bias]},
              {"params": [model[0].bias], "lr": 0.01}]  # fmt: skip
    with pytest.raises(UsageError) as info:
        KFAC(model, lr=0.1, params=groups)
    assert str(info.value) == (
        "layer '0': its weight and bias must be in one parameter group (K-FAC preconditions "
        "[W | b] as one block), got weight in group 0 and bias in group 1"
    )
    with pytest.raises(
        UsageError, match=r"layer '2': .* got weight in group 0 and bias in no group"
    ):
        KFAC(model, lr=0.1, params=[model[0].weight, model[0].bias, model[2].weight])


def test_a_layer_outside_params_is_not_optimised() -> None:
    model = _mlp()
    opt = KFAC(model, lr=0.1, params=model[2].parameters())
    assert opt.layer_names == ["2"]
    before = _block(model[0])
    _step(model, opt, *_batches(1)[0])
    assert torch.equal(_block(model[0]), before)


def test_add_param_group_moves_an_extra_parameter_with_its_own_lr() -> None:
    model = _mlp()
    opt = KFAC(model, lr=0.1, damping=0.1)
    scale = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [scale], "lr": 0.01})
    x, y = _batches(1)[0]
    loss = F.cross_entropy(model(x) * scale, y)
    opt.zero_grad()
    loss.backward()
    assert scale.grad is not None
    expected = scale.detach().add(scale.grad, alpha=-0.01)
    opt.step(loss=loss)
    assert torch.equal(scale.detach(), expected)
    assert opt.unpreconditioned_names[-1] == "param_groups[1][0]"


def test_add_param_group_refuses_a_layers_parameters() -> None:
    model = _mlp()
    model[0].requires_grad_(False)  # frozen at construction, unfrozen later
    opt = KFAC(model, lr=0.1)
    model[0].requires_grad_(True)
    with pytest.raises(UsageError) as info:
        opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})
    assert str(info.value) == (
        "add_param_group cannot add parameters of layers '0' after construction (K-FAC "
        "attaches its hooks and factors when it is built): pass them in KFAC(model, "
        "params=[...]); got 2 parameters"
    )


def test_invalid_group_hyperparameters_are_refused_when_the_group_is_made() -> None:
    model = _mlp()
    with pytest.raises(
        UsageError, match=r"^param_groups\[1\]\['momentum'\] must be in \[0, 1\), got 1\.0$"
    ):
        groups = [{"params": model[0].parameters()}, {"params": model[2].parameters()}]
        groups[1]["momentum"] = 1.0
        KFAC(model, lr=0.1, params=groups)
    opt = KFAC(model, lr=0.1)
    extra = nn.Parameter(torch.ones(2))
    with pytest.raises(UsageError, match=r"^param_groups\[1\]\['lr'\] must be >= 0"):
        opt.add_param_group({"params": [extra], "lr": -0.1})
    assert len(opt.param_groups) == 1


def test_hyperparameters_set_invalid_during_training_are_refused_at_the_next_step() -> None:
    model = _mlp()
    opt = KFAC(model, lr=0.1, momentum=0.5)
    _step(model, opt, *_batches(1)[0])
    opt.param_groups[0]["momentum"] = 1.5
    with pytest.raises(UsageError) as info:
        _step(model, opt, *_batches(1)[0])
    assert str(info.value) == "param_groups[0]['momentum'] must be in [0, 1), got 1.5"
    opt.param_groups[0]["momentum"] = 0.5
    opt.param_groups[0]["lr"] = math.nan
    refused = r"param_groups\[0\]\['lr'\] must be >= 0 and <= 3\.4e38, got nan"
    with pytest.raises(UsageError, match=refused):
        _step(model, opt, *_batches(1)[0])


# --- closures ---------------------------------------------------------------------------------


def test_torch_style_closure_is_called_with_grad_and_its_loss_returned(
    device: torch.device,
) -> None:
    """Lightning / LBFGS-style code: step(closure) where the closure does zero_grad, forward and
    backward. The run equals the explicit loop bit for bit."""
    batches = _batches(4, device)
    manual, closured = _mlp(5).to(device), _mlp(5).to(device)
    opt_m = KFAC(manual, lr=0.1, damping=0.1, momentum=0.9)
    opt_c = KFAC(closured, lr=0.1, damping=0.1, momentum=0.9)
    for x, y in batches:
        expected_loss = _step(manual, opt_m, x, y)
        calls: list[bool] = []

        def closure(
            x: torch.Tensor = x, y: torch.Tensor = y, calls: list[bool] = calls
        ) -> torch.Tensor:
            calls.append(torch.is_grad_enabled())
            opt_c.zero_grad()
            loss = F.cross_entropy(closured(x), y)
            loss.backward()
            return loss

        returned = opt_c.step(closure)
        assert calls == [True]
        assert_same(returned.detach(), expected_loss.detach())
    for a, b in zip(closured.parameters(), manual.parameters(), strict=True):
        assert_same(a.detach(), b.detach())


def test_the_evaluation_closure_has_its_own_keyword_and_the_old_form_still_works() -> None:
    runs = []
    for form in ("keyword", "legacy"):
        model = _mlp(6)
        opt = KFAC(model, lr=0.2, damping=LevenbergMarquardt(initial=1.0, every=1))
        for x, y in _batches(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            evaluate = lambda x=x, y=y, m=model: F.cross_entropy(m(x), y)  # noqa: E731
            if form == "keyword":
                opt.step(loss=loss, loss_closure=evaluate)
            else:
                new_form = r"write step\(loss=loss, loss_closure=closure\)"
                with pytest.warns(DeprecationWarning, match=new_form):
                    opt.step(evaluate, loss=loss)
        runs.append(([p.detach() for p in model.parameters()], opt.current_damping()))
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        assert torch.equal(a, b)
    assert runs[0][1] == runs[1][1] != 1.0


# --- construction ---------------------------------------------------------------------------


def test_passing_parameters_instead_of_the_model_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError) as info:
        KFAC(_mlp().parameters(), lr=0.1)  # type: ignore[arg-type]
    assert str(info.value) == (
        "model must be the nn.Module whose layers K-FAC preconditions (KFAC(model, lr=...); "
        "parameter groups go in params=[...]), got generator"
    )


def test_help_and_state_methods_document_kfac_itself() -> None:
    assert "nn.Linear layers only" not in (KFAC.__doc__ or "")
    assert "nn.Linear and nn.Conv2d" in (KFAC.__doc__ or "")
    for name in ("state_dict", "load_state_dict", "zero_grad", "add_param_group", "step"):
        doc = getattr(KFAC, name).__doc__ or ""
        assert doc != (getattr(Optimizer, name).__doc__ or ""), name
    assert "kfac" in (KFAC.state_dict.__doc__ or "")
    assert "_orig_mod." in (KFAC.load_state_dict.__doc__ or "")


# --- state across wrappers and strategies -----------------------------------------------------


class _Wrapper(nn.Module):
    """What DistributedDataParallel and DataParallel look like to named_modules: ``module.``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_state_loads_across_ddp_and_torch_compile_prefixes() -> None:
    batches = _batches(4)
    eager = _mlp(7)
    opt = KFAC(eager, lr=0.1, damping=0.1, momentum=0.9)
    for x, y in batches[:2]:
        _step(eager, opt, x, y)
    saved = copy.deepcopy(opt.state_dict())  # torch's state_dict holds the live buffers
    # DDP's prefix, then training on: bit for bit the eager run.
    twin = _mlp(0)
    twin.load_state_dict(eager.state_dict())
    wrapped = _Wrapper(twin)
    opt_w = KFAC(wrapped, lr=0.1, damping=0.1, momentum=0.9)
    assert opt_w.layer_names == ["module.0", "module.2"]
    opt_w.load_state_dict(saved)
    for x, y in batches[2:]:
        _step(eager, opt, x, y)
        _step(wrapped, opt_w, x, y)
    for a, b in zip(eager.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    # torch.compile's prefix (not run: compiling is slow; loading reads names only), and back.
    compiled = torch.compile(_mlp(0))
    opt_c = KFAC(compiled, lr=0.1, damping=0.1, momentum=0.9)
    assert opt_c.layer_names == ["_orig_mod.0", "_orig_mod.2"]
    opt_c.load_state_dict(saved)
    for mine, theirs in zip(opt_c.engine.layers, saved["kfac"]["layers"], strict=True):
        assert torch.equal(mine.factor_a, theirs["factor_a"])  # type: ignore[arg-type]
    opt.load_state_dict(opt_c.state_dict())


def test_another_strategys_state_is_named_in_one_line() -> None:
    x, y = _batches(1)[0]
    constant_model, lm_model = _mlp(8), _mlp(8)
    constant = KFAC(constant_model, lr=0.1, damping=Constant(0.1))
    lm = KFAC(lm_model, lr=0.1, damping=LevenbergMarquardt(initial=1.0, source="next_batch"))
    _step(constant_model, constant, x, y)
    _step(lm_model, lm, x, y)
    before = [layer.factor_a.clone() for layer in lm.engine.layers]  # type: ignore[union-attr]
    with pytest.raises(UsageError) as info:
        lm.load_state_dict(constant.state_dict())
    assert str(info.value) == (
        "state_dict damping must be the state of this optimizer's LevenbergMarquardt strategy, "
        "got a Constant state"
    )
    legacy = constant.state_dict()  # saved before the strategy's kind was recorded
    del legacy["kfac"]["damping_kind"]
    with pytest.raises(UsageError, match=r"got one it cannot read \(KeyError: 'value'\)"):
        lm.load_state_dict(legacy)
    for layer, factor in zip(lm.engine.layers, before, strict=True):
        assert torch.equal(layer.factor_a, factor)  # type: ignore[arg-type]


def test_no_warning_for_a_plain_model_and_loop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = _mlp()
        opt = KFAC(model, lr=0.1)
        for x, y in _batches(2):
            _step(model, opt, x, y)
