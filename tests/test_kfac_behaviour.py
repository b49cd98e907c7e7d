"""KFAC as a user meets it: a peer library's factors, resumption, reproducibility, errors.

Every test runs on each available device (the ``device`` fixture); reruns that are bitwise equal
on the CPU are compared to tests/rerun.py's stated tolerance on CUDA."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfac_kwargs import make_kfac
from kfaclab import KFAC, LevenbergMarquardt
from kfaclab.curvature import decompose
from kfaclab.optim import KFACOptions
from rerun import assert_same, assert_same_float


def _mlp(seed: int, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)
    ).to(dtype)


def _batches(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Drawn on the CPU (the same numbers for every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(1234)
    return [
        (
            torch.randn(16, 6, generator=g).to(device, dtype),
            torch.randint(0, 3, (16,), generator=g).to(device),
        )
        for _ in range(n)
    ]


def _train(model: nn.Module, opt: KFAC, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss, loss_closure=lambda x=x, y=y: F.cross_entropy(model(x), y))


def test_factors_match_curvlinops_empirical_fisher(device: torch.device) -> None:
    curvlinops = pytest.importorskip("curvlinops")
    model = _mlp(0).to(device)
    x, y = _batches(1, device=device)[0]
    peer = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction="mean"),
        list(model.parameters()),
        [(x, y)],
        fisher_type="empirical",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    peer.compute_kronecker_factors()  # at the parameters before our step
    opt = KFAC(model, lr=0.1, damping=1e-2)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for layer in opt.engine.layers:
        torch.testing.assert_close(layer.factor_a, peer._input_covariances[layer.name])
        torch.testing.assert_close(layer.factor_g, peer._gradient_covariances[layer.name])


@pytest.mark.parametrize("form", ["exact", "factored"])
def test_state_dict_round_trip_resumes_bit_for_bit(form: str, device: torch.device) -> None:
    batches = _batches(12, torch.float32, device)
    model = _mlp(1, torch.float32).to(device)
    damping = LevenbergMarquardt(initial=1.0, every=2)
    opt = KFAC(
        model,
        lr=0.05,
        damping=damping,
        momentum=0.9,
        options=KFACOptions(damping_form=form, inverse_every=3),
    )  # type: ignore[arg-type]
    _train(model, opt, batches[:5])
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())

    twin = _mlp(99, torch.float32).to(device)
    twin.load_state_dict(saved_model)
    twin_opt = KFAC(
        twin,
        lr=0.05,
        damping=LevenbergMarquardt(initial=7.0, every=2),
        momentum=0.9,
        options=KFACOptions(damping_form=form, inverse_every=3),
    )
    twin_opt.load_state_dict(saved_opt)
    # Stepped in lockstep, original and resumed copy stay identical to the last bit (on CUDA:
    # tests/rerun.py's tolerance).
    for x, y in batches[5:]:
        _train(model, opt, [(x, y)])
        _train(twin, twin_opt, [(x, y)])
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert_same(p, q)
        assert_same_float(opt.current_damping(), twin_opt.current_damping(), device)
    assert opt.steps_done == twin_opt.steps_done == 12


def test_two_seeded_runs_are_bitwise_equal(device: torch.device) -> None:
    """Bitwise on the CPU; on CUDA to tests/rerun.py's tolerance."""
    params = []
    for _ in range(2):
        model = _mlp(2, torch.float32).to(device)
        opt = KFAC(model, lr=0.1, damping=1e-2, momentum=0.5)
        _train(model, opt, _batches(15, torch.float32, device))
        params.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*params, strict=True):
        assert_same(p, q)


