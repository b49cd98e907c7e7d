"""`kfaclab sweep DESIGN.toml --out DIR` (a file with [design]) and `kfaclab effects DIR`.

kfaclab sweep DESIGN.toml --out DIR [--storage URL] [--workers N]
kfaclab effects DIR [--storage URL] [--out FOLDER] [--responses a,b]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kfaclab.errors import UsageError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "effects",
        help="factor effects of a design's runs, with intervals across seeds",
        description="Reads every run of the design in DIR (kfaclab sweep DESIGN.toml --out DIR), "
        "computes each run's responses and estimates main effects and the interactions the "
        "design's resolution allows (statsmodels OLS; seeds are the replicates).",
    )
    p.add_argument("target", metavar="DIR", help="the design's output folder (holds design.json)")
    p.add_argument("--storage", help="database URL, if the design ran with --storage")
    p.add_argument("--out", help="folder for effects.md, effects.json and the half-normal plots")
    p.add_argument("--responses", help="comma-separated response names (default: all)")
    p.set_defaults(func=run_effects_cmd)


def run_design_sweep(args: argparse.Namespace, raw: dict[str, Any]) -> int:
    """The `sweep` command for a design file: everything checked before anything runs."""
    from kfaclab.cli.outputs import check_out_dir
    from kfaclab.cli.sweeping import check_trials, prepare_dataset
    from kfaclab.study.design_schema import parse_design
    from kfaclab.study.design_sweep import check_manifest, run_design, run_protocols, run_spec
    from kfaclab.study.registry import ensure_studies
    from kfaclab.study.storage import open_storage

    if args.out is None:
        raise UsageError("--out DIR is required for a design (it holds design.json)")
    design = parse_design(raw, base_dir=Path(args.config).resolve().parent)
    runs = run_protocols(design, Path(args.config).resolve().parent, args.data_dir, args.device)
    for _, protocol in runs:
        check_trials(protocol)
    out = check_out_dir(args.out)
    check_manifest(out, design)
    for run, protocol in runs:  # a run stored with another protocol is refused before any trial
        spec = run_spec(out, run, args.storage)
        ensure_studies(protocol, open_storage(spec, create=True), spec)
    seen = set()
    for _, protocol in runs:
        if (protocol.data.dataset, protocol.data.data_dir) not in seen:
            seen.add((protocol.data.dataset, protocol.data.data_dir))
            prepare_dataset(protocol)
    sys.stderr.write(f"kfaclab: design {design.name}: {design.describe()}, {len(runs)} runs\n")
    rc = run_design(design, runs, out, args.storage, workers=args.workers)
    if rc == 0:
        sys.stderr.write(f"next: kfaclab effects {args.out}\n")
    return rc


def run_effects_cmd(args: argparse.Namespace) -> int:
    from kfaclab.analysis.effects.report import write_effects
    from kfaclab.cli.outputs import check_out_dir

    out = check_out_dir(args.out or str(Path(args.target) / "effects"))
    names = None if args.responses is None else [n for n in args.responses.split(",") if n]
    written = write_effects(Path(args.target), out, storage=args.storage, responses=names)
    sys.stdout.write("".join(f"wrote {p}\n" for p in written))
    return 0
