"""Equality of two runs that should be identical, on every device.

On the CPU the kernels are deterministic: the same operations on the same values give the same
bits, and the tests say so with torch.equal. CUDA promises that only under
torch.use_deterministic_algorithms (atomic adds in some kernels, cuBLAS workspaces), which the
library does not ask for; there the same claim is checked to a stated tolerance instead: rtol
1e-5 in float32, 1e-10 in float64 (room for a few roundings amplified over a short run, not for
a skipped or repeated update), integers and booleans exactly.
"""

from __future__ import annotations

import pytest
import torch

# dtype → (rtol, atol) on CUDA; a dtype missing here is compared exactly.
CUDA_TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12)}


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bitwise on the CPU; on CUDA within CUDA_TOLERANCES of ``actual``'s dtype."""
    tolerance = CUDA_TOLERANCES.get(actual.dtype)
    if actual.device.type == "cpu" or tolerance is None:
        assert torch.equal(actual, expected)
    else:
        rtol, atol = tolerance
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_same_float(actual: float, expected: float, device: torch.device) -> None:
    """A number computed on ``device`` (a damping λ, a loss): exactly on the CPU, to float32's
    CUDA tolerance on CUDA."""
    if device.type == "cpu":
        assert actual == expected
    else:
        assert actual == pytest.approx(expected, rel=CUDA_TOLERANCES[torch.float32][0])
