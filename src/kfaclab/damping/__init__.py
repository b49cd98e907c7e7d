"""How λ evolves during training: one small ABC and its strategies (see base.py)."""

from kfaclab.damping.base import Damping, LayerSpectrum, StepOutcome
from kfaclab.damping.constant import Constant
from kfaclab.damping.levenberg_marquardt import LevenbergMarquardt
from kfaclab.damping.loss_trend import LossTrend
from kfaclab.damping.schedule import ExponentialDecay, LinearDecay, Schedule
from kfaclab.damping.spec import KINDS, build_damping
from kfaclab.damping.spectrum_relative import SpectrumRelative

__all__ = [
    "KINDS",
    "Constant",
    "Damping",
    "ExponentialDecay",
    "LayerSpectrum",
    "LevenbergMarquardt",
    "LinearDecay",
    "LossTrend",
    "Schedule",
    "SpectrumRelative",
    "StepOutcome",
    "build_damping",
]
