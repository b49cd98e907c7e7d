"""Where the benchmarks find MNIST: the one place that knows the project's shared copy.

``$KFACLAB_MNIST_DIR`` if set, else ``../shared/data/mnist`` beside the repository when it exists,
else None (``load_dataset`` then looks in the user cache and downloads, verifying every file).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def mnist_dir() -> Path | None:
    explicit = os.environ.get("KFACLAB_MNIST_DIR")
    if explicit:
        return Path(explicit)
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None
