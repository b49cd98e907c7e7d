"""Where a dataset's files are looked for, and the full check of one file (structure, sha256)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kfaclab.data.catalog import KNOWN_FILES, DatasetSpec, FileSpec
from kfaclab.data.idx import idx_size, parse_idx, read_bytes
from kfaclab.errors import UsageError


class FileCheckError(UsageError):
    """A file that is present but is not the expected one; ``path`` says which file."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class ForeignFileError(FileCheckError):
    """An intact file of another known dataset (same file name, different content)."""


def cache_dir(dataset: str) -> Path:
    """``$XDG_CACHE_HOME/kfaclab/<dataset>``, or ``~/.cache/kfaclab/<dataset>``.

    Read from the environment on every call, so that tests (and users) can redirect it.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative path.
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "kfaclab" / dataset


def search_dirs(spec: DatasetSpec, data_dir: Path | None) -> tuple[Path, ...]:
    """The local folders, in search order: explicit (``<dir>/<dataset>`` first, so one folder
    can hold both datasets), the user cache, system package folders."""
    explicit = (data_dir / spec.name, data_dir) if data_dir is not None else ()
    return (*explicit, cache_dir(spec.name), *spec.system_dirs)


def candidates(file: FileSpec, dirs: tuple[Path, ...]) -> Iterator[Path]:
    """Existing ``<name>`` or ``<name>.gz`` files in ``dirs``; raw first, it needs no inflating."""
    for folder in dirs:
        for candidate in (folder / file.name, folder / f"{file.name}.gz"):
            if candidate.is_file():
                yield candidate


def locate(file: FileSpec, dirs: tuple[Path, ...]) -> tuple[Path, np.ndarray] | None:
    """The first candidate that is ``file``, decoded; None if there is none.

    Another dataset's intact file is skipped (a folder of MNIST is not a broken Fashion-MNIST);
    any other problem raises ``FileCheckError``: a damaged file is never silently passed over.
    """
    for path in candidates(file, dirs):
        try:
            return path, check_file(path, file)
        except ForeignFileError:
            continue
    return None


def check_file(path: Path, file: FileSpec, label: str | Path | None = None) -> np.ndarray:
    """Decode ``path`` and check that it is exactly ``file``, else a one-line ``FileCheckError``.

    Structure is checked before the checksum so a wrong or damaged file is described by what is
    wrong with it (truncated, wrong magic, wrong shape) rather than only by a hash mismatch.
    ``label`` names the file in messages (default: the path), e.g. the URL it came from.
    """
    label = path if label is None else label
    try:
        data = read_bytes(path, label, limit=idx_size(file.shape))  # a bomb stops there
        array = parse_idx(data, label)
    except FileCheckError:
        raise
    except UsageError as exc:
        raise FileCheckError(str(exc), path) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256 and digest in KNOWN_FILES:
        raise ForeignFileError(f"{label}: holds {KNOWN_FILES[digest]}, not the file wanted", path)
    if array.shape != file.shape:
        raise FileCheckError(f"{label}: shape {array.shape}, expected {file.shape}", path)
    if digest != file.sha256:
        raise FileCheckError(
            f"{label}: sha256 mismatch, expected {file.sha256}, got {digest}", path
        )
    return array


def describe_dirs(dirs: tuple[Path, ...]) -> str:
    return ", ".join(str(d) for d in dirs)
