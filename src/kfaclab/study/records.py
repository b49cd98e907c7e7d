"""A trial's full record (curves, histograms, diagnostics) kept in the study storage itself.

The ``TrialResult`` goes into the trial's user attrs as zlib-compressed JSON in base64 text, so
every worker, ``kfaclab status``/``export`` and the report read it from wherever the storage is
(a journal file, a PostgreSQL server) and nothing lives only on the disk of the worker that ran
it. A one-epoch MNIST trial's record is a few kB compressed.

User attrs of a finished trial:
    status      "ok" | "diverged"
    seconds     wall time of the trial (float)
    seed        the training seed (kept across retries, so a retry reruns the same trial)
    test_accuracy
    record      base64(zlib(json(TrialResult.to_dict())))
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from typing import Any

from kfaclab.trial_types import TrialResult

RECORD = "record"
STATUS = "status"
SECONDS = "seconds"
SEED = "seed"
TEST_ACCURACY = "test_accuracy"


def encode_result(result: TrialResult) -> str:
    # The blob is only ever read back by Python's json, which round-trips Infinity and NaN (a
    # diagnostic's condition number may be inf), so no value needs rewriting.
    text = json.dumps(result.to_dict(), separators=(",", ":"), default=_plain)
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")


def decode_result(blob: str) -> TrialResult:
    data = json.loads(zlib.decompress(base64.b64decode(blob)).decode("utf-8"))
    return TrialResult.from_dict(data)


def result_attrs(result: TrialResult) -> dict[str, Any]:
    """The user attrs to store for a finished trial (JSON-safe: no inf/nan)."""
    acc = result.final_test_accuracy
    return {
        STATUS: result.status,
        SECONDS: float(result.seconds),
        TEST_ACCURACY: acc if math.isfinite(acc) else None,
        RECORD: encode_result(result),
    }


def _plain(obj: Any) -> Any:
    """JSON for numpy/torch values a diagnostic may hold: scalars become numbers, arrays lists."""
    if hasattr(obj, "tolist"):  # numpy scalars and 0-d tensors give plain numbers
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a trial record")
