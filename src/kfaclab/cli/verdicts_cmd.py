"""`kfaclab verdicts`: the paper's claims from paired reruns, pooled over replications.

    kfaclab verdicts RUN [RUN ...] --out DIR [--title TEXT]

Each RUN is a run folder holding a stored sweep and its paired-reruns.jsonl (`kfaclab
replicate`); the runs are replications of one protocol (another search seed each). Writes
DIR/verdicts.md, DIR/verdicts.json and DIR/figures/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kfaclab.errors import UsageError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verdicts",
        help="the paper's claims from paired reruns, pooled over replications",
        description="Tests the paper's claims with seeds of replications as units (paired "
        "reruns written by `kfaclab replicate`) and writes verdicts.md, verdicts.json, figures.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (replications)")
    p.add_argument("--out", required=True, help="folder for verdicts.md/json and figures/")
    p.add_argument("--title", default="Replication-level verdicts", help="the page's title")
    p.set_defaults(func=run_verdicts)


def run_verdicts(args: argparse.Namespace) -> int:
    from kfaclab import atomic
    from kfaclab.analysis.replication.assess import assess
    from kfaclab.analysis.replication.figures import draw_all
    from kfaclab.analysis.replication.load import load_replication
    from kfaclab.analysis.replication.markdown import render
    from kfaclab.cli.outputs import check_out_dir

    folders = [Path(r) for r in args.runs]

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    reps = [load_replication(f, log=log) for f in folders]
    names = [r.name for r in reps]
    if len(set(names)) != len(names):
        raise UsageError(f"RUN folders must be distinct replications, got {names}")
    empty = [r.name for r in reps if not r.outcomes]
    if empty:
        raise UsageError(
            f"{empty[0]} has no paired reruns; run `kfaclab replicate` on its folder first"
        )
    out = Path(args.out)
    check_out_dir(out, "--out")
    a = assess(reps)
    figs = draw_all(a, out / "figures")
    atomic.write_text(out / "verdicts.md", render(a, args.title, figs))
    atomic.write_text(
        out / "verdicts.json", json.dumps(a.to_dict(), indent=1, default=_json_default)
    )
    sys.stdout.write(f"wrote {out / 'verdicts.md'} ({a.n_units} seeds, {len(figs)} figures)\n")
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")
