"""A trial's full record (curves, histograms, diagnostics) and its small user attrs.

The ``TrialResult`` is an Optuna artifact named ``record.json.gz`` (gzip-compressed JSON) in the
storage's artifact store (artifacts.py), so it never sits in the user-attribute table that
optuna-dashboard shows as columns, and every worker, ``kfaclab status``/``export`` and the report
read it from wherever the storage is. A one-epoch MNIST trial's record is a few kB compressed.

User attrs of a finished trial (small, all shown by the dashboard):
    status      "ok" | "diverged"
    seconds     wall time of the trial (float)
    seed        the training seed (kept across retries, so a retry reruns the same trial)
    test_accuracy

Studies written before artifacts kept the record in a user attr ``record`` as
base64(zlib(json)); ``read_record`` still reads it.

Records are read defensively: they come from a folder someone may have copied badly or a database
other users can write. A record is inflated in chunks and refused beyond ``RECORD_MAX_BYTES``
(128 MiB of JSON, far above the few kB to few MB of a real record: a million steps of curves is
about 22 MB), so a gzip bomb costs at most that much memory; a record that is not gzip, is cut
short, is not JSON or does not have a record's shape raises ``DamagedRecordError``, which names the
trial and the reason, and the readers skip that one trial (reader.stored_trial).
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from kfaclab.gunzip import InflateError, gunzip
from kfaclab.study.artifacts import RecordStore
from kfaclab.trial_types import TrialResult

RECORD = "record"  # the old layout's user attr
RECORD_FILE = "record.json.gz"
STATUS = "status"
SECONDS = "seconds"
SEED = "seed"
TEST_ACCURACY = "test_accuracy"
_ARTIFACT_PREFIX = "artifacts:"  # Optuna's system-attr key prefix for artifact metadata


def record_json(result: TrialResult) -> bytes:
    # Only ever read back by Python's json, which round-trips Infinity and NaN (a diagnostic's
    # condition number may be inf), so no value needs rewriting.
    return json.dumps(result.to_dict(), separators=(",", ":"), default=_plain).encode("utf-8")


def encode_record(result: TrialResult) -> bytes:
    # mtime=0: the same result gives the same bytes.
    return gzip.compress(record_json(result), compresslevel=6, mtime=0)


RECORD_MAX_BYTES = 128 << 20  # documented above and in docs/interfaces.md


class DamagedRecordError(ValueError):
    """A trial's record exists but cannot be read; the message names the trial and the reason."""


def decode_record(data: bytes | BinaryIO) -> TrialResult:
    """The TrialResult in gzip'ed JSON ``data`` (bytes or a binary file handle), inflated to at
    most RECORD_MAX_BYTES. Raises InflateError, ValueError (not JSON, not UTF-8) or
    TypeError/KeyError/AttributeError (not a record's shape)."""
    return TrialResult.from_dict(json.loads(gunzip(data, RECORD_MAX_BYTES).decode("utf-8")))


def encode_result(result: TrialResult) -> str:
    """The old layout's attr text (kept for tests that write a study the old way)."""
    return base64.b64encode(zlib.compress(record_json(result), 6)).decode("ascii")


def decode_result(blob: str) -> TrialResult:
    inflater = zlib.decompressobj()
    raw = inflater.decompress(base64.b64decode(blob), RECORD_MAX_BYTES + 1)
    if len(raw) > RECORD_MAX_BYTES:
        raise InflateError(f"inflates to more than {RECORD_MAX_BYTES} bytes")
    return TrialResult.from_dict(json.loads(raw.decode("utf-8")))


def write_record(trial: optuna.Trial, result: TrialResult, store: RecordStore) -> str:
    """Upload ``result`` as the trial's record artifact; returns the artifact id."""
    with tempfile.TemporaryDirectory(prefix="kfaclab-record-") as tmp:
        path = Path(tmp) / RECORD_FILE
        path.write_bytes(encode_record(result))
        # Optuna guesses application/json with encoding gzip from the name: what it is.
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def record_artifact_id(trial: FrozenTrial) -> str | None:
    """The id of the trial's record artifact, if it has one."""
    for key, value in trial.system_attrs.items():
        if not key.startswith(_ARTIFACT_PREFIX) or not isinstance(value, str):
            continue
        try:
            meta = json.loads(value)
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("filename") == RECORD_FILE:
            return str(meta.get("artifact_id", key[len(_ARTIFACT_PREFIX) :]))
    return None


# What a damaged record raises while it is read and decoded (never a bug of ours: the bytes).
_DAMAGE = (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError)


def read_record(trial: FrozenTrial, store: RecordStore | None) -> TrialResult | None:
    """The trial's TrialResult: its record artifact, else the old user attr, else None (not
    finished, or its artifact is missing, e.g. an output folder copied without artifacts/).
    ``DamagedRecordError`` if the record is there but cannot be read (see the module docstring)."""
    artifact_id = record_artifact_id(trial)
    try:
        if artifact_id is not None and store is not None:
            try:
                with store.open_reader(artifact_id) as handle:
                    return decode_record(handle)
            except ArtifactNotFound:
                return None
        blob = trial.user_attrs.get(RECORD)
        return decode_result(blob) if isinstance(blob, str) else None
    except _DAMAGE as exc:
        where = f"artifact {artifact_id}" if artifact_id is not None else "record attribute"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedRecordError(
            f"trial {trial.number}'s record ({where}) is damaged: {type(exc).__name__}: {reason}"
        ) from None


def result_attrs(result: TrialResult) -> dict[str, Any]:
    """The user attrs to store for a finished trial (JSON-safe: no inf/nan)."""
    acc = result.final_test_accuracy
    return {
        STATUS: result.status,
        SECONDS: float(result.seconds),
        TEST_ACCURACY: acc if math.isfinite(acc) else None,
    }


def _plain(obj: Any) -> Any:
    """JSON for numpy/torch values a diagnostic may hold: scalars become numbers, arrays lists."""
    if hasattr(obj, "tolist"):  # numpy scalars and 0-d tensors give plain numbers
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a trial record")
