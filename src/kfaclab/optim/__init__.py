"""The K-FAC optimizer, usable alone in any PyTorch training loop, and its one engine."""

from kfaclab.optim.engine import KFACEngine
from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.kfac import KFAC
from kfaclab.optim.options import KFACOptions, Speedups, applicable

__all__ = ["KFAC", "InputStreamCache", "KFACEngine", "KFACOptions", "Speedups", "applicable"]
