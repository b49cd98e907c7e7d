"""``kfaclab sweep DESIGN.toml --out DIR``: every run of a design, each an ordinary sweep.

Layout: ``DIR/design.json`` (the design file as loaded, the runs and the aliasing: what
``kfaclab effects`` reads) and one folder per run, ``DIR/<run>/``, holding that run's studies
(``studies.journal``), exactly as ``kfaclab sweep`` of the run's protocol into that folder would.
With ``--storage URL`` every run's studies go to that database instead, told apart by their
protocol names ("<design>-<run>"), so several machines share a design as they share a sweep.

Runs go in the design's order (every point of the first seed, then the next seed: a partial
design still holds whole replicates), each to completion with ``workers`` processes. Rerunning
the command resumes: finished runs are checked and skipped in seconds, the unfinished one
continues. A design.json whose design differs from DESIGN is refused, like a stored protocol.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from kfaclab import atomic
from kfaclab.errors import UsageError
from kfaclab.study._schema import first_difference
from kfaclab.study.design_schema import Design, DesignRun, parse_design, run_protocol
from kfaclab.study.protocol import Protocol, for_machine
from kfaclab.study.storage import Storage, from_url, resolve

MANIFEST = "design.json"


def run_spec(out: Path, run: DesignRun, url: str | None) -> Storage:
    """Where a run's studies are: its folder under ``out``, or the shared database."""
    return from_url(url) if url else resolve(str(out / run.name))


def run_protocols(
    design: Design, base_dir: Path | None, data_dir: str | None = None, device: str = "cpu"
) -> list[tuple[DesignRun, Protocol]]:
    return [(r, for_machine(run_protocol(r, base_dir), data_dir, device)) for r in design.runs]


def check_manifest(out: Path, design: Design) -> None:
    """Refuse an output folder that holds another design; write design.json if it has none."""
    path = out / MANIFEST
    if path.exists():
        stored = read_manifest(out)
        diff = first_difference(stored.get("design_file"), design.raw)
        if diff is not None:
            key, old, new = diff
            raise UsageError(
                f"{path} holds another design: it differs from DESIGN at {key}: stored {old!r}, "
                f"DESIGN {new!r}; use another --out"
            )
        return
    atomic.write_text(path, json.dumps(design.manifest(), indent=1, default=str) + "\n")


def read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"DIR must hold a design's {MANIFEST} (kfaclab sweep DESIGN.toml --out DIR), "
            f"found none in {str(out)!r}"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("kfaclab") != "design":
        raise UsageError(f"{path} is not a kfaclab design manifest")
    return data


def load_manifest_design(out: Path) -> Design:
    """The design stored in ``out``/design.json, read again with today's schema."""
    return parse_design(read_manifest(out)["design_file"])


def run_design(
    design: Design,
    runs: list[tuple[DesignRun, Protocol]],
    out: Path,
    url: str | None,
    *,
    workers: int = 1,
    trial_fn: Any = None,
    stream: TextIO | None = None,
) -> int:
    """Sweep every run in order; 0 when every run is complete, else the worst run's code."""
    from kfaclab.study.runner import run_sweep

    stream = stream or sys.stderr
    worst = 0
    for i, (run, protocol) in enumerate(runs):
        stream.write(
            f"kfaclab sweep: design run {i + 1}/{len(runs)} {run.name} ({design.level_text(run)})\n"
        )
        rc = run_sweep(
            protocol, run_spec(out, run, url), workers=workers, trial_fn=trial_fn, stream=stream
        )
        worst = max(worst, rc)
    return worst
