"""The pieces of a trial built from its config: the seeded model and the optimizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch._dynamo  # why: see _PREIMPORTED
from torch import nn

from kfaclab.models import build_cnn, build_mlp
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.options import KFACOptions
from kfaclab.trial_types import TrialConfig

# torch.optim imports torch._dynamo the first time an optimizer is built (about 2 s); importing it
# with this module keeps that one-off cost out of the first trial's ``seconds``.
_PREIMPORTED = (torch._dynamo,)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# One per process: trials that see the same batches in the same order (a sweep's trials share the
# data seed) share layer 1's input-factor updates and decompositions, which depend on the data
# alone. Inputs are checked for bitwise equality, so results are bitwise those of a fresh run.
INPUT_STREAMS = InputStreamCache()


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNGs seeded by ``seed`` and restore them afterwards.

    The model's default initialisation and K-FAC's Monte-Carlo label sampling draw from the global
    generator; forking it keeps a trial reproducible without disturbing the caller's RNG stream.
    (The data permutation has its own ``torch.Generator``, see ``schedule.batch_indices``.)
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(config: TrialConfig, device: torch.device) -> nn.Sequential:
    # The builders initialise on the CPU in float32, so a seed gives the same weights on any
    # device; a float64 trial starts from those float32 values, converted exactly.
    if config.model == "cnn":
        model = build_cnn(activation=config.activation, init=config.init)
    else:
        model = build_mlp(
            depth=config.depth, width=config.width, activation=config.activation, init=config.init
        )
    return model.to(device=device, dtype=DTYPES[config.dtype])


def linear_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """The layers K-FAC preconditions (nn.Linear and nn.Conv2d) by module name ("fc1" … "fc6"
    for ``build_mlp``): the names K-FAC's diagnostics use, so histograms and curvature of one
    layer share a key."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def build_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        # torch's heavy ball: v ← μv + g, θ ← θ − ηv — the same form as KFAC's momentum, so a
        # learning rate means the same thing for both optimizers.
        # foreach: one multi-tensor kernel per operation instead of a Python loop over the 12
        # parameters (torch picks it only on GPUs); the same element-wise operations, so the
        # trajectory is bitwise that of the loop (tests/test_train.py checks it).
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, foreach=True
        )
    # Imported here so an SGD trial does not pay for (or depend on) the K-FAC machinery.
    from kfaclab.damping import build_damping
    from kfaclab.optim import KFAC, Speedups, applicable

    options = kfac_options(config)
    # run_trial's .grad is exactly the captured batch's (batch_gradients_only); layer 1's updates
    # stay in A's eigenbasis between inversions (the loop calls materialize() before every
    # evaluation, which bypasses the hooks), and backward skips layer 1's weight gradient, which
    # that step never reads (the loop restores it where it records gradient histograms). Only
    # what applies to this trial's options is asked for.
    wanted = Speedups(INPUT_STREAMS, True, deferred_rotation=True, skip_weight_grads=True)
    return KFAC(
        model,
        lr=config.lr,
        damping=build_damping(config.damping),
        momentum=config.momentum,
        options=options,
        speedups=applicable(wanted, options, 0.0),
    )


def kfac_options(config: TrialConfig) -> KFACOptions:
    """The engine's mathematics for a trial (both backends)."""
    return KFACOptions(
        factor_decay=config.factor_decay,
        factor_every=config.factor_every,
        inverse_every=config.inverse_every,
        damping_form=config.damping_form,
        fisher=config.fisher,
        factor_init=config.factor_init,
        eigen_floor=config.eigen_floor,
        kl_clip=config.kl_clip,
        conv_approx=config.conv_approx,
    )
