"""benchmarks/minimal_kfac.py is bench_step's floor only if it does K-FAC's whole work: its steps
must be KFAC's, to float64 rounding, over enough steps to cover an inversion and the running
factors, in both damping forms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfaclab import KFAC
from kfaclab.optim import KFACOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from minimal_kfac import MinimalKFAC


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)
    ).double()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (16,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss) if isinstance(opt, KFAC) else opt.step()


@pytest.mark.parametrize("form", ["exact", "factored"])
def test_minimal_kfac_takes_kfacs_steps(form: str) -> None:
    steps, every = 7, 3  # inversions at steps 0, 3, 6, with factor updates in between
    reference, minimal = _mlp(), _mlp()
    options = KFACOptions(inverse_every=every, damping_form=form)  # type: ignore[arg-type]
    _train(reference, KFAC(reference, lr=0.1, damping=0.05, momentum=0.9, options=options), steps)
    _train(
        minimal,
        MinimalKFAC(minimal, lr=0.1, damping=0.05, momentum=0.9, form=form, inverse_every=every),
        steps,
    )
    start = _mlp()
    for ours, theirs, initial in zip(
        minimal.parameters(), reference.parameters(), start.parameters(), strict=True
    ):
        assert (theirs - initial).abs().max() > 1e-2  # the runs really moved
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_minimal_kfac_refuses_other_layers() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        MinimalKFAC(model, lr=0.1, damping=1.0, momentum=0.0)
