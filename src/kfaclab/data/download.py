"""Fetching a dataset file from public mirrors: retries with backoff, verification, atomic write.

A file only ever appears in the cache under its final name after its decompressed sha256 has been
checked, and it gets there by ``os.replace`` of a temporary file in the same folder. So several
worker processes may download at once, and an interrupted or corrupt download never leaves
anything that a later load would trust.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from kfaclab.data.catalog import FileSpec
from kfaclab.data.idx import idx_size
from kfaclab.data.sources import check_file
from kfaclab.errors import UsageError

_CHUNK = 1 << 16
_USER_AGENT = "kfaclab (+https://pypi.org/project/kfaclab)"


class _TransientError(Exception):
    """Worth another attempt at the same mirror: timeouts, resets, 5xx, short reads."""


class _MirrorFailedError(Exception):
    """This mirror will not give a good file: 404, or bytes that fail verification."""


def download_file(
    file: FileSpec,
    dest_dir: Path,
    mirrors: Sequence[str],
    *,
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``<file.name>.gz`` from the first mirror that serves a verified copy.

    Each mirror gets up to ``attempts`` tries for transient failures, sleeping ``backoff_s``,
    then twice that, and so on, between them. Returns the path of the verified file in ``dest_dir``.
    Raises ``UsageError`` (one line, every mirror's reason) if no mirror delivers.
    """
    if attempts < 1:
        raise UsageError(f"attempts must be >= 1, got {attempts}")
    filename = f"{file.name}.gz"
    failures: list[str] = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{filename}"
        try:
            return _fetch_from_mirror(url, file, dest_dir, attempts, backoff_s, timeout_s)
        except _MirrorFailedError as exc:
            failures.append(f"{url}: {exc}")
    reasons = "; ".join(failures) if failures else "no mirrors configured"
    raise UsageError(f"{filename}: download failed ({reasons})")


def _fetch_from_mirror(
    url: str, file: FileSpec, dest_dir: Path, attempts: int, backoff_s: float, timeout_s: float
) -> Path:
    target = dest_dir / f"{file.name}.gz"
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        tmp = _temp_beside(target)
        try:
            _stream(url, tmp, timeout_s, desc=target.name, limit=_most_compressed(file))
            check_file(tmp, file, label=url)
            os.replace(tmp, target)
            return target
        except urllib.error.HTTPError as exc:
            # Client errors other than timeout / rate limiting will not change on a retry.
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise _MirrorFailedError(f"HTTP {exc.code}") from exc
            last = f"HTTP {exc.code}"
        except UsageError as exc:
            # Served bytes that fail verification: a bad mirror, not bad luck.
            raise _MirrorFailedError(str(exc).removeprefix(f"{url}: ")) from exc
        except (_TransientError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        finally:
            tmp.unlink(missing_ok=True)
    raise _MirrorFailedError(f"{last} (after {attempts} attempts)")


def _temp_beside(target: Path) -> Path:
    """An empty temporary file in the target's folder, so os.replace is an atomic rename."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        # Not the mirror's fault: stop at once rather than blame every mirror.
        raise UsageError(
            f"{target.parent}: cannot write the download ({exc.strerror or exc})"
        ) from exc
    os.close(fd)
    return Path(name)


def _most_compressed(file: FileSpec) -> int:
    """The most bytes a gzip of ``file`` can take: its IDX size plus gzip's worst case (stored
    blocks: 5 bytes per 16 KiB, and a header), with room to spare. A mirror that sends more is
    refused there, never written to the disk whole (an endless or huge response)."""
    size = idx_size(file.shape)
    return size + size // 100 + (1 << 16)


def _stream(url: str, out_path: Path, timeout_s: float, desc: str, limit: int) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        # disable=None: a bar on a terminal, silence in logs and tests.
        with (
            out_path.open("wb") as out,
            tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                disable=None,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise UsageError(f"{url}: serves more than {limit} bytes, more than it can be")
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    # http.client returns a short body without raising when the peer closes early.
    if total is not None and received != total:
        raise _TransientError(f"connection closed after {received} of {total} bytes")
