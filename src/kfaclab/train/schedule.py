"""How long a trial runs, which examples each step sees, and the learning rate at each step."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from kfaclab.trial_types import TrialConfig


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Steps in one pass over the data. The last, partial batch is kept (60000 / 128 → 468 full
    batches + one of 96 = 469 steps), so every example is seen exactly once per epoch; this is the
    DESIGN's "one epoch = 469 iterations"."""
    return math.ceil(n_examples / batch_size)


def total_steps(config: TrialConfig, n_examples: int) -> int:
    """T: ``config.steps`` when set (it may cross epoch boundaries), else whole epochs."""
    if config.steps is not None:
        return config.steps
    return config.epochs * steps_per_epoch(n_examples, config.batch_size)


def lr_schedule(lr: float, decay: float, total: int) -> list[float]:
    """η_t = η₀ (1 − (1 − α) t / T) for the steps t = 0 … T−1 (α = ``decay``, T = ``total``).

    Endpoints: η_0 = η₀ exactly, and the last step uses η_{T−1} = η₀ (1 − (1 − α)(T − 1)/T); the
    value α·η₀ is reached at t = T, i.e. when training ends (the formula of the paper's linear
    decay read as "the rate after T steps is α·η₀"). Precomputed as Python floats so the loop
    only assigns them.
    """
    return [lr * (1.0 - (1.0 - decay) * t / total) for t in range(total)]


def batch_indices(
    n_examples: int, batch_size: int, total: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Yield the index tensor of each of the ``total`` steps: slices of a fresh seeded permutation
    per epoch (views, no copy); a new permutation starts when one is used up."""
    done = 0
    while done < total:
        perm = torch.randperm(n_examples, generator=generator).to(device)
        for start in range(0, n_examples, batch_size):
            if done == total:
                return
            yield perm[start : start + batch_size]
            done += 1


def eval_points(requested: tuple[int, ...] | None, total: int) -> list[int]:
    """Sorted evaluation steps within [0, T], always ending with T (the trial's value).

    The default is T alone: one full-training-set pass costs about a sixth of a whole SGD trial
    (60 000 forward rows against 469 forward+backward batches of 128), so even one extra default
    point would break the 15 % budget for observation; ask for more with ``eval_steps``. Requested
    steps beyond T are dropped, so one protocol's steps serve shorter smoke runs too.
    """
    steps = {s for s in (requested or ()) if s <= total}
    steps.add(total)
    return sorted(steps)
