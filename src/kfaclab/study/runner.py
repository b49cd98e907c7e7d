"""``kfaclab sweep``: N worker processes on one protocol, and the live progress table.

Each worker is a separate process (spawned, so no torch state is inherited) using one thread:
on a small machine two single-threaded trials at once beat one two-threaded trial, since these
models are too small for intra-op parallelism to pay. With one worker the trial runs in this
process and a thread draws the table. The workers only share the storage; any number of
machines may run the same command against one database.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from kfaclab.errors import Terminated, UsageError
from kfaclab.study.cells import CellInfo, search_space
from kfaclab.study.progress import LiveTable, cell_trials, summarize
from kfaclab.study.protocol import Protocol
from kfaclab.study.registry import ensure_studies
from kfaclab.study.storage import Storage
from kfaclab.study.sweep import TrialFn, Worker, trial_config
from kfaclab.text import clean

POLL_SECONDS = 2.0


def check_configs(protocol: Protocol, cells: list[CellInfo]) -> None:
    """Validate one trial config per cell (mid-range parameters) with the trial runner's own
    checks, so a bad protocol fails before any worker starts."""
    try:
        from kfaclab.train import validate_config
    except ImportError:
        return
    for cell in cells:
        params = {k: (r.low + r.high) / 2 for k, r in search_space(protocol, cell).items()}
        validate_config(trial_config(protocol, cell, params, protocol.search.seed))


def run_sweep(
    protocol: Protocol,
    spec: Storage,
    *,
    workers: int = 1,
    trial_fn: TrialFn | None = None,
    stream: TextIO | None = None,
    population: bool = False,
    per_cell: int = 1,
) -> int:
    """Run the protocol to completion; 0 when every cell has its trials, 1 otherwise.
    ``population``: workers step their trials as populations, ``per_cell`` trials of each cell
    at a time (``population_worker``)."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    stream = stream or sys.stderr
    storage = spec.open(create=True)
    # Checked once here, before any process starts: a mismatching CONFIG touches nothing.
    cells = ensure_studies(protocol, storage, spec)
    check_configs(protocol, cells)
    table = LiveTable(stream)
    stop = threading.Event()

    def refresh(final: bool = False) -> bool:
        rows = summarize(cells, cell_trials(storage, protocol.name, cells))
        table.show(rows, final=final)
        return all(r.done >= r.total for r in rows)

    if workers == 1:
        _one_thread()
        monitor = threading.Thread(target=_monitor, args=(refresh, stop), daemon=True)
        monitor.start()
        try:
            _worker_class(population, per_cell)(protocol, spec, trial_fn=trial_fn, stop=stop).run()
        finally:
            stop.set()
            monitor.join()
        problems: list[str] = []
    else:
        problems = _run_processes(protocol, spec, workers, trial_fn, refresh, population, per_cell)
    complete = refresh(final=True)
    for line in problems:
        stream.write(f"kfaclab sweep: {line}\n")
    if not complete:
        stream.write(
            "kfaclab sweep: some cells are not complete; rerun the same command to resume "
            "(finished trials are kept)\n"
        )
    return 0 if complete and not problems else 1


def _worker_class(population: bool, per_cell: int) -> Callable[..., Worker]:
    if not population:
        return Worker
    from kfaclab.study.population_worker import PopulationWorker

    return functools.partial(PopulationWorker, per_cell=per_cell)


def _monitor(refresh: Callable[[], bool], stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        with contextlib.suppress(Exception):  # a display hiccup must never stop the sweep
            refresh()


def _run_processes(
    protocol: Protocol,
    spec: Storage,
    workers: int,
    trial_fn: TrialFn | None,
    refresh: Callable[[], bool],
    population: bool = False,
    per_cell: int = 1,
) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(protocol, spec, i, workers, trial_fn, os.getpid(), population, per_cell),
            name=f"kfaclab-worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(POLL_SECONDS / len(procs))
            with contextlib.suppress(Exception):
                refresh()
    except KeyboardInterrupt:
        # The workers got the same Ctrl-C; give them a moment to re-queue their trials.
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        raise
    return [f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _own_signal_handlers() -> None:
    """Ctrl-C and SIGTERM unwind a worker like Ctrl-C (its running trial is re-queued), whatever
    it inherited: a shell starts a background job (`kfaclab sweep … &`) with SIGINT ignored, the
    spawned workers inherit SIG_IGN, and the parent's forwarded SIGINT was then lost; its
    terminate() 10 s later killed them with their trials left RUNNING (issue 29, F8)."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)


def _worker_main(
    protocol: Protocol,
    spec: Storage,
    index: int,
    count: int,
    trial_fn: TrialFn | None,
    parent: int,
    population: bool = False,
    per_cell: int = 1,
) -> None:
    _one_thread()
    _own_signal_handlers()
    stop = threading.Event()

    def watch_parent() -> None:
        # An orphaned worker (its sweep command was killed) finishes its trial and stops,
        # rather than running on unseen.
        while not stop.wait(5.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        worker = _worker_class(population, per_cell)
        worker(protocol, spec, index=index, count=count, trial_fn=trial_fn, stop=stop).run()
    except UsageError as exc:
        sys.stderr.write(f"kfaclab: error: {clean(str(exc))}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
