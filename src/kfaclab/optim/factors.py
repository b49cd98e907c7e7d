"""Kronecker factors of one nn.Linear layer from captured inputs and output gradients.

A = (1/N) Σ āᵢāᵢᵀ with āᵢ = [aᵢ; 1] (the 1 for the bias, last), G = (1/N) Σ gᵢgᵢᵀ with
gᵢ = ∂ℓᵢ/∂sᵢ. Running factors: the first update *sets* the factor to the batch statistic (an
identity initialisation would be hidden extra damping), later ones take the exponential moving
average F ← βF + (1−β)F̂.
"""

from __future__ import annotations

import torch


def _update(running: torch.Tensor | None, rows: torch.Tensor, decay: float) -> torch.Tensor:
    """βF + (1−β)(rowsᵀrows)/N in one fused GEMM (no temporary for the batch statistic)."""
    n = rows.shape[0]
    if running is None:
        return (rows.T @ rows).div_(n)
    return running.mul_(decay).addmm_(rows.T, rows, alpha=(1.0 - decay) / n)


def update_input_factor(
    running: torch.Tensor | None, inputs: torch.Tensor, with_bias: bool, decay: float
) -> torch.Tensor:
    """inputs: (N, in) → running A of shape (in+1, in+1) with bias, else (in, in)."""
    if with_bias:
        inputs = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], dim=1)
    return _update(running, inputs, decay)


def update_output_factor(
    running: torch.Tensor | None, output_grads: torch.Tensor, scale: float, decay: float
) -> torch.Tensor:
    """output_grads: (N, out), gᵢ = scale · output_grads[i] → running G of shape (out, out)."""
    return _update(running, output_grads * scale, decay)
