"""claims.json: a report's claims as data beside report.md, read back by ``kfaclab claims`` and
the FINDINGS.md generator (so a folder under docs/results needs no study storage to be tabulated).
Non-finite numbers are written as the strings "nan" / "inf" / "-inf": strict JSON has no literal
for them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.analysis.claims.paper import ClaimSet, Headline
from kfaclab.analysis.claims.types import Claim
from kfaclab.errors import UsageError
from kfaclab.text import clean

_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _strict(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    return x


def _number(x: Any) -> float:
    return _SPECIAL[x] if isinstance(x, str) else float(x)


def save_claims(cs: ClaimSet, path: Path) -> None:
    # kfaclab.atomic: a reader never sees half a file, and no planted link is written through.
    atomic.write_text(path, json.dumps(_strict(cs.to_dict()), indent=1, allow_nan=False))


def load_claims(path: Path) -> ClaimSet:
    """claims.json read back; a damaged one is refused in one line naming the repair."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        h = dict(raw["headline"])
        for k in ("best_mean", "best_lo", "best_hi", "sgd_mean", "sgd_lo", "sgd_hi"):
            h[k] = _number(h[k])
        return ClaimSet(str(raw["protocol"]), Headline(**h), [Claim(**c) for c in raw["claims"]])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = clean(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise UsageError(
            f"{clean(str(path))} is damaged ({type(exc).__name__}: {reason}); remove it and "
            f"run `kfaclab report` on its study again to rebuild it"
        ) from None
