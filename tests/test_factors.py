"""The factor updates, including the blank-column shortcut, against plain dense formulas
(the update on each available device, the formulas on the CPU)."""

from __future__ import annotations

import pytest
import torch

from kfaclab.optim.factors import MIN_COLUMNS, update_input_factor


def _dense(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    if with_bias:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    return x.T @ x / x.shape[0]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("blank_share", [0.0, 0.4])
def test_input_factor_with_blank_columns_matches_dense(
    with_bias: bool, blank_share: float, device: torch.device
) -> None:
    g = torch.Generator().manual_seed(0)
    width = MIN_COLUMNS + 44
    batches = []
    for _ in range(3):
        x = torch.rand(32, width, generator=g, dtype=torch.float64)
        blank = torch.randperm(width, generator=g)[: int(blank_share * width)]
        x[:, blank] = 0.0  # different blank columns in every batch
        batches.append(x)
    decay = 0.8
    running = None
    expected = None
    for x in batches:
        running = update_input_factor(running, x.to(device), with_bias, decay)
        batch = _dense(x, with_bias)
        expected = batch if expected is None else decay * expected + (1 - decay) * batch
    assert running is not None and expected is not None
    torch.testing.assert_close(running.cpu(), expected, rtol=1e-12, atol=1e-14)
