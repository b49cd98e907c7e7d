"""What `sweep` and `reproduce` do before and after the sweep itself.

Before: the protocol is validated completely — the schema, then a trial config of every cell at
the low end, the middle and the high end of every search range, through the trial runner's own
checks — and the dataset is found (or downloaded, once, here rather than in every worker). Only
then is anything stored, so a protocol that passes the schema but not the trial check leaves no
trace in the output folder and the corrected file just works.
After: a finished sweep says which command comes next.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TextIO

from kfaclab.errors import UsageError
from kfaclab.study.protocol import Protocol, load_protocol
from kfaclab.study.storage import Storage
from kfaclab.text import clean


def load_checked_protocol(
    path: str | Path, data_dir: str | None = None, device: str = "cpu"
) -> Protocol:
    """``load_protocol`` plus the trial runner's checks of every cell (nothing stored yet)."""
    protocol = load_protocol(path, data_dir=data_dir, device=device)
    check_trials(protocol)
    return protocol


def check_trials(protocol: Protocol) -> None:
    from kfaclab.damping import build_damping
    from kfaclab.study.cells import build_cells, search_space
    from kfaclab.study.sweep import trial_config
    from kfaclab.train import validate_config

    for cell in build_cells(protocol):
        space = search_space(protocol, cell)
        for end in ("low", "middle", "high"):
            params = {
                k: r.low if end == "low" else r.high if end == "high" else (r.low + r.high) / 2
                for k, r in space.items()
            }
            config = trial_config(protocol, cell, params, protocol.search.seed)
            try:
                validate_config(config)
                if isinstance(config.damping, dict):
                    # A strategy's constants (searched ones included) are checked when it is
                    # built, which validate_config leaves to the trial: build it here, at each
                    # end, so a bad range is refused before anything is stored (issue 29, F14).
                    build_damping(config.damping)
            except UsageError as exc:
                raise UsageError(
                    f"protocol {protocol.name!r}, cell {cell.name} (search ranges at their {end} "
                    f"end): {exc}"
                ) from None


def prepare_dataset(protocol: Protocol, stream: TextIO | None = None) -> Path:
    """Find or download the protocol's dataset here, once, and say where it is."""
    from kfaclab.data import ensure_dataset

    folder = ensure_dataset(protocol.data.dataset, protocol.data.data_dir)
    (stream or sys.stderr).write(f"kfaclab: dataset {protocol.data.dataset} in {folder}\n")
    return folder


def next_step(spec: Storage, protocol: Protocol) -> str:
    """The command that turns the finished sweep into its report."""
    folder = spec.out_folder
    if folder is None:
        target = f"--storage {shlex.quote(spec.describe())}"  # described: no password
    else:
        target = shlex.quote(str(folder))
    return clean(f"next: kfaclab report {target} --protocol {shlex.quote(protocol.name)}")
