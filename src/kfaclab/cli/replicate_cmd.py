"""`kfaclab replicate`: paired reruns of each cell's top configurations on new seeds.

    kfaclab replicate DIR [--top 5] [--seeds 10] [--cells LABEL ...] [--workers N] [--out DIR]
    kfaclab replicate --storage postgresql://… --out DIR [--no-queue] …   (on many machines)
    kfaclab replicate DESIGN_DIR [--cells …] …   (every finished run of a factorial design)

Writes (appends to) OUT/paired-reruns.jsonl (OUT defaults to the sweep's folder); resumable: what
is stored is not rerun. `kfaclab verdicts` reads these files, pooled over replications. On a
PostgreSQL server the reruns are shared through a queue in that database
(analysis/replication/rerun_queue.py) by every machine running the command; a journal folder or
SQLite file runs locally. A design's folder (design.json, `kfaclab sweep DESIGN.toml`) has each
finished run's reruns written into that run's folder, where `kfaclab effects` reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfaclab.cli.targets import add_stored_sweep_arguments, stored_sweep
from kfaclab.errors import UsageError
from kfaclab.study.design_sweep import MANIFEST

if TYPE_CHECKING:
    from kfaclab.analysis.replication.pool import Job
    from kfaclab.study.storage import Storage


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replicate",
        help="rerun each cell's top configurations on new seeds (paired, resumable)",
        description="Reruns the top configurations of each cell of a stored sweep on new seeds "
        "shared by every cell (paired), in worker processes, appending each outcome to "
        "paired-reruns.jsonl; what is stored is skipped. With --storage postgresql://… the "
        "reruns go through a queue in that database: run the same command on several machines "
        "(each with its own --out), each rerun runs once, and every machine ends with all the "
        "outcomes; the reruns of a machine that died are run again by any machine's replicate "
        "(running or started later) 2 minutes after its last heartbeat. A journal folder or a "
        "SQLite file has no queue: its reruns run on this machine only.",
    )
    add_stored_sweep_arguments(p)
    p.add_argument("--out", help="folder of paired-reruns.jsonl (default: the sweep's folder)")
    p.add_argument("--top", type=int, default=5, help="configurations per cell (default 5)")
    p.add_argument("--seeds", type=int, default=10, help="new seeds (default 10)")
    p.add_argument("--cells", nargs="+", help="cell names or labels (default: every cell)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--data-dir", help="dataset folder (default: what the trials recorded)")
    p.add_argument(
        "--no-queue",
        action="store_true",
        help="on a PostgreSQL server, run every rerun here and write nothing to the database "
        "(as for a journal folder), e.g. with a read-only role",
    )
    p.set_defaults(func=run_replicate)


def run_replicate(args: argparse.Namespace) -> int:
    from kfaclab.study.reader import read_study_set

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.target and (Path(args.target) / MANIFEST).is_file():
        return _replicate_design(args)
    spec = stored_sweep(args.target, args.storage)
    out = Path(args.out) if args.out else spec.out_folder
    if out is None:
        raise UsageError("--out is required with --storage")
    _replicate_from_args(args, read_study_set(spec, protocol=args.protocol), Path(out), spec)
    return 0


def _replicate_from_args(args: argparse.Namespace, study: Any, out: Path, spec: Storage) -> None:
    """``replicate`` with the command line's --top, --seeds, --workers, --cells, --data-dir and
    --no-queue (the queue is ``spec``'s, where it is a database)."""
    replicate(
        study,
        out,
        top=args.top,
        n_seeds=args.seeds,
        workers=args.workers,
        cells=args.cells,
        data_dir=args.data_dir,
        storage=None if args.no_queue else spec,
    )


def _replicate_design(args: argparse.Namespace) -> int:
    """Every finished run of the design in ``args.target``, its reruns into its own folder; a
    run still sweeping (or not started) is skipped and named, since its top configurations may
    still change. Runs kept in a database (``--storage``) are read from there."""
    from kfaclab.analysis.summary.summaries import all_cells_finished
    from kfaclab.study.design_sweep import load_manifest_design, run_spec
    from kfaclab.study.reader import read_study_set

    for flag, value in (("--out", args.out), ("--protocol", args.protocol)):
        if value:
            raise UsageError(
                f"{flag} does not apply to a design's folder, got {value!r}: each run's reruns "
                "go to that run's folder, read from that run's protocol"
            )
    folder = Path(args.target)
    design = load_manifest_design(folder)
    skipped = []
    for run in design.runs:
        spec = run_spec(folder, run, args.storage)
        try:
            study = read_study_set(spec, protocol=run.protocol_name)
        except UsageError:
            skipped.append(f"{run.name} (not run yet)")
            continue
        if not all_cells_finished(study):
            skipped.append(f"{run.name} (still sweeping)")
            continue
        sys.stderr.write(f"kfaclab replicate: design run {run.name}\n")
        _replicate_from_args(args, study, folder / run.name, spec)
    if skipped:
        sys.stderr.write(f"kfaclab replicate: skipped {len(skipped)}: {', '.join(skipped)}\n")
    return 0


def replicate(
    study: Any,
    out: Path,
    *,
    top: int,
    n_seeds: int,
    workers: int,
    cells: list[str] | None = None,
    data_dir: str | None = None,
    storage: Storage | None = None,
) -> None:
    """Reruns ``study``'s top configurations on ``n_seeds`` new seeds into out/paired-reruns.jsonl
    (what is stored there is skipped) and says so on stdout; `kfaclab reproduce` calls it too.
    ``storage``: where ``study`` lives; a database server shares the reruns through a queue in
    it (None, a journal folder or a SQLite file: they run here)."""
    from kfaclab.analysis.replication.pool import CACHE_NAME, replication_seeds, run_jobs
    from kfaclab.analysis.replication.rerun_queue import run_queued, shares_queue

    jobs = plan_replication(study, top=top, n_seeds=n_seeds, cells=cells, data_dir=data_dir)
    seeds = replication_seeds(study.protocol, n_seeds)

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    cache = out / CACHE_NAME
    if storage is not None and shares_queue(storage):
        outcomes = run_queued(jobs, cache, storage, study.identity, workers=workers, log=log)
    else:
        outcomes = run_jobs(jobs, cache, workers=workers, log=log)
    n_div = sum(o.diverged for o in outcomes)
    sys.stdout.write(
        f"kfaclab replicate: {len(outcomes)} reruns ({n_div} diverged) on seeds "
        f"{seeds[0]}-{seeds[-1]} in {cache}\n"
    )


def plan_replication(
    study: Any,
    *,
    top: int,
    n_seeds: int,
    cells: list[str] | None = None,
    data_dir: str | None = None,
) -> list[Job]:
    """The reruns of ``study`` that ``replicate`` runs (pool.plan_jobs), ``--cells`` checked."""
    from kfaclab.analysis.replication.pool import plan_jobs, replication_seeds
    from kfaclab.analysis.summary.cells import summarize_cell
    from kfaclab.analysis.summary.summaries import trials_by_cell

    by_cell = trials_by_cell(study)
    summaries = [summarize_cell(c, by_cell.get(c.name, [])) for c in study.cells]
    if cells:
        known = {c.name for c in summaries} | {c.label for c in summaries}
        bad = [c for c in cells if c not in known]
        if bad:
            raise UsageError(f"--cells: unknown cell {bad[0]!r}; known: {', '.join(sorted(known))}")
    seeds = replication_seeds(study.protocol, n_seeds)
    # the summaries and records are dropped on return: the parent stays small
    return plan_jobs(study, summaries, top=top, seeds=seeds, cells=cells, data_dir=data_dir)
