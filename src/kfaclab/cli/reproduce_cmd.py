"""`kfaclab reproduce`: the project's main job — a preset's sweep, then its report.

    kfaclab reproduce [--preset quick|paper|…] [--out DIR] [--workers N] [--no-reruns]

The preset's sweep runs on the embedded storage in --out (default runs/<preset>), then the report
is written there. Rerunning the command resumes the sweep and rebuilds the report (reruns are
cached). Everything is checked first: the protocol, the output folder (and the report's files in
it), the dataset; a sweep stopped half-way still gets a report that says what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kfaclab.cli.report_cmd import add_rerun_flag, check_report_dir, write_report
from kfaclab.errors import UsageError

PRESETS = (
    "quick",
    "paper",
    "paper-seed1",
    "paper-seed2",
    "paper-linear",
    "paper-b2",
    "paper-popular",
    "paper-popular-noclip",
    "readings-quick-paper",
    "readings-quick-paper-linear",
    "readings-quick-paper-b2",
    "readings-quick-paper-popular",
    "readings-quick-paper-popular-noclip",
    "adaptive",
    "adaptive-quick",
    "cnn-fashion-quick",
    "cnn-fashion",
    "smoke",  # seconds: a test of the machinery (CI runs it from an installed wheel)
)
ALIASES = {"base": "paper", "base-seed1": "paper-seed1", "base-seed2": "paper-seed2"}
"""`paper` is kfaclab's base reading of the study, not the paper's own (unknown) protocol; the
alias says so. The files keep their names: stored studies carry them."""


def register(subparsers: Any) -> None:
    rp = subparsers.add_parser(
        "reproduce",
        help="sweep + report for a preset protocol (resumes when rerun)",
        description="Runs a preset protocol on the embedded storage in --out, then the report.",
    )
    rp.add_argument(
        "--preset", default="quick", choices=(*PRESETS, *ALIASES), help="default: quick"
    )
    rp.add_argument("--out", help="output folder (default runs/<preset>)")
    rp.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    rp.add_argument(
        "--data-dir", help="folder with the dataset's IDX files (default: cache, then download)"
    )
    rp.add_argument("--device", default="cpu", help="where trials run: cpu (default), cuda")
    add_rerun_flag(rp)
    rp.set_defaults(func=run_reproduce)


def preset_path(name: str) -> Path:
    """configs/<name>.toml: packaged with kfaclab if installed so, else the source checkout's."""
    name = ALIASES.get(name, name)
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
    from kfaclab.cli.sweeping import load_checked_protocol, prepare_dataset
    from kfaclab.study.reader import read_study_set
    from kfaclab.study.registry import ensure_studies
    from kfaclab.study.runner import run_sweep
    from kfaclab.study.storage import open_storage, resolve

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    protocol = load_checked_protocol(
        preset_path(args.preset), data_dir=args.data_dir, device=args.device
    )
    out = check_report_dir(Path(args.out or f"runs/{args.preset}"))
    spec = resolve(str(out))
    ensure_studies(protocol, open_storage(spec, create=True), spec)  # see sweep_cmd
    prepare_dataset(protocol)
    rc = run_sweep(protocol, spec, workers=args.workers)
    # A sweep interrupted or with failed trials still gets a report that says what is missing.
    study = read_study_set(spec, protocol=protocol.name)
    report = write_report(study, out, spec.describe(), not args.no_reruns, workers=args.workers)
    from kfaclab.analysis.headline import headline_text

    sys.stdout.write("\n" + headline_text(report.claims))  # the answer, last on the terminal
    return rc
