"""The K-FAC optimizer, usable alone in any PyTorch training loop."""

from kfaclab.optim.input_stream import InputStreamCache
from kfaclab.optim.kfac import KFAC

__all__ = ["KFAC", "InputStreamCache"]
