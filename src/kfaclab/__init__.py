"""kfaclab: a laboratory for the damping of K-FAC natural-gradient descent."""

from kfaclab.curvature.conventions import from_b2_scaled, to_b2_scaled
from kfaclab.damping import (
    Constant,
    Damping,
    ExponentialDecay,
    LevenbergMarquardt,
    Schedule,
    SpectrumRelative,
    build_damping,
)
from kfaclab.optim import KFAC, KFACOptions, Speedups

__all__ = [
    "KFAC",
    "Constant",
    "Damping",
    "ExponentialDecay",
    "KFACOptions",
    "LevenbergMarquardt",
    "Schedule",
    "SpectrumRelative",
    "Speedups",
    "build_damping",
    "from_b2_scaled",
    "to_b2_scaled",
]
__version__ = "0.2.0"
