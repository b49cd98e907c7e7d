"""Rerun workers hold the K-FAC input streams of one seed at most (analysis/replication/pool.py).

A stream is a batch order; reruns change seed, so an earlier seed's stream never matches again.
Kept, dead streams made each rerun worker ~1.7 GB; the test fails if they are kept."""

from __future__ import annotations

import dataclasses

from cli_helpers import MNIST
from kfaclab.analysis.replication.pool import train_rerun
from kfaclab.train import run_trial
from kfaclab.train.build import INPUT_STREAMS
from kfaclab.trial_types import TrialConfig

CONFIG = TrialConfig(
    optimizer="kfac",
    lr=0.05,
    damping=0.1,
    depth=3,
    width=16,
    steps=12,
    inverse_every=4,
    eval_steps=(12,),
    histogram_steps=(),
    data_dir=str(MNIST),
)


def test_a_new_seed_drops_the_streams_of_the_last_and_a_repeat_follows_its_own() -> None:
    INPUT_STREAMS.clear()
    try:
        train_rerun(dataclasses.replace(CONFIG, seed=1))
        per_seed = len(INPUT_STREAMS)
        assert per_seed >= 1  # layer 1 of the MLP recorded its stream
        second = train_rerun(dataclasses.replace(CONFIG, seed=2))
        assert len(INPUT_STREAMS) == per_seed  # seed 1's stream is gone, not kept beside it
        followed = INPUT_STREAMS.followed_updates
        again = train_rerun(dataclasses.replace(CONFIG, seed=2))
        assert INPUT_STREAMS.followed_updates > followed  # the same seed still shares its work
        assert again.step_losses == second.step_losses
        INPUT_STREAMS.clear()
        fresh = run_trial(dataclasses.replace(CONFIG, seed=2))
        assert fresh.step_losses == second.step_losses  # sharing changes no bit
    finally:
        INPUT_STREAMS.clear()
