"""The allowed values of every enumerated option, and the defaults of K-FAC's mathematics.

One home: the optimizer's options (``kfaclab.optim.options``), the trial config and its
validation, the protocol schema and the CLI all import these, so adding a value (a new Fisher
type, a new activation) is a change in one place. Plain data, no torch import.
"""

from __future__ import annotations

from typing import Literal, get_args

OptimizerName = Literal["sgd", "kfac"]
DampingForm = Literal["exact", "factored"]
FisherType = Literal["empirical", "mc"]
# "batch": the first update sets a running factor to the batch statistic (docs/interfaces.md);
# "identity": A₀ = I, G₀ = I and the EMA from there (what several popular implementations do:
# extra damping whose weight decays as factor_decay**updates).
FactorInit = Literal["batch", "identity"]
LossReduction = Literal["mean", "sum"]
# How an nn.Conv2d layer's spatial locations enter its Kronecker factors (Eschenhagen et al.
# 2023): "expand" treats locations like extra examples (Grosse & Martens' KFC), "reduce" sums
# output gradients and averages patches over them first. See kfaclab.optim.conv.
ConvApprox = Literal["expand", "reduce"]
ModelName = Literal["mlp", "cnn"]
DatasetName = Literal["mnist", "fashion-mnist"]
Activation = Literal["relu", "tanh", "identity"]
DtypeName = Literal["float32", "float64"]
# Weight initialisation of the models' nn.Linear and nn.Conv2d layers (kfaclab.models.initialise):
# "torch" is PyTorch's default, untouched; "he" and "glorot" redraw weights, biases set to 0.
InitName = Literal["torch", "he", "glorot"]

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
DAMPING_FORMS: tuple[str, ...] = get_args(DampingForm)
FISHER_TYPES: tuple[str, ...] = get_args(FisherType)
FACTOR_INITS: tuple[str, ...] = get_args(FactorInit)
LOSS_REDUCTIONS: tuple[str, ...] = get_args(LossReduction)
CONV_APPROXIMATIONS: tuple[str, ...] = get_args(ConvApprox)
MODELS: tuple[str, ...] = get_args(ModelName)
DATASETS: tuple[str, ...] = get_args(DatasetName)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
DTYPES: tuple[str, ...] = get_args(DtypeName)
INITS: tuple[str, ...] = get_args(InitName)

# Defaults of the K-FAC mathematics (the library's ``KFAC`` and a trial's ``TrialConfig``).
DEFAULT_DAMPING = 1e-3
DEFAULT_FACTOR_DECAY = 0.95
DEFAULT_FACTOR_EVERY = 1
DEFAULT_INVERSE_EVERY = 10
DEFAULT_DAMPING_FORM: DampingForm = "exact"
DEFAULT_FISHER: FisherType = "empirical"
DEFAULT_FACTOR_INIT: FactorInit = "batch"
DEFAULT_CONV_APPROX: ConvApprox = "expand"  # the classic KFC, and curvlinops' default
DEFAULT_INIT: InitName = "torch"
DEFAULT_EIGEN_FLOOR = 0.0  # eigenvalues of A and G below this are set to 0 before damping
