"""Entry point of `kfaclab`: a parser built from the subcommand modules; errors become exit codes.

Each subcommand module exposes ``register(subparsers) -> None``; the parser it adds sets
``func=callable(args) -> int``. A ``UsageError`` (bad input, found by the validation every
command does first) prints ``kfaclab: error: <message>`` on one line and exits with code 2. Other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kfaclab.errors import UsageError

# Subcommand modules, in the order `kfaclab --help` lists them. A module that is missing is skipped
# so that a partial install still runs the commands it has.
_SUBCOMMAND_MODULES = (
    "kfaclab.cli.train_cmd",
    "kfaclab.cli.data_cmd",
    "kfaclab.cli.sweep_cmd",
    "kfaclab.cli.report_cmd",
    "kfaclab.cli.claims_cmd",
    "kfaclab.cli.dashboard_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; this keeps its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kfaclab", description="K-FAC damping laboratory")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        sys.stderr.write(f"kfaclab: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("kfaclab: interrupted; finished results are kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
