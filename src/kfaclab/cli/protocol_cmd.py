"""`kfaclab protocol`: write, check and look up protocol files.

kfaclab protocol new [--out FILE] [--name NAME]   a commented template that loads as written
kfaclab protocol check FILE                       every problem of FILE, one per line (exit 2)
kfaclab protocol keys                             the key reference (docs/protocol.md), Markdown
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.errors import UsageError


def register(subparsers: Any) -> None:
    pp = subparsers.add_parser(
        "protocol",
        help="write a protocol template, check a protocol file, list every protocol key",
        description="Protocol files: a template to start from, a check, the key reference.",
    )
    sub = pp.add_subparsers(dest="protocol_command", required=True)
    new = sub.add_parser("new", help="write a commented template that loads as written")
    new.add_argument("--out", help="file to write (default: standard output); never overwritten")
    new.add_argument("--name", default="my-study", help="protocol.name (default: my-study)")
    new.set_defaults(func=_new)
    check = sub.add_parser("check", help="read FILE and report every problem at once")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_check)
    keys = sub.add_parser("keys", help="every key, its type, default and meaning (Markdown)")
    keys.set_defaults(func=_keys)


def _new(args: argparse.Namespace) -> int:
    from kfaclab.study.keys_doc import template
    from kfaclab.study.protocol import parse_protocol

    if "/" in args.name or not args.name:
        raise UsageError(f"--name must be non-empty and without '/', got {args.name!r}")
    text = template(args.name)
    import tomllib

    parse_protocol(tomllib.loads(text))  # a template that does not load is a bug, not a file
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out must not exist (no protocol is overwritten), got {args.out!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out must be in an existing folder, got {args.out!r}")
    atomic.write_text(out, text)  # whole or not at all; a link planted at --out is not followed
    sys.stderr.write(f"kfaclab protocol: wrote {out}; run it: kfaclab sweep {out} --out DIR\n")
    return 0


def _check(args: argparse.Namespace) -> int:
    from kfaclab.study.protocol import load_protocol

    protocol = load_protocol(args.file)
    cells = len(protocol.cells.lambdas) + len(protocol.cells.strategies) + int(protocol.cells.sgd)
    sys.stdout.write(
        f"{args.file}: protocol {protocol.name!r} is valid: {cells} cells × "
        f"{protocol.search.n_trials} trials of {protocol.training.total_steps} steps\n"
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    from kfaclab.study.keys_doc import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0
