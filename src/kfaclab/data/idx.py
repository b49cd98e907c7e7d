"""The IDX format of MNIST-like files, read strictly.

Layout (all integers big-endian): two zero bytes, a dtype code, the number of dimensions n, then n
uint32 sizes, then the data in C order. Every structural problem becomes a one-line ``UsageError``
that names the file, because a half-downloaded or mislabelled file otherwise surfaces much later
as a baffling shape error or a silently wrong training run.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from kfaclab.errors import UsageError
from kfaclab.gunzip import InflateError, gunzip

# dtype code -> big-endian numpy dtype, as defined by the format.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"


# The most an IDX file of unknown shape may hold (read_idx on an arbitrary file): 2 GiB, far
# above every dataset kfaclab knows (MNIST's largest file is 47 MB), and below a memory blow-up.
MAX_IDX_BYTES = 2 << 30


def idx_size(shape: tuple[int, ...], itemsize: int = 1) -> int:
    """Bytes of an IDX file of ``shape``: the header (4 + 4 per dimension) and the data."""
    return 4 + 4 * len(shape) + math.prod(shape) * itemsize


def read_bytes(path: Path, label: str | Path | None = None, limit: int = MAX_IDX_BYTES) -> bytes:
    """The file's IDX bytes, decompressed if it is gzip (detected by content, not by suffix).

    ``label`` names the file in errors (default: the path), e.g. the URL of a download.
    ``limit``: the most bytes the IDX data may have (the expected size, when the file is known):
    a gzip "bomb" is refused after inflating ``limit`` bytes, never inflated whole.
    """
    label = path if label is None else label
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
            if head != _GZIP_MAGIC:
                raw = head + handle.read(limit + 1 - len(head))
                if len(raw) > limit:
                    raise UsageError(f"{label}: larger than the {limit} bytes expected")
                return raw
            handle.seek(0)
            return gunzip(handle, limit)
    except InflateError as exc:
        if "more than" in str(exc):
            raise UsageError(f"{label}: inflates to more than the {limit} bytes expected") from None
        raise UsageError(f"{label}: corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{label}: cannot read ({exc.strerror or exc})") from exc


def parse_idx(data: bytes, source: str | Path) -> np.ndarray:
    """Decode IDX bytes to a native-endian, writable array; ``source`` names the file in errors."""
    if len(data) < 4:
        raise UsageError(f"{source}: truncated: {len(data)} bytes, an IDX header needs at least 4")
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0:
        raise UsageError(
            f"{source}: wrong magic number 0x{magic:08X}, an IDX file starts with two zero bytes"
        )
    if code not in IDX_DTYPES:
        raise UsageError(
            f"{source}: wrong magic number 0x{magic:08X}, unknown dtype code 0x{code:02X}"
        )
    if ndim == 0:
        raise UsageError(f"{source}: wrong magic number 0x{magic:08X}, zero dimensions")

    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(
            f"{source}: truncated: {len(data)} bytes, the header of a {ndim}-d IDX file is {header}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(shape)
    expected, actual = count * dtype.itemsize, len(data) - header
    if actual < expected:
        raise UsageError(
            f"{source}: truncated: header says shape {shape}, {expected} data bytes, found {actual}"
        )
    if actual > expected:
        raise UsageError(
            f"{source}: {actual - expected} unexpected bytes after the data of shape {shape}"
        )
    # astype copies: the result owns its memory (torch.from_numpy wants writable arrays) and is
    # in native byte order (torch has no big-endian dtypes).
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw, checking its header against its length."""
    path = Path(path)
    return parse_idx(read_bytes(path), path)
