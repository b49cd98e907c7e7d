"""`kfaclab data verify`: where each dataset file was found and whether its sha256 checks out."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kfaclab.data import DATASETS, verify_dataset


def register(subparsers: Any) -> None:
    data = subparsers.add_parser("data", help="inspect the datasets", description=__doc__)
    actions = data.add_subparsers(dest="data_command", required=True)
    verify = actions.add_parser(
        "verify",
        help="check every dataset file (IDX structure and sha256 of the decompressed bytes)",
        description="Reports, one line per file, where it was found and whether it checks out. "
        "Exit code 0 if every file is fine, 1 otherwise.",
    )
    verify.add_argument("--dataset", choices=[*DATASETS, "all"], default="all", help="default: all")
    verify.add_argument(
        "--data-dir", default=None, help="folder searched first (then the cache, system folders)"
    )
    verify.add_argument(
        "--download",
        action="store_true",
        help="fetch missing files from the public mirrors into the user cache",
    )
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    failed = 0
    for name in names:
        for report in verify_dataset(name, args.data_dir, download=args.download):
            label = f"{report.dataset}/{report.file}"
            if report.ok:
                print(f"ok      {label:40} {report.path}")
            else:
                failed += 1
                print(f"FAILED  {label:40} {report.problem}")
    total = sum(len(DATASETS[n].files) for n in names)
    summary = f"{total - failed} of {total} files ok"
    print(summary if not failed else f"{summary}; {failed} failed", file=sys.stderr)
    return 1 if failed else 0
