"""`kfaclab sweep`, `kfaclab status`, `kfaclab export`: the damping study from the shell.

kfaclab sweep CONFIG --out DIR [--storage URL] [--workers N]
kfaclab status DIR | --storage URL [--protocol NAME]
kfaclab export DIR | --storage URL OUT.csv [--protocol NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kfaclab.cli.targets import add_stored_sweep_arguments, stored_sweep
from kfaclab.errors import UsageError
from kfaclab.study.design_sweep import MANIFEST


def register(subparsers: Any) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="run a protocol's studies (resumes; safe with many workers and machines)",
        description="Runs every cell of CONFIG to its trial count. Rerunning the same command "
        "resumes; several commands (on several machines with --storage) share the work.",
    )
    sweep.add_argument(
        "config", help="protocol TOML file (see configs/paper.toml), or a design (with [design])"
    )
    sweep.add_argument(
        "--out", help="output folder; holds the studies (studies.journal) unless --storage"
    )
    sweep.add_argument("--storage", help="database URL: postgresql://… or sqlite:///…")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sweep.add_argument(
        "--data-dir", help="folder with the dataset's IDX files (overrides data.data_dir)"
    )
    sweep.add_argument("--device", default="cpu", help="where trials run: cpu (default), cuda")
    sweep.add_argument(
        "--population",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="step every cell's next trial together as one batched model (default: on with "
        "--device cuda; off on the CPU, where it saves ~20%% of the CPU time but its float32 "
        "values differ from a sequential sweep's by rounding)",
    )
    sweep.add_argument(
        "--per-cell",
        type=int,
        default=1,
        help="with --population: trials of each cell at a time (default 1: each cell's search "
        "stays sequential; more fill a GPU, as that many workers per cell would)",
    )
    sweep.set_defaults(func=run_sweep_cmd)

    for name, helptext in (
        ("status", "per-cell progress of a sweep, read from its storage"),
        ("export", "trials and curves of a sweep as CSV"),
    ):
        p = subparsers.add_parser(name, help=helptext, description=helptext)
        add_stored_sweep_arguments(p, out_csv=name == "export")
        p.set_defaults(func=run_status if name == "status" else run_export)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from kfaclab.cli.outputs import check_out_dir
    from kfaclab.cli.sweeping import load_checked_protocol, next_step, prepare_dataset
    from kfaclab.study.registry import ensure_studies
    from kfaclab.study.runner import run_sweep
    from kfaclab.study.storage import open_storage, resolve

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.per_cell < 1:
        raise UsageError(f"--per-cell must be >= 1, got {args.per_cell}")
    if args.storage is None and args.out is None:
        raise UsageError("--out DIR is required (or --storage URL)")
    from kfaclab.study.protocol import read_toml

    raw = read_toml(Path(args.config))
    if "design" in raw:  # every run of the design, each a sweep like this one (design_cmd.py)
        from kfaclab.cli.design_cmd import run_design_sweep

        return run_design_sweep(args, raw)
    # Everything is checked before anything is stored: the protocol completely, the output
    # folder by a real write, the dataset found or downloaded (once, here, not per worker).
    protocol = load_checked_protocol(args.config, data_dir=args.data_dir, device=args.device)
    population = args.population
    if population is None:  # the GPU's lever (issue 30); the CPU's sweeps stay as they were
        population = protocol.device.startswith("cuda")
    if args.per_cell > 1 and not population:
        raise UsageError(f"--per-cell must be 1 without --population, got {args.per_cell}")
    spec = resolve(args.out, args.storage)
    if args.out is not None:
        check_out_dir(args.out)
    # A different protocol already stored there is refused before the dataset is fetched (an
    # unreachable database too); storing a valid protocol first is harmless, since the dataset
    # folder is not part of it.
    ensure_studies(protocol, open_storage(spec, create=True), spec)
    prepare_dataset(protocol)
    rc = run_sweep(
        protocol, spec, workers=args.workers, population=population, per_cell=args.per_cell
    )
    if rc == 0:
        sys.stderr.write(next_step(spec, protocol) + "\n")
    return rc


def run_status(args: argparse.Namespace) -> int:
    from kfaclab.study.progress import cell_trials, dead_trials, format_table, summarize
    from kfaclab.study.registry import pick_protocol
    from kfaclab.text import clean

    if args.target and (Path(args.target) / MANIFEST).is_file():  # a factorial design's folder
        from kfaclab.study.design_progress import design_status

        if args.protocol:
            raise UsageError(
                f"--protocol does not apply to a design's folder, got {args.protocol!r}: "
                "status shows every run"
            )
        sys.stdout.write(design_status(Path(args.target), args.storage) + "\n")
        return 0
    spec = stored_sweep(args.target, args.storage)
    storage = spec.open(create=False)
    stored = pick_protocol(storage, spec.describe(), args.protocol)
    dead = dead_trials(storage, stored.name, stored.cells, journal=not spec.builtin_heartbeat)
    rows = summarize(stored.cells, cell_trials(storage, stored.name, stored.cells), dead=dead)
    shown = clean(f"protocol {stored.name} in {spec.describe()}")  # names from shared storages
    sys.stdout.write(f"{shown}\n{format_table(rows)}\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from kfaclab.cli.outputs import check_out_file
    from kfaclab.study.export import curves_path, export_csv
    from kfaclab.study.reader import read_study_set

    target, out = args.target, args.out_csv
    if args.storage is not None and out is None:  # `export --storage URL OUT.csv`
        target, out = None, target
    if out is None:
        raise UsageError("OUT.csv is required")
    spec = stored_sweep(target, args.storage)
    for path in (Path(out), curves_path(Path(out))):
        spec.refuse_own_file(path, "OUT.csv")  # `export DIR DIR/studies.journal` would erase it
    check_out_file(out, "OUT.csv")
    check_out_file(curves_path(Path(out)), "OUT.csv")  # its companion, OUT-curves.csv
    study_set = read_study_set(spec, protocol=args.protocol)
    trials, curves = export_csv(study_set, Path(out))
    sys.stdout.write(f"wrote {trials} ({len(study_set.trials)} trials) and {curves}\n")
    return 0
