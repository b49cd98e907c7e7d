"""`kfaclab reproduce`: the project's main job — a preset's sweep, then its report.

    kfaclab reproduce [--preset quick|paper|…] [--out DIR] [--workers N] [--no-reruns]

The preset's sweep runs on the embedded storage in --out (default runs/<preset>); then, for a
preset whose [report] sets paired_reruns (quick, smoke), the paired reruns of each cell's top
configurations on new seeds (`kfaclab replicate`, into --out/paired-reruns.jsonl), so that the
report's verdicts use seeds as units; then the report is written there. Rerunning the command
resumes the sweep and rebuilds the report (reruns are cached). --no-reruns skips every rerun: the
paired ones and the report's own. Everything is checked first: the protocol, the output folder
(and the report's files in it), the dataset; a sweep stopped half-way still gets a report that
says what is missing (and no paired reruns: a cell's top configurations may still change).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfaclab.cli.replicate_cmd import replicate
from kfaclab.cli.report_cmd import check_report_dir, write_report
from kfaclab.errors import UsageError

if TYPE_CHECKING:
    from kfaclab.analysis.replication.assess import Assessment

PRESETS = (
    "quick",
    "paper",
    "paper-seed1",
    "paper-seed2",
    "paper-linear",
    "paper-b2",
    "paper-popular",
    "paper-popular-noclip",
    "paper-popular-noclip-seed1",
    "paper-popular-clipsearch",
    "paper-closest",
    "paper-closest-seed1",
    "readings-quick-paper",
    "readings-quick-paper-linear",
    "readings-quick-paper-b2",
    "readings-quick-paper-popular",
    "readings-quick-paper-popular-noclip",
    "adaptive",
    "adaptive-quick",
    "adaptive-fair",
    "adaptive-fair-seed1",
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
    rp.add_argument(
        "--no-reruns",
        action="store_true",
        help="skip every rerun on new seeds: the paired reruns (the preset's report.paired_reruns) "
        "and the report's reruns of each cell's best configuration",
    )
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
    out = check_paired_file(check_report_dir(Path(args.out or f"runs/{args.preset}")))
    spec = resolve(str(out))
    ensure_studies(protocol, open_storage(spec, create=True), spec)  # see sweep_cmd
    prepare_dataset(protocol)
    rc = run_sweep(protocol, spec, workers=args.workers)
    # A sweep interrupted or with failed trials still gets a report that says what is missing.
    study = read_study_set(spec, protocol=protocol.name)
    paired = protocol.paired_reruns
    if paired is not None and not args.no_reruns:
        if _finished(study):
            replicate(
                study,
                out,
                top=paired.top,
                n_seeds=paired.seeds,
                workers=args.workers,
                data_dir=protocol.data.data_dir,
            )
        else:
            sys.stderr.write(
                "kfaclab reproduce: no paired reruns: the sweep did not finish (a cell's top "
                "configurations may still change); rerun the command to resume it\n"
            )
    report = write_report(study, out, spec.describe(), not args.no_reruns, workers=args.workers)
    from kfaclab.analysis.report.headline import headline_text

    sys.stdout.write("\n" + headline_text(report.claims))
    sys.stdout.write(paired_text(report.paired, study.protocol))  # the answer, last
    return rc


def paired_text(a: Assessment | None, protocol: dict[str, Any]) -> str:
    """The report's verdicts on new seeds for a terminal ("" without paired reruns or without
    the paper's claims): when they exist they decide, and the top-k verdicts printed before
    describe."""
    from kfaclab.analysis.replication.markdown import SYMBOL
    from kfaclab.analysis.replication.report_blocks import paper_claims

    if a is None or not paper_claims(protocol):
        return ""
    rows = [(c.key, c.verdict, f"paper: {c.paper}; here: {c.finding}") for c in a.claims]
    rows.append(("C4∧C5", a.crossing, "the crossing: both halves must hold"))
    lines = [
        f"\n== {', '.join(a.replications)}: verdicts on new seeds ({a.n_units} seeds, "
        "paired reruns) ==",
        "The verdicts above read the search's own top-k on one seed; these decide.",
    ]
    for key, verdict, text in rows:
        lines += [f"{key:<6} {SYMBOL.get(verdict, '?')} {verdict}", f"{'':<6} {text}"]
    return "\n".join(lines) + "\n"


def check_paired_file(out: Path) -> Path:
    """--out, whose paired-reruns.jsonl (appended to by the paired reruns) must not be a link."""
    from kfaclab.analysis.replication.pool import CACHE_NAME

    path = out / CACHE_NAME
    if path.is_symlink():
        raise UsageError(
            f"--out must not hold a symbolic link where the report writes, got {str(path)!r} -> "
            f"{str(path.readlink())!r}; remove it first"
        )
    return out


def _finished(study: Any) -> bool:
    """Whether every cell has run all its trials (the paired reruns take each cell's top)."""
    from kfaclab.analysis.summary.summaries import all_cells_finished

    return all_cells_finished(study)
