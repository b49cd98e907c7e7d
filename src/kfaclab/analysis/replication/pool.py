"""Paired reruns: each cell's top configurations on new seeds, run in worker processes, cached.

Pairing: within one study every cell's configurations run on the *same* seeds, so a difference
between two cells at one seed shares that seed's initialisation and batch order, and the
differences over seeds are the paired units. Seeds differ between replications of a protocol
(``replication_seeds``: they derive from the protocol's own ``search.seed``), so pooling two
replications never counts one seed twice.

The cache is a JSON-lines file (``paired-reruns.jsonl``) beside the report, written only by the
parent process as results arrive, one line per rerun: a killed run loses at most the rerun in
flight, a resumed one skips what is stored, and a damaged line is skipped and counted, never
fatal. A line counts for this study only if its ``key`` (the study's identity, the cell and the
trial number: ``trial_key``) and its seed match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kfaclab.analysis.replication.outcomes import RerunOutcome, outcome_from_result
from kfaclab.errors import UsageError
from kfaclab.trial_types import TrialConfig

CACHE_NAME = "paired-reruns.jsonl"
SEED_BASE = 20_000
"""Rerun seeds of a protocol with ``search.seed = s`` are SEED_BASE + 100 s + 1, +2, ...: apart
from every search's training seeds (0, 1, 2, ... or seed + trial number), from the old three-seed
reruns (10001-10003), and distinct between replications for up to 99 seeds each."""

DEFAULT_TOP = 5
DEFAULT_SEEDS = 10


def replication_seeds(protocol: Mapping[str, Any], n: int) -> list[int]:
    if not 1 <= n <= 99:
        raise UsageError(f"--seeds must be between 1 and 99, got {n}")
    search = protocol.get("search", {})
    base = int(search.get("seed", 0)) if isinstance(search, Mapping) else 0
    return [SEED_BASE + 100 * base + i for i in range(1, n + 1)]


@dataclass(frozen=True)
class Job:
    cell: str
    label: str
    lam: float | None
    rank: int
    trial_number: int
    key: str
    config: TrialConfig  # with the rerun's seed

    @property
    def ident(self) -> tuple[str, int]:
        return (self.key, self.config.seed)


def plan_jobs(
    study: Any,
    summaries: Sequence[Any],
    *,
    top: int,
    seeds: Sequence[int],
    cells: Iterable[str] | None = None,
    data_dir: str | None = None,
) -> list[Job]:
    """Every (configuration, seed) to run: the ``top`` best finished trials of each chosen cell
    (``summaries``: CellSummary, whose ``top_numbers`` are best first), on every seed, ordered
    seed-major so that an interrupted run leaves whole seeds (every cell paired) behind it."""
    wanted = set(cells) if cells is not None else None
    by_number = {(t.cell, t.number): t for t in study.trials}
    configs: list[tuple[Any, int, Any]] = []
    for cell in summaries:
        if wanted is not None and cell.name not in wanted and cell.label not in wanted:
            continue
        for rank, number in enumerate(cell.top_numbers[:top]):
            trial = by_number.get((cell.name, number))
            if trial is None or trial.record is None:
                continue
            configs.append((cell, rank, trial))
    jobs = []
    for seed in seeds:
        for cell, rank, trial in configs:
            config = trial.record.config
            if data_dir is not None:
                config = dataclasses.replace(config, data_dir=data_dir)
            key = trial_key(study.identity, cell.name, trial.number)
            jobs.append(
                Job(
                    cell.name,
                    cell.label,
                    cell.lam,
                    rank,
                    trial.number,
                    key,
                    dataclasses.replace(config, seed=int(seed)),
                )
            )
    return jobs


def trial_key(identity: str, cell: str, number: int) -> str:
    """A stored trial's identity: its study (``StudySet.identity``), cell and number. A finished
    trial's configuration never changes, so this names it without hashing its fields (a field
    added to TrialConfig later, with a default, must not invalidate every cached rerun)."""
    text = json.dumps([identity, cell, int(number)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_cache(path: Path) -> tuple[dict[tuple[str, int], RerunOutcome], int]:
    """The stored outcomes by (key, seed), and how many lines were damaged (skipped)."""
    out: dict[tuple[str, int], RerunOutcome] = {}
    damaged = 0
    if not path.is_file():
        return out, 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                o = RerunOutcome.from_json(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError):
                damaged += 1
                continue
            out[(o.key, o.seed)] = o
    return out, damaged


_stream_seed: dict[str, int] = {}  # the seed whose input streams this process holds


def train_rerun(config: TrialConfig) -> Any:
    """``run_trial`` for a rerun, holding only the current seed's K-FAC input streams.

    The process-wide stream cache (optim/input_stream.py, up to 1 GiB) lets trials on one batch
    order share layer 1's factor work. A stream is a batch order, i.e. a seed; paired reruns run
    seed-major, so a stream of an earlier seed never matches again, and the report's reruns cycle
    through their seeds per cell, so the cache only thrashed. Kept, the dead streams made each
    rerun worker ~1.7 GB (a 2-worker report of `paper-seed2` peaked at 4.1 GB for the process
    tree, measured); cleared when the seed changes, a worker holds one stream at most."""
    from kfaclab.train import run_trial
    from kfaclab.train.build import INPUT_STREAMS

    if _stream_seed.get("seed") != config.seed:
        INPUT_STREAMS.clear()
        _stream_seed["seed"] = config.seed
    return run_trial(config)


def release_rerun_streams() -> None:
    """Drop the input streams ``train_rerun`` left in this process (a report's serial reruns
    end in the report's own process, which goes on to draw figures)."""
    if "seed" in _stream_seed:
        from kfaclab.train.build import INPUT_STREAMS

        INPUT_STREAMS.clear()
        del _stream_seed["seed"]


def run_one(job: Job) -> dict[str, Any]:
    result = train_rerun(job.config)
    n_steps = job.config.steps or 0
    if not n_steps:
        n_steps = len(result.step_losses) if result.diverged_at is None else 0
    o = outcome_from_result(
        result,
        cell=job.cell,
        label=job.label,
        lam=job.lam,
        rank=job.rank,
        trial_number=job.trial_number,
        key=job.key,
        n_steps=n_steps,
    )
    return o.to_json()


def init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # two 1-thread workers beat one 2-thread process here


def run_jobs(
    jobs: Sequence[Job],
    cache: Path,
    *,
    workers: int = 1,
    log: Callable[[str], None] = lambda s: None,
) -> list[RerunOutcome]:
    """Run what the cache lacks (in ``workers`` processes), append each outcome to the cache as
    it arrives, and return the outcomes of ``jobs`` in their order."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    stored, damaged = load_cache(cache)
    if damaged:
        log(f"reruns: {damaged} damaged line(s) in {cache} skipped (they will be rerun)")
    todo = [j for j in jobs if j.ident not in stored]
    if todo:
        log(f"reruns: {len(jobs) - len(todo)} of {len(jobs)} cached, {len(todo)} to run")
        cache.parent.mkdir(parents=True, exist_ok=True)
        _execute(todo, cache, stored, workers, log)
    return [stored[j.ident] for j in jobs if j.ident in stored]


def _execute(
    todo: Sequence[Job],
    cache: Path,
    stored: dict[tuple[str, int], RerunOutcome],
    workers: int,
    log: Callable[[str], None],
) -> None:
    start, done = time.monotonic(), 0
    last_log = 0.0
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    fd = os.open(cache, flags, 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as out, worker_pool(workers) as pool:
        pending: dict[Future[dict[str, Any]], Job] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                job = queue.pop(0)
                pending[pool.submit(run_one, job)] = job
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                pending.pop(fut)
                data = fut.result()
                out.write(json.dumps(data, allow_nan=False) + "\n")
                out.flush()
                o = RerunOutcome.from_json(data)
                stored[(o.key, o.seed)] = o
                done += 1
            now = time.monotonic()
            if now - last_log > 10 or not (queue or pending):
                last_log = now
                rate = (now - start) / done
                eta = rate * (len(todo) - done)
                log(f"reruns: {done}/{len(todo)} done, {rate:.1f} s each, ETA {clock(eta)}")


def clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def worker_pool(workers: int) -> ProcessPoolExecutor:
    # spawn: a forked child would inherit the parent's torch thread pool and open storages
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker)
