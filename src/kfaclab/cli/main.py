"""Entry point of `kfaclab`: a parser built from the subcommand modules; errors become exit codes.

Each subcommand module exposes ``register(subparsers) -> None``; the parser it adds sets
``func=callable(args) -> int``. A ``UsageError`` (bad input, found by the validation every
command does first) prints ``kfaclab: error: <message>`` on one line and exits with code 2.
Ctrl-C and SIGTERM print one line and exit with 130 and 143 (128 + the signal number), after the
command has kept what it finished. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from kfaclab.errors import Terminated, UsageError
from kfaclab.text import clean

# Subcommand modules, in the order `kfaclab --help` lists them. A module that is missing is skipped
# so that a partial install still runs the commands it has.
_SUBCOMMAND_MODULES = (
    "kfaclab.cli.train_cmd",
    "kfaclab.cli.data_cmd",
    "kfaclab.cli.sweep_cmd",
    "kfaclab.cli.design_cmd",
    "kfaclab.cli.report_cmd",
    "kfaclab.cli.reproduce_cmd",
    "kfaclab.cli.protocol_cmd",
    "kfaclab.cli.claims_cmd",
    "kfaclab.cli.replicate_cmd",
    "kfaclab.cli.verdicts_cmd",
    "kfaclab.cli.dashboard_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; this keeps its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kfaclab", description="K-FAC damping laboratory")
    parser.add_argument("--version", action="version", version=f"kfaclab {version()}")
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


def version() -> str:
    """``kfaclab.__version__``: the one place the version is written (pyproject reads it too),
    so an editable install whose metadata predates a version bump still reports the right one."""
    from kfaclab import __version__

    return __version__


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Worker processes of a sweep get SIGINT, which they handle as Ctrl-C (their running trial
    # is re-queued, not left RUNNING until its heartbeat expires); this process unwinds likewise.
    for child in multiprocessing.active_children():
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(child.pid, signal.SIGINT)
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Python only lets the main thread set handlers (tests may call main() from another one).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return int(args.func(args))
    except UsageError as exc:
        # A protocol's problems come all at once, one per line (study._schema.ProtocolErrors).
        for line in str(exc).splitlines() or [""]:
            # clean: names in messages come from protocol files and shared storages, and an
            # escape sequence in one would act on the terminal (set its title, erase lines).
            sys.stderr.write(f"kfaclab: error: {clean(line)}\n")
        return 2
    except Terminated:
        sys.stderr.write("kfaclab: terminated (SIGTERM); finished results are kept\n")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        sys.stderr.write("kfaclab: interrupted; finished results are kept\n")
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
