"""`kfaclab claims RUN [RUN …]`: the paper's claims × the runs' readings, as a Markdown table.

    kfaclab claims runs/readings-quick/paper runs/readings-quick/paper-b2 …

Each RUN is a run folder: its claims.json (written by `kfaclab report`) if present, else its study
storage is read and the claims computed (with its reruns.json; no reruns are made here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kfaclab.errors import UsageError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "claims",
        help="the paper's claims × readings, from one or more run folders",
        description="Prints the verdict of each of the paper's claims for each run folder as a "
        "Markdown table (claims.json of its report, or computed from its storage).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one per reading)")
    p.add_argument(
        "--details", action="store_true", help="also print each run's findings with numbers"
    )
    p.set_defaults(func=run_claims)


def run_claims(args: argparse.Namespace) -> int:
    from kfaclab.analysis.findings.side_by_side import claims_for_run, claims_matrix, run_section

    folders = [Path(r) for r in args.runs]
    for f in folders:
        if not f.exists():
            raise UsageError(f"RUN must be an existing run folder, got {str(f)!r}")
    runs = [claims_for_run(f) for f in folders]
    sys.stdout.write(claims_matrix(runs))
    if args.details:
        for cs in runs:
            sys.stdout.write("\n" + run_section(cs, None))
    return 0
