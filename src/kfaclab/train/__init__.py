"""One trial: ``run_trial(TrialConfig) -> TrialResult``, seeded, observed, and fast.

The study calls this thousands of times; it knows nothing of Optuna. Module map:
``validate`` (config checks), ``schedule`` (steps, batches, learning rate), ``build`` (seeded model,
optimizer), ``observe`` (evaluation, gradient histograms), ``loop`` (the training loop), ``steps``
(what the loop calls per step; autograd with any optimizer) and ``fused`` (the same for a
fusable K-FAC trial, by hand).
"""

from kfaclab.train.loop import Progress, run_trial
from kfaclab.train.schedule import eval_points, lr_schedule, steps_per_epoch, total_steps
from kfaclab.train.validate import validate_config

__all__ = [
    "Progress",
    "eval_points",
    "lr_schedule",
    "run_trial",
    "steps_per_epoch",
    "total_steps",
    "validate_config",
]
