"""What the step benchmarks train with, and their refusal to time a run that did not train.

A K-FAC run that diverges times a cheaper step than K-FAC's: once its factors are NaN every
decomposition fails at once. With lr 0.05 and λ = 1e-2, K-FAC's loss passed 1e20 on MNIST within
10 steps and was NaN on Fashion-MNIST within 30; lr 0.02 with λ = 0.1 trains on both. The cost of
a step does not depend on λ.
"""

from __future__ import annotations

import torch

from kfaclab import KFAC

LR, DAMPING = 0.02, 0.1


def require_trained(script: str, opt: torch.optim.Optimizer, last_loss: torch.Tensor) -> None:
    """Exit with one line if the run diverged or a decomposition failed."""
    failures = opt.counters["decomposition_failures"] if isinstance(opt, KFAC) else 0
    if failures or not torch.isfinite(last_loss):
        raise SystemExit(
            f"{script}: {type(opt).__name__} diverged (last loss {float(last_loss):.3g}, "
            f"{failures:g} failed decompositions): its timing would not be of a K-FAC step"
        )