def test_kfac_beats_sgd_on_ill_conditioned_least_squares(device: torch.device) -> None:
    """Linear regression with feature scales spanning 3 decades: SGD crawls along the flat
    directions; K-FAC with the true (Monte-Carlo, Gaussian) Fisher — Gauss–Newton here, whose A is
    the input second moment — rescales them."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-1.5, 1.5, 10, dtype=torch.float64)
    x = torch.randn(512, 10, generator=g, dtype=torch.float64) * scales
    w_true = torch.randn(10, 2, generator=g, dtype=torch.float64)
    y = x @ w_true + 0.01 * torch.randn(512, 2, generator=g, dtype=torch.float64)
    x, y = x.to(device), y.to(device)

    def run(make_opt: Callable[[nn.Module], torch.optim.Optimizer]) -> float:
        torch.manual_seed(0)
        model = nn.Linear(10, 2).double().to(device)
        opt = make_opt(model)
        for step in range(100):
            idx = torch.arange(64, device=device) + 64 * (step % 8)
            out = model(x[idx])
            loss = F.mse_loss(out, y[idx])
            opt.zero_grad()
            if isinstance(opt, KFAC):
                opt.sample_fisher(out, likelihood="gaussian")
            loss.backward()
            opt.step()
        return float(F.mse_loss(model(x), y).detach())

    # SGD's stable learning rates are bounded by the largest curvature (scale² ≈ 10³).
    sgd_best = min(
        run(lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9))
        for lr in (1e-4, 3e-4, 1e-3)
    )
    kfac = run(
        lambda m: KFAC(m, lr=0.5, damping=1e-4, options=KFACOptions(fisher="mc", inverse_every=5))
    )
    assert math.isfinite(sgd_best)
    assert kfac < 0.01 * sgd_best, (kfac, sgd_best)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr must be >= 0 and <= 3.4e38, got -1.0"),
        ({"lr": 1e39}, "lr must be >= 0 and <= 3.4e38, got 1e+39"),
        ({"factor_init": "zeros"}, "factor_init must be one of 'batch', 'identity', got 'zeros'"),
        (
            {"eigen_floor": 1e-10, "damping_form": "factored"},
            "eigen_floor needs damping_form='exact'",
        ),
        ({"eigen_floor": -1.0}, "eigen_floor must be >= 0, got -1.0"),
        ({"damping": -1.0}, "damping must be > 0"),
        ({"damping": 0.0}, "damping must be > 0"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
        (
            {"damping_form": "cholesky"},
            "damping_form must be one of 'exact', 'factored', got 'cholesky'",
        ),
        ({"fisher": "true"}, "fisher must be one of 'empirical', 'mc', got 'true'"),
        ({"factor_decay": 1.0}, "factor_decay must be in [0, 1), got 1.0"),
        ({"factor_decay": -0.5}, "factor_decay must be in [0, 1), got -0.5"),
        ({"inverse_every": 0}, "inverse_every must be an integer >= 1, got 0"),
        ({"kl_clip": 0.0}, "kl_clip must be None or a finite number > 0, got 0.0"),
        ({"kl_clip": math.inf}, "kl_clip must be None or a finite number > 0, got inf"),
    ],
)
def test_bad_arguments_name_argument_rule_and_value(
    kwargs: dict, message: str, device: torch.device
) -> None:
    args = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError) as info:
        make_kfac(_mlp(0).to(device), **args)
    assert message in str(info.value)


def test_model_without_linear_layers_is_refused(device: torch.device) -> None:
    with pytest.raises(
        ValueError,
        match=r"at least one trainable nn\.Linear or nn\.Conv2d layer, got none in Conv1d",
    ):
        KFAC(nn.Conv1d(1, 1, 3).to(device), lr=0.1)


def test_levenberg_marquardt_same_batch_needs_a_closure(device: torch.device) -> None:
    model = _mlp(3).to(device)
    opt = KFAC(model, lr=0.1, damping=LevenbergMarquardt(initial=1.0, every=1))
    x, y = _batches(1, device=device)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="closure is required"):
        opt.step()


def test_levenberg_marquardt_moves_damping_during_training(device: torch.device) -> None:
    model = _mlp(4).to(device)
    opt = KFAC(model, lr=0.5, damping=LevenbergMarquardt(initial=10.0, every=1))
    _train(model, opt, _batches(20, device=device))
    # Good steps (ρ > ¾) on this easy problem lower λ from its start by a factor ω = 0.95 each.
    assert opt.current_damping() < 10.0


def test_mc_fisher_uses_sampled_labels(device: torch.device) -> None:
    """G from sample_fisher equals the factor of a loss on the very labels it sampled (drawn on
    ``device``: torch.manual_seed seeds every device's generator)."""
    model = _mlp(5).to(device)
    x, _ = _batches(1, device=device)[0]
    opt = KFAC(model, lr=0.1, damping=0.1, options=KFACOptions(fisher="mc"))
    logits = model(x)
    torch.manual_seed(77)
    opt.sample_fisher(logits)
    torch.manual_seed(77)
    sampled = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(-1)
    F.cross_entropy(logits, sampled).backward()  # gradient from the sampled labels
    opt.step()
    oracle = _mlp(5).to(device)
    oracle_opt = KFAC(oracle, lr=0.1, damping=0.1, options=KFACOptions(fisher="empirical"))
    F.cross_entropy(oracle(x), sampled).backward()
    oracle_opt.step()
    for mine, ref in zip(opt.engine.layers, oracle_opt.engine.layers, strict=True):
        torch.testing.assert_close(mine.factor_g, ref.factor_g)
        torch.testing.assert_close(mine.factor_a, ref.factor_a)


def test_kl_clip_scales_the_step_and_is_counted(device: torch.device) -> None:
    x, y = _batches(1, device=device)[0]
    deltas = []
    for clip in (None, 1e-8):
        model = _mlp(6).to(device)
        opt = KFAC(model, lr=0.1, damping=0.1, options=KFACOptions(kl_clip=clip))
        before = [p.detach().clone() for p in model.parameters()]
        F.cross_entropy(model(x), y).backward()
        opt.step()
        deltas.append([p.detach() - b for p, b in zip(model.parameters(), before, strict=True)])
        counters = opt.counters
    assert counters["kl_clip_binds"] == 1
    nu = counters["kl_clip_last_factor"]
    assert 0 < nu < 1
    for free, clipped in zip(*deltas, strict=True):
        torch.testing.assert_close(clipped, nu * free)


def test_failed_float32_eigh_falls_back_to_float64(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    """Simulates LAPACK's non-convergence for float32 inputs (seen on this project's machines)."""
    real_eigh = torch.linalg.eigh

    def flaky_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if m.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(m)

    monkeypatch.setattr(decompose.torch.linalg, "eigh", flaky_eigh)
    model = _mlp(7, torch.float32).to(device)
    opt = KFAC(model, lr=0.1, damping=1e-2)
    _train(model, opt, _batches(3, torch.float32, device))
    assert opt.counters["decomposition_float64_retries"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_factor_keeps_the_previous_decomposition(device: torch.device) -> None:
    """A factor that is already non-finite (poisoned outside the capture path, which now drops
    non-finite batches) fails to decompose, and the layer keeps its previous inverse."""
    model = _mlp(8).to(device)
    opt = KFAC(model, lr=0.1, damping=1e-2, options=KFACOptions(inverse_every=1))
    batches = _batches(2, device=device)
    _train(model, opt, batches[:1])
    kept = opt.engine.layers[0].inverse
    factor = opt.engine.layers[0].factor_a
    assert factor is not None
    factor[0, 0] = float("nan")
    x, y = batches[1]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert opt.counters["decomposition_failures"] > 0
    assert opt.engine.layers[0].inverse is kept


def test_diagnostics_agree_with_dense_spectrum(device: torch.device) -> None:
    model = _mlp(9).to(device)
    # inverse_every=1: diagnostics describe the last decomposition, here of the current factors.
    opt = KFAC(model, lr=0.1, damping=0.05, options=KFACOptions(inverse_every=1))
    _train(model, opt, _batches(2, device=device))
    diag = opt.diagnostics()
    layer = opt.engine.layers[1]
    assert layer.factor_a is not None and layer.factor_g is not None
    eig = torch.linalg.eigvalsh(torch.kron(layer.factor_g, layer.factor_a)).clamp_min(0)
    d = diag[layer.name]
    lam = 0.05
    assert d["condition_number"] == pytest.approx(
        float((eig.max() + lam) / (eig.min() + lam)), rel=1e-6
    )
    assert d["effective_dim"] == pytest.approx(float((eig / (eig + lam)).sum()), rel=1e-6)
    assert d["frac_below_damping"] == pytest.approx(float((eig < lam).double().mean()))
    assert d["relative_damping"] == pytest.approx(lam / float(eig.mean()), rel=1e-6)


def test_parameters_outside_linear_layers_get_the_plain_gradient(device: torch.device) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 3).double()
            self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * self.linear(x)

    model = Scaled().to(device)
    opt = KFAC(model, lr=0.1, damping=0.1)
    x, y = _batches(1, device=device)[0]
    F.cross_entropy(model(x), y).backward()
    grad = model.scale.grad.clone()  # type: ignore[union-attr]
    opt.step()
    assert float(model.scale.detach()) == pytest.approx(1.5 - 0.1 * float(grad))


def test_spectrum_relative_damping_is_per_layer_and_matches_dense_spectrum(
    device: torch.device,
) -> None:
    from kfaclab import SpectrumRelative

    model = _mlp(12).to(device)
    opt = KFAC(model, lr=0.1, damping=SpectrumRelative(0.1))
    x, y = _batches(1, device=device)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    lams = []
    for layer in opt.engine.layers:
        assert layer.factor_a is not None and layer.factor_g is not None
        dense = torch.linalg.eigvalsh(torch.kron(layer.factor_g, layer.factor_a))
        assert layer.damping == pytest.approx(0.1 * float(dense.mean()), rel=1e-9)
        lams.append(layer.damping)
    assert len(set(lams)) == len(lams)  # genuinely per layer
