"""Where a report's numbers came from: software, code version, machine, seeds, storage.

Read-only: git is only asked (``rev-parse``/``status``), never changed; a storage URL is shown
without its password.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from kfaclab.analysis.summary.types import TrialLike

PACKAGES = ("kfaclab", "torch", "numpy", "optuna", "sqlalchemy", "matplotlib")


def strip_password(url: str) -> str:
    """scheme://user:secret@host → scheme://user@host (also ?password=…): the storage package's
    one redaction function, so reports and messages hide passwords the same way."""
    from kfaclab.study.storage.urls import redact

    return redact(url)


def versions() -> list[tuple[str, str]]:
    out = [("python", sys.version.split()[0])]
    for name in PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def git_commit(package: Path | None = None) -> str:
    """The commit of the kfaclab source tree (with "+ local changes" if the package's own files
    differ from it: a report rebuilt in place beside its tracked outputs is not "dirty"), or why
    none. ``package``: the source folder to check (default: this installed kfaclab's)."""
    package = package or Path(__file__).resolve().parents[1]
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=package, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", str(package))
    except (OSError, subprocess.SubprocessError):
        return "none (not a git checkout, or no commit yet)"
    return commit + (" + local changes" if dirty else "")


def hardware() -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = [("os", platform.platform()), ("cpu", f"{cpu}, {os.cpu_count()} logical cores")]
    try:
        import torch

        if torch.cuda.is_available():
            out.append(("gpu", torch.cuda.get_device_name(0)))
    except ImportError:
        pass
    return out


def trial_seeds(trials: Sequence[TrialLike]) -> str:
    seeds = sorted({t.record.config.seed for t in trials if t.record is not None})
    if not seeds:
        return "none recorded"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 3:
        return f"{seeds[0]}…{seeds[-1]} ({len(seeds)} distinct)"
    return ", ".join(map(str, seeds[:20])) + (" …" if len(seeds) > 20 else "")
