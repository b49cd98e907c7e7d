"""`kfaclab report`: a stored study → report.html + report.md (and figures, reruns.json).

    kfaclab report DIR | --storage URL [--out DIR] [--no-reruns] [--protocol NAME]

The report folder is checked before any work: creatable and writable, not inside a .git folder,
and without a symbolic link where the report writes a file (report.md, report.html, reruns.json,
figures/): writing through a link planted there would overwrite whatever it points at.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfaclab.cli.targets import add_stored_sweep_arguments, stored_sweep
from kfaclab.errors import UsageError

if TYPE_CHECKING:
    from kfaclab.analysis.report.build import Report

# What build_report writes in its folder (analysis/report/build.py, analysis/summary/reruns.py,
# figures/style.save).
REPORT_FILES = ("report.md", "report.html", "reruns.json", "figures")


def register(subparsers: Any) -> None:
    rep = subparsers.add_parser(
        "report",
        help="write report.html and report.md for a sweep",
        description="Summaries, figures and a self-contained HTML report of a stored sweep; "
        "works on a sweep still running (it says so).",
    )
    add_stored_sweep_arguments(rep)
    rep.add_argument("--out", help="report folder (default: the sweep's folder, or ./report)")
    add_rerun_flag(rep)
    rep.add_argument(
        "--workers", type=int, default=1, help="worker processes for the reruns (default 1)"
    )
    rep.set_defaults(func=run_report)


def add_rerun_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-reruns",
        action="store_true",
        help="skip rerunning each cell's best configuration on new seeds",
    )


def check_report_dir(out: Path, flag: str = "--out") -> Path:
    """The report folder, checked (see the module docstring) and created."""
    from kfaclab.cli.outputs import check_out_dir

    check_out_dir(out, flag)
    for name in REPORT_FILES:
        if (out / name).is_symlink():
            raise UsageError(
                f"{flag} must not hold a symbolic link where the report writes, got "
                f"{str(out / name)!r} -> {str((out / name).readlink())!r}; remove it first"
            )
    figures = out / "figures"
    if figures.is_dir():
        for path in figures.iterdir():
            if path.is_symlink():
                raise UsageError(
                    f"{flag} must not hold a symbolic link where the report writes, got "
                    f"{str(path)!r}; remove it first"
                )
    return out


def run_report(args: argparse.Namespace) -> int:
    from kfaclab.study.reader import read_study_set

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    spec = stored_sweep(args.target, args.storage)
    out = Path(args.out) if args.out else (spec.out_folder or Path("report"))
    for name in ("report.html", "report.md", "reruns.json"):
        spec.refuse_own_file(out / name, "--out")
    # Read first (a mistyped DIR must not leave a report folder behind), then check the output
    # folder before the work: reruns and figures take minutes.
    started = time.perf_counter()  # the report's cost section states its reading time
    study = read_study_set(spec, protocol=args.protocol)
    load_seconds = time.perf_counter() - started
    check_report_dir(out)
    write_report(
        study,
        out,
        spec.describe(),
        not args.no_reruns,
        workers=args.workers,
        paired_from=(spec.out_folder,) if spec.out_folder else (),
        load_seconds=load_seconds,
    )
    return 0


def write_report(
    study: Any,
    out: Path,
    storage: str,
    reruns: bool,
    *,
    workers: int = 1,
    paired_from: tuple[Path, ...] = (),
    load_seconds: float | None = None,
) -> Report:
    from kfaclab.analysis.report.build import build_report

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    report = build_report(
        study,
        out,
        storage=storage,
        reruns=reruns,
        log=log,
        workers=workers,
        paired_from=paired_from,
        load_seconds=load_seconds,
    )
    sys.stdout.write(f"wrote {report.html} and {report.markdown} ({len(report.figures)} figures)\n")
    return report
