"""How the commands that read a stored sweep (report, status, export) are told where it is:
``DIR`` (the sweep's --out folder) or ``--storage URL``, exactly one of them."""

from __future__ import annotations

import argparse

from kfaclab.errors import UsageError
from kfaclab.study.storage import Storage, resolve


def add_stored_sweep_arguments(parser: argparse.ArgumentParser, out_csv: bool = False) -> None:
    parser.add_argument("target", nargs="?", help="output folder of the sweep")
    if out_csv:
        parser.add_argument("out_csv", metavar="OUT.csv", nargs="?", help="trials CSV to write")
    parser.add_argument("--storage", help="database URL instead of an output folder")
    parser.add_argument("--protocol", help="which protocol, when the storage holds several")


def stored_sweep(target: str | None, storage: str | None) -> Storage:
    """The storage of a finished or running sweep, from DIR or --storage URL (not both;
    ``resolve`` refuses neither)."""
    if target is not None and storage is not None:
        raise UsageError(f"give DIR or --storage URL, not both (got {target!r})")
    return resolve(target, storage)
