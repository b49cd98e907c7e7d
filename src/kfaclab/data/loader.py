"""Whole datasets as tensors on a device, loaded once per process, and a report of what is found.

The trial runner trains with index slices of these tensors, never a per-sample DataLoader, and a
study worker loads the same dataset for thousands of trials: the first load reads, inflates and
verifies the files (about a second for MNIST); later loads with the same arguments return the same
``Dataset`` object from an in-process cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kfaclab.data.catalog import DatasetSpec, FileSpec, get_spec
from kfaclab.data.download import download_file
from kfaclab.data.sources import (
    FileCheckError,
    cache_dir,
    check_file,
    describe_dirs,
    locate,
    search_dirs,
)
from kfaclab.errors import UsageError

MIRRORS_ENV = "KFACLAB_MIRRORS"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset as four tensors on one device. Shared by every caller: treat it as read-only.

    train_x: (60000, 784) float in [0, 1], pixels / 255, rows are images in row-major order
    train_y: (60000,) int64 class labels in 0..9
    test_x:  (10000, 784) like train_x
    test_y:  (10000,) like train_y
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str


@dataclass(frozen=True)
class FileReport:
    """What ``verify_dataset`` found for one file. ``problem`` is None exactly when ``ok``."""

    dataset: str
    file: str
    path: Path | None
    ok: bool
    problem: str | None


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load ``name`` ("mnist" or "fashion-mnist") as tensors on ``device``.

    Each file is taken from the first of: ``data_dir``, the user cache
    (``$XDG_CACHE_HOME/kfaclab/<name>`` or ``~/.cache/kfaclab/<name>``), a system package folder
    (Fashion-MNIST: /usr/share/datasets/fashion-mnist), and, if ``download``, the public
    ``mirrors`` (default: the dataset's own), saved into the user cache. A file that is found but
    fails its check is an error, never skipped: it is a damaged file the user should know about.
    Every problem is a one-line ``UsageError`` naming the file.
    """
    spec = get_spec(name)
    folder = _resolve_dir(data_dir)
    dirs = search_dirs(spec, folder)
    mirror_list = mirrors_of(spec, mirrors) if download else ()
    return _load(spec, dirs, resolve_device(device), _resolve_dtype(dtype), mirror_list)


def mirrors_of(spec: DatasetSpec, mirrors: Sequence[str] | None = None) -> tuple[str, ...]:
    """``mirrors`` if given, else ``$KFACLAB_MIRRORS`` (comma-separated base URLs: a local copy
    behind a firewall, a test server), else the dataset's own public mirrors."""
    if mirrors is not None:
        return tuple(mirrors)
    env = os.environ.get(MIRRORS_ENV, "")
    listed = tuple(m.strip() for m in env.split(",") if m.strip())
    return listed or spec.mirrors


def ensure_dataset(
    name: str, data_dir: str | Path | None = None, *, mirrors: Sequence[str] | None = None
) -> Path:
    """Find every file of ``name`` (downloading what is missing, once, under the cache's lock)
    and return the folder of the first one: what a sweep does in its parent process, so that
    its workers find the files in place rather than each downloading its own copy."""
    spec = get_spec(name)
    dirs = search_dirs(spec, _resolve_dir(data_dir))
    found = [_find_or_fetch(spec, file, dirs, mirrors_of(spec, mirrors))[0] for file in spec.files]
    return found[0].parent


def verify_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = False
) -> list[FileReport]:
    """Check each file of ``name`` where ``load_dataset`` would find it; never raises for a file."""
    spec = get_spec(name)
    dirs = search_dirs(spec, _resolve_dir(data_dir))
    mirrors = mirrors_of(spec) if download else ()
    reports = []
    for file in spec.files:
        try:
            path, _ = _find_or_fetch(spec, file, dirs, mirrors)
            reports.append(FileReport(spec.name, file.name, path, True, None))
        except FileCheckError as exc:
            reports.append(FileReport(spec.name, file.name, exc.path, False, str(exc)))
        except UsageError as exc:
            reports.append(FileReport(spec.name, file.name, None, False, str(exc)))
    return reports


def clear_cache() -> None:
    """Drop the in-process copies (frees their memory; the next load reads the files again)."""
    _load.cache_clear()


# Keyed by the search folders (which include the cache folder as the environment had it), the
# normalised device and the dtype, so a changed XDG_CACHE_HOME or "cuda" vs "cuda:0" cannot alias.
# Small: each MNIST entry is ~190 MB in float32 (~380 MB in float64).
@functools.lru_cache(maxsize=2)
def _load(
    spec: DatasetSpec,
    dirs: tuple[Path, ...],
    device: torch.device,
    dtype: torch.dtype,
    mirrors: tuple[str, ...],
) -> Dataset:
    arrays = [_find_or_fetch(spec, file, dirs, mirrors)[1] for file in spec.files]
    train_x, train_y, test_x, test_y = arrays
    return Dataset(
        train_x=_images(train_x, device, dtype),
        train_y=_labels(train_y, device),
        test_x=_images(test_x, device, dtype),
        test_y=_labels(test_y, device),
        name=spec.name,
    )


def _find_or_fetch(
    spec: DatasetSpec, file: FileSpec, dirs: tuple[Path, ...], mirrors: tuple[str, ...]
) -> tuple[Path, np.ndarray]:
    found = locate(file, dirs)
    if found is not None:
        return found
    where = describe_dirs(dirs)
    if not mirrors:
        raise UsageError(f"{file.name}: not found in {where} (download disabled)")
    # One download per machine: processes that find the file missing at the same moment (a
    # sweep's workers) queue on the cache's lock, and all but the first then find it in place.
    with _cache_lock(cache_dir(spec.name).parent / f".{spec.name}.lock"):
        found = locate(file, dirs)
        if found is not None:
            return found
        try:
            path = download_file(file, cache_dir(spec.name), mirrors)
        except UsageError as exc:
            raise UsageError(f"{exc}; not found locally in {where}") from exc
    # Read back what was verified on the way in: the loaded array is the cached file's content.
    return path, check_file(path, file)


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (flock: the kernel releases it if the holder dies).
    Beside the dataset's folder, not in it, so the folder holds the dataset's files only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:
        raise UsageError(
            f"{path.parent}: cannot write the download ({exc.strerror or exc})"
        ) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _images(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # (N, 28, 28) uint8 -> (N, 784). Moved as uint8 (4x less to copy to a GPU), scaled there.
    flat = torch.from_numpy(array.reshape(array.shape[0], -1)).to(device)
    return flat.to(dtype).div_(255.0)


def _labels(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.int64)).to(device)


def _resolve_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        return None
    folder = Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"data_dir must be an existing folder, got {str(data_dir)!r}")
    return folder


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists on this machine (``cuda`` → the current CUDA
    device), else a one-line ``UsageError``: ``torch.device("nope")`` or a missing GPU would
    otherwise fail deep inside the first tensor operation."""
    if not isinstance(device, str | torch.device):
        raise UsageError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device must be available, got {str(device)!r} (no CUDA device)")
        count = torch.cuda.device_count()
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= count:
            raise UsageError(
                f"device must be available, got {str(device)!r} ({count} CUDA device(s))"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device must be available, got {str(device)!r} (no MPS device)")
    elif resolved.type != "cpu":
        raise UsageError(f"device must be cpu, cuda[:N] or mps, got {str(device)!r}")
    return resolved


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise UsageError(
            f"dtype must be a floating-point torch dtype such as float32, got {dtype!r}"
        )
    return resolved
