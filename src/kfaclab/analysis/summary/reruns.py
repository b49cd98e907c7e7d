"""Reruns of each cell's best configuration over fresh seeds, beside the top-k average.

The best of 300 trials is optimistic twice over: the configuration was chosen on the same seed
it is scored on. Rerunning it on new seeds shows how much of its loss was luck. Results are
cached in ``reruns.json`` beside the report, so re-running the report does not retrain (and a
resumed study with a new best trial does). An entry counts only for the same study (its protocol
name and first trial's start, not its path, so a moved study folder keeps its cache:
``StudySet.identity``), the same trial configuration (every field but
the seed) and the same seeds: two studies reported into one folder, or two cells of the same name
in two protocols, never see each other's reruns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.analysis.statistics.intervals import MeanCI, mean_ci
from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.types import TrialLike
from kfaclab.text import clean
from kfaclab.trial_types import TrialConfig, TrialResult

DEFAULT_SEEDS = (10_001, 10_002, 10_003)
Runner = Callable[[TrialConfig], TrialResult]


@dataclass
class RerunRecord:
    cell: str
    trial_number: int
    seeds: list[int]
    values: list[float]  # final training loss per seed (inf if diverged)
    test_accuracy: list[float]
    seconds: list[float]
    key: str = ""  # rerun_key(study, configuration); "" in files written before it existed


def rerun_key(study: str, config: TrialConfig) -> str:
    """What a cached rerun is valid for: the study's identity and the trial's full
    configuration except its seed (the reruns replace it)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
    if fields.get("init") == "torch":  # the default, and every config before model.init existed:
        del fields["init"]  # left out so the reruns cached under the old keys stay valid
    if fields.get("lr_per_damping") is False:  # likewise: the default, and every older config
        del fields["lr_per_damping"]
    text = json.dumps({"study": study, "config": fields}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class RerunSummary:
    label: str
    best_value: float  # the selected trial's own loss
    top_k: MeanCI  # the top-k mean, for comparison
    rerun: MeanCI  # the same configuration on the new seeds (finite runs only)
    n_diverged: int
    seeds: list[int]


def rerun_seeds(protocol: Mapping[str, Any]) -> list[int]:
    report = protocol.get("report", {})
    seeds = report.get("rerun_seeds") if isinstance(report, Mapping) else None
    return [int(s) for s in seeds] if isinstance(seeds, list) and seeds else list(DEFAULT_SEEDS)


def load_reruns(path: Path) -> dict[str, RerunRecord]:
    """The rerun cache; a damaged one is named on stderr and treated as empty (it is a cache:
    its reruns are made again and the file rewritten whole)."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            k: RerunRecord(
                **{
                    **v,
                    "values": [float(x) for x in v["values"]],
                    "test_accuracy": [float(x) for x in v["test_accuracy"]],
                }
            )
            for k, v in raw.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = clean(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        sys.stderr.write(f"kfaclab: ignored a damaged {clean(str(path))} ({reason})\n")
        return {}


def _strict(values: Sequence[float]) -> list[float | str]:
    """Finite floats as numbers, the others as "inf" / "nan" (what ``float`` reads back): strict
    JSON has no literal for them, and other tools reject Python's bare ``NaN``."""
    return [x if math.isfinite(x) else repr(float(x)) for x in values]


def save_reruns(path: Path, records: Mapping[str, RerunRecord]) -> None:
    data = {
        k: {
            **dataclasses.asdict(r),
            "values": _strict(r.values),
            "test_accuracy": _strict(r.test_accuracy),
        }
        for k, r in records.items()
    }
    # A fresh temporary name, never followed through a link: an interrupted report never
    # leaves half a file, and a planted *.json.tmp link is not written through (kfaclab.atomic).
    atomic.write_text(path, json.dumps(data, indent=1, allow_nan=False))


def ensure_reruns(
    cells: Sequence[CellSummary],
    trials_by_cell: Mapping[str, Sequence[TrialLike]],
    seeds: Sequence[int],
    path: Path,
    runner: Runner | None = None,
    log: Callable[[str], None] = lambda s: None,
    *,
    study: str = "",
    workers: int = 1,
) -> dict[str, RerunRecord]:
    """Run (or load from ``path``) the reruns of every cell's best trial; saves after each cell.
    ``study`` is the study's identity (``StudySet.identity``). Returns this study's records by
    cell name; ``path`` keeps the others' too (one entry per cell name: the latest study wins).
    ``workers`` > 1 runs them in that many worker processes (``runner`` must then be None: the
    workers call ``run_trial``), with progress and an ETA in ``log``."""
    records = load_reruns(path)
    mine: dict[str, RerunRecord] = {}
    todo: list[tuple[CellSummary, TrialConfig, str]] = []
    for cell in cells:
        if cell.best is None:
            continue
        trial = next(
            (t for t in trials_by_cell.get(cell.name, []) if t.number == cell.best.number), None
        )
        if trial is None or trial.record is None:
            continue
        key = rerun_key(study, trial.record.config)
        old = records.get(cell.name)
        if (
            old is not None
            and old.key == key
            and old.trial_number == cell.best.number
            and old.seeds == list(seeds)
        ):
            mine[cell.name] = old
        else:
            todo.append((cell, trial.record.config, key))
    configs = [dataclasses.replace(cfg, seed=int(s)) for _, cfg, _ in todo for s in seeds]
    results = iter(_run_all(configs, runner, workers, log))
    for cell, _, key in todo:
        assert cell.best is not None
        rec = RerunRecord(cell.name, cell.best.number, list(seeds), [], [], [], key)
        for _ in seeds:
            result = next(results)
            rec.values.append(float(result.value))
            rec.test_accuracy.append(result.final_test_accuracy)
            rec.seconds.append(float(result.seconds))
        records[cell.name] = mine[cell.name] = rec
        save_reruns(path, records)
    return mine


def _run_all(
    configs: Sequence[TrialConfig],
    runner: Runner | None,
    workers: int,
    log: Callable[[str], None],
) -> Iterator[TrialResult]:
    """The results of ``configs`` in their order, computed lazily (a consumer that saves as it
    goes keeps what finished if it is killed), serially or in ``workers`` spawned processes."""
    if not configs:
        return
    start = time.monotonic()
    if workers <= 1 or runner is not None:
        if runner is None:
            from kfaclab.analysis.replication.pool import train_rerun

            runner = train_rerun
        try:
            with _one_thread():
                for i, cfg in enumerate(configs):
                    yield runner(cfg)
                    _progress(log, i + 1, len(configs), start)
        finally:
            from kfaclab.analysis.replication.pool import release_rerun_streams

            release_rerun_streams()
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from kfaclab.analysis.replication.pool import init_worker, train_rerun

    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
        # map keeps the order and bounds nothing but the futures list (configs are small)
        for i, result in enumerate(pool.map(train_rerun, configs)):
            yield result
            _progress(log, i + 1, len(configs), start)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread while serial reruns train in this process, as the sweep's and the
    pools' workers do: a trial's products are too small to split, and on a busy machine the
    second thread's spin-waits made a 40-step trial take 20 s instead of 0.7 s (measured on
    this project's 2-core EPYC beside a 2-worker sweep)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(log: Callable[[str], None], done: int, total: int, start: float) -> None:
    rate = (time.monotonic() - start) / done
    m, s = divmod(round(rate * (total - done)), 60)
    log(f"reruns: {done}/{total} done, {rate:.1f} s each, ETA {m}:{s:02d}")


def rerun_summaries(
    cells: Sequence[CellSummary], records: Mapping[str, RerunRecord]
) -> list[RerunSummary]:
    out = []
    for cell in cells:
        rec = records.get(cell.name)
        if rec is None or cell.best is None or rec.trial_number != cell.best.number:
            continue  # stale: the study found a new best after these reruns
        finite = [v for v in rec.values if math.isfinite(v)]
        out.append(
            RerunSummary(
                cell.label,
                cell.best.value,
                cell.final_loss,
                mean_ci(finite),
                len(rec.values) - len(finite),
                rec.seeds,
            )
        )
    return out
