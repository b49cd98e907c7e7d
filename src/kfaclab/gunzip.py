"""Bounded gzip decompression: never inflate more than the caller expects.

``gzip.decompress`` inflates a whole file however large it grows: 2 MB of crafted gzip becomes
2 GiB in memory (a "gzip bomb"). Every compressed input kfaclab reads comes from somewhere it does
not control (a dataset mirror, a shared database's artifact table, a copied folder), so it is
inflated here in chunks, and refused as soon as it would exceed ``limit`` bytes — its memory use
is bounded by ``limit`` plus one chunk, whatever the input claims.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

_CHUNK = 1 << 20


class InflateError(ValueError):
    """Not gzip, cut short, or larger than allowed; the message says which, in one line."""


def gunzip(source: bytes | BinaryIO, limit: int) -> bytes:
    """The decompressed bytes of ``source`` (gzip, one or more members), at most ``limit`` of
    them; ``InflateError`` if it is larger, not gzip, or ends early. A file handle is read in
    chunks, so a huge compressed input is never held whole either."""
    read = _reader(source)
    out = bytearray()
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    in_member = seen = False
    data = b""
    while True:
        if not data:
            data = read()
            if not data:
                break
        if not in_member:
            if seen and not data.strip(b"\0"):  # zero padding after a complete member
                data = b""
                continue
            in_member = seen = True
        try:
            # Room for one byte more than allowed: output that fills it is over the limit, and
            # output that does not means zlib holds nothing back.
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise InflateError(f"not valid gzip data ({exc})") from None
        if len(out) > limit:
            raise InflateError(f"inflates to more than {limit} bytes")
        data = inflater.unconsumed_tail
        if inflater.eof:  # a member ended; what follows may be another member
            data = inflater.unused_data
            inflater = zlib.decompressobj(wbits=31)
            in_member = False
    if not seen:
        raise InflateError("empty input, not gzip data")
    if in_member:
        raise InflateError("compressed data ends before its end-of-stream marker (cut short)")
    return bytes(out)


def _reader(source: bytes | BinaryIO):  # type: ignore[no-untyped-def]
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        position = 0

        def from_bytes() -> bytes:
            nonlocal position
            piece = bytes(view[position : position + _CHUNK])
            position += len(piece)
            return piece

        return from_bytes
    return lambda: source.read(_CHUNK)
