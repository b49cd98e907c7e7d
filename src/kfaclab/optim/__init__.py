"""The K-FAC optimizer, usable alone in any PyTorch training loop."""

from kfaclab.optim.kfac import KFAC

__all__ = ["KFAC"]
