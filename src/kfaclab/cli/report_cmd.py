"""`kfaclab report` and `kfaclab reproduce`: a stored study → report.html + report.md.

    kfaclab report DIR | --storage URL [--out DIR] [--no-reruns] [--protocol NAME]
    kfaclab reproduce [--preset quick|paper|paper-linear|adaptive] [--out DIR] [--workers N]

`reproduce` is the project's main job: the preset's sweep on the embedded storage in --out, then
its report. Rerunning it resumes the sweep and rebuilds the report (reruns are cached).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfaclab.cli.targets import add_stored_sweep_arguments, stored_sweep
from kfaclab.errors import UsageError

if TYPE_CHECKING:
    from kfaclab.analysis.report import Report

PRESETS = ("quick", "paper", "paper-linear", "paper-b2", "adaptive", "adaptive-quick")


def register(subparsers: Any) -> None:
    rep = subparsers.add_parser(
        "report",
        help="write report.html and report.md for a sweep",
        description="Summaries, figures and a self-contained HTML report of a stored sweep; "
        "works on a sweep still running (it says so).",
    )
    add_stored_sweep_arguments(rep)
    rep.add_argument("--out", help="report folder (default: the sweep's folder, or ./report)")
    _common(rep)
    rep.set_defaults(func=run_report)

    rp = subparsers.add_parser(
        "reproduce",
        help="sweep + report for a preset protocol (resumes when rerun)",
        description="Runs a preset protocol on the embedded storage in --out, then the report.",
    )
    rp.add_argument(
        "--preset", default="quick", help=f"one of {', '.join(PRESETS)} (default quick)"
    )
    rp.add_argument("--out", help="output folder (default runs/<preset>)")
    rp.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    rp.add_argument(
        "--data-dir", help="folder with the dataset's IDX files (default: cache, then download)"
    )
    _common(rp)
    rp.set_defaults(func=run_reproduce)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-reruns",
        action="store_true",
        help="skip rerunning each cell's best configuration on new seeds",
    )


def run_report(args: argparse.Namespace) -> int:
    from kfaclab.study.reader import read_study_set

    spec = stored_sweep(args.target, args.storage)
    out = Path(args.out) if args.out else (spec.out_folder or Path("report"))
    for name in ("report.html", "report.md", "reruns.json"):
        spec.refuse_own_file(out / name, "--out")
    study = read_study_set(spec, protocol=args.protocol)
    _write(study, out, spec.describe(), not args.no_reruns)
    return 0


def _write(study: Any, out: Path, storage: str, reruns: bool) -> Report:
    from kfaclab.analysis.report import build_report

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    report = build_report(study, out, storage=storage, reruns=reruns, log=log)
    sys.stdout.write(f"wrote {report.html} and {report.markdown} ({len(report.figures)} figures)\n")
    return report


def preset_path(name: str) -> Path:
    """configs/<name>.toml: packaged with kfaclab if installed so, else the source checkout's."""
    if name not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    import kfaclab

    pkg = Path(kfaclab.__file__).resolve().parent
    for folder in (pkg / "configs", pkg.parents[1] / "configs", Path.cwd() / "configs"):
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    raise UsageError(
        f"--preset {name}: no configs/{name}.toml found next to kfaclab or in {Path.cwd()}"
    )


def run_reproduce(args: argparse.Namespace) -> int:
    from kfaclab.study.protocol import load_protocol
    from kfaclab.study.reader import read_study_set
    from kfaclab.study.runner import run_sweep
    from kfaclab.study.storage import resolve

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    protocol = load_protocol(preset_path(args.preset), data_dir=args.data_dir)
    out = Path(args.out or f"runs/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    spec = resolve(str(out))
    rc = run_sweep(protocol, spec, workers=args.workers)
    # A sweep interrupted or with failed trials still gets a report that says what is missing.
    study = read_study_set(spec, protocol=protocol.name)
    report = _write(study, out, spec.describe(), not args.no_reruns)
    from kfaclab.analysis.headline import headline_text

    sys.stdout.write("\n" + headline_text(report.claims))  # the answer, last on the terminal
    return rc
