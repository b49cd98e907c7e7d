"""`kfaclab verdicts`: the paper's claims from paired reruns, pooled over replications.

    kfaclab verdicts RUN [RUN ...] --out DIR [--title TEXT]

Each RUN is a run folder holding a stored sweep and its paired-reruns.jsonl (`kfaclab
replicate`); the runs are replications of one protocol (another search seed each). Writes
DIR/verdicts.md, DIR/verdicts.json and DIR/figures/.

The thresholds are the ones stored with the study ([claims], pre-registered); the paper's claims
are tested only where the protocol asks for them ([claims] paper, default true). Runs with
adaptive damping rules also get each rule against the best fixed λ (analysis/replication/rules).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfaclab.errors import UsageError

if TYPE_CHECKING:
    from kfaclab.analysis.replication.units import Replication
    from kfaclab.analysis.replication.verdicts import Thresholds


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
    from kfaclab.analysis.replication.rules import compare_rules, has_rules, rules_lines
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
    paper, th = _claims_of(reps)
    a = assess(reps, th, with_sensitivity=paper)
    sections: list[tuple[str, list[str]]] = []
    data = a.to_dict()
    if has_rules(reps):
        rules = compare_rules(reps, th)
        sections.append(("Adaptive rules against the best fixed λ", rules_lines(rules)))
        data["rules"] = rules.to_dict()
    data["paper_claims"] = paper
    if not paper:  # computed by assess, but not this protocol's question: not stored as answers
        data["claims"], data["crossing"], data["sensitivity"] = [], "not tested", []
    figs = draw_all(a, out / "figures", paper)
    page = render(a, args.title, figs, paper=paper, sections=sections)
    atomic.write_text(out / "verdicts.md", page)
    atomic.write_text(out / "verdicts.json", json.dumps(data, indent=1, default=_json_default))
    sys.stdout.write(f"wrote {out / 'verdicts.md'} ({a.n_units} seeds, {len(figs)} figures)\n")
    return 0


def _claims_of(reps: Sequence[Replication]) -> tuple[bool, Thresholds]:
    """The replications' shared [claims]: whether the paper's claims apply, and the thresholds
    stored with the study before its first trial. Replications that disagree are refused: a
    verdict pooled over them would have no pre-registered rule."""
    from kfaclab.analysis.replication.report_blocks import paper_claims, thresholds_of

    seen = {(paper_claims(r.protocol), thresholds_of(r.protocol)) for r in reps}
    if len(seen) > 1:
        names = ", ".join(r.name for r in reps)
        raise UsageError(
            f"RUN folders must share their [claims] table (paper, thresholds), got differing "
            f"ones in {names}"
        )
    return next(iter(seen))


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")
