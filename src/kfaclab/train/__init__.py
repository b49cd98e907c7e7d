"""One trial: ``run_trial(TrialConfig) -> TrialResult``, seeded, observed, and fast.

The study calls this thousands of times; it knows nothing of Optuna. Module map:
``validate`` (config checks), ``schedule`` (steps, batches, learning rate), ``build`` (seeded model,
optimizer), ``observe`` (evaluation, gradient histograms), ``loop`` (the training loop), ``steps``
(what the loop calls per step; autograd with any optimizer), ``fused_mlp`` (build_mlp's forward
and backward by hand), ``fused`` and ``fused_sgd`` (the K-FAC and SGD steps on it: the fast path
of every sweep trial of the MLP), ``population*`` (many trials stepped as one batched model).
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
