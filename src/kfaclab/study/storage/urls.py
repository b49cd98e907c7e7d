"""Storage URLs: the one redaction function, and the checks that turn a bad URL into one line.

``redact`` is what every message, report and file shows of a URL. It works on the text, not on a
parse, so a URL that no parser accepts (a bad port, a torn IPv6 bracket, an unknown scheme) is
redacted as well as a good one; a parse failure must never be the reason a password is echoed.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from kfaclab.errors import UsageError

SCHEMES = ("postgresql", "sqlite")
# Query parameters that carry a secret: libpq's password / sslpassword, and the usual variants.
_SECRET_QUERY = re.compile(r"(?i)([?&;][^=&;#]*(?:pass|pwd|secret|token)[^=&;#]*=)[^&;#]*")


def redact(url: str) -> str:
    """``url`` with every password removed: ``scheme://user:secret@host/db?password=x`` →
    ``scheme://user@host/db?password=***``.

    The user info ends at the *last* ``@`` before the query, so a password holding a raw ``@``
    (which SQLAlchemy would split at the first one, leaking the rest as the "host") is removed
    whole. A URL with no ``://`` is not a URL (a folder name) and is returned as it is.
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, after = _split_userinfo(rest)
    if userinfo is not None:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}@{after}" if user else after
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{rest}")


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``user:pass@host/db`` → (``user:pass``, ``host/db``); None when there is no user info.
    It ends at the last ``@`` before the first ``/``, ``?`` or ``#`` that follows an ``@``, so a
    raw ``@``, ``/`` or ``?`` inside the password stays inside it."""
    first = rest.find("@")
    if first < 0 or rest.startswith("/"):
        return None, rest
    ends = [i for i in (rest.find(c, first) for c in "/?#") if i >= 0]
    at = rest.rfind("@", 0, min(ends) if ends else len(rest))
    return rest[:at], rest[at + 1 :]


def scheme_of(url: str) -> str:
    """``postgresql+psycopg2://…`` → ``postgresql``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def check_url(url: str) -> str:
    """Refuse, in one line with the URL redacted, what would fail later with a traceback or do
    something surprising (an in-memory SQLite database that vanishes with the process)."""
    shown = redact(url)
    scheme = scheme_of(url)
    if scheme == "postgres":
        raise UsageError(f"storage URL must start with postgresql://, not postgres://, got {shown}")
    if scheme not in SCHEMES:
        raise UsageError(f"storage URL must start with postgresql:// or sqlite:///, got {shown}")
    if scheme == "sqlite":
        sqlite_path(url)
        return url
    _check_server_url(url, shown)
    return url


def sqlite_path(url: str) -> Path:
    """The database file of ``sqlite:///PATH`` (relative to the current folder, as SQLAlchemy
    reads it; ``sqlite:////abs`` is absolute). In-memory databases are refused: each process
    would get its own empty one and every result would be lost at exit."""
    shown = redact(url)
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise UsageError(f"storage URL must be sqlite:///PATH (three slashes), got {shown}")
    path, _, query = rest[1:].partition("?")
    if not path or path == ":memory:" or "mode=memory" in query:
        raise UsageError(
            f"storage URL must name a database file, got {shown} (an in-memory SQLite database "
            "is lost when the process exits and is not shared between workers)"
        )
    return Path(unquote(path))


def _check_server_url(url: str, shown: str) -> None:
    userinfo, after = _split_userinfo(url.split("://", 1)[1])
    if userinfo is not None and "@" in userinfo:
        raise UsageError(f"storage URL: write an @ in the user or password as %40, got {shown}")
    hostport = re.split(r"[/?#]", after, maxsplit=1)[0]
    if hostport.startswith("["):
        _, close, after_host = hostport[1:].partition("]")
        if not close or (after_host and not after_host.startswith(":")):
            raise UsageError(
                f"storage URL has a malformed IPv6 host (want [address]:port), got {shown}"
            )
        port = after_host[1:]
    elif hostport.count(":") > 1:
        raise UsageError(
            f"storage URL: an IPv6 host must be in brackets ([address]:port), got {shown}"
        )
    else:
        port = hostport.partition(":")[2]
    if ":" in hostport and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"storage URL port must be a number in 1..65535, got {port!r} in {shown}")


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; use psycopg2 when that is the
    driver installed (it is kfaclab's `postgres` extra)."""
    if not url.startswith("postgresql://"):
        return url
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url
