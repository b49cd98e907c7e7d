"""`kfaclab train`: run one trial from flags and/or a TOML file, show progress, write JSON.

    kfaclab train --optimizer kfac --damping 1.0 --lr 0.05 --momentum 0.9 --lr-decay 0.1 \\
        --epochs 1 --data-dir DIR --out result.json
    kfaclab train --config trial.toml --seed 3      # flags override the file

The TOML file holds ``TrialConfig`` fields at top level (``damping`` may be a table such as
``{kind = "levenberg_marquardt", initial = 1.0}``); an unknown key is an error naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch

from kfaclab.errors import UsageError
from kfaclab.trial_types import TrialConfig, TrialResult

# (flag, TrialConfig field, argparse type, choices, help); every flag defaults to "not given" so
# that only the flags actually typed override the TOML file.
_FLAGS: tuple[tuple[str, str, Any, tuple[str, ...] | None, str], ...] = (
    ("--optimizer", "optimizer", str, ("sgd", "kfac"), "default: kfac"),
    ("--lr", "lr", float, None, "initial learning rate η₀ (default 0.05)"),
    ("--lr-decay", "lr_decay", float, None, "α, final fraction of lr: η_t = η₀(1−(1−α)t/T)"),
    ("--momentum", "momentum", float, None, "heavy-ball momentum μ (default 0)"),
    ("--damping", "damping", float, None, "constant λ for K-FAC (default 1e-3)"),
    ("--damping-form", "damping_form", str, ("exact", "factored"), "default: exact"),
    ("--fisher", "fisher", str, ("empirical", "mc"), "default: empirical"),
    ("--factor-decay", "factor_decay", float, None, "EMA decay of A and G (default 0.95)"),
    ("--factor-every", "factor_every", int, None, "update the factors every N steps"),
    ("--inverse-every", "inverse_every", int, None, "re-decompose the factors every N steps"),
    ("--kl-clip", "kl_clip", float, None, "K-FAC KL clipping bound (default: off)"),
    ("--dataset", "dataset", str, ("mnist", "fashion-mnist"), "default: mnist"),
    ("--data-dir", "data_dir", str, None, "folder searched first for the IDX files"),
    ("--depth", "depth", int, None, "number of nn.Linear layers (default 6)"),
    ("--width", "width", int, None, "hidden units per layer (default 100)"),
    ("--activation", "activation", str, ("relu", "tanh", "identity"), "default: relu"),
    ("--batch-size", "batch_size", int, None, "default 128"),
    ("--epochs", "epochs", int, None, "default 1 (469 steps at batch 128)"),
    ("--steps", "steps", int, None, "total steps; overrides --epochs"),
    ("--seed", "seed", int, None, "default 0"),
    ("--device", "device", str, None, "torch device (default cpu)"),
    ("--dtype", "dtype", str, ("float32", "float64"), "default: float32"),
    ("--eval-steps", "eval_steps", None, None, "comma-separated steps; the last is always added"),
    ("--histogram-steps", "histogram_steps", None, None, "comma-separated (default 60,120,…,360)"),
    ("--divergence-loss", "divergence_loss", float, None, "loss bound for 'diverged' (1e3)"),
)
_FIELDS = {f.name for f in dataclasses.fields(TrialConfig)}


def _step_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def register(subparsers: Any) -> None:
    doc = __doc__ or ""
    p = subparsers.add_parser(
        "train",
        help="run one trial and write its result as JSON",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file of TrialConfig fields")
    for flag, field, kind, choices, help_text in _FLAGS:
        p.add_argument(
            flag, dest=field, type=kind or _step_list, choices=choices, default=None, help=help_text
        )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as workers)")
    p.add_argument("--out", type=Path, help="write the TrialResult here as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train)


def load_toml(path: Path) -> dict[str, Any]:
    """The TrialConfig fields of a TOML file; one-line UsageError for a missing or bad file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config must be an existing file, got {str(path)!r}") from None
    except tomllib.TOMLDecodeError as exc:  # its message names the line: "... (at line 3, ...)"
        raise UsageError(f"{path}: malformed TOML: {exc}") from None
    for key in data:
        if key not in _FIELDS:
            raise UsageError(f"{path}: unknown key {key!r} (allowed: {', '.join(sorted(_FIELDS))})")
    return data


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    merged: dict[str, Any] = load_toml(args.config) if args.config is not None else {}
    for _flag, field, *_ in _FLAGS:
        value = getattr(args, field)
        if value is not None:
            merged[field] = value
    try:
        return TrialConfig.from_dict(merged)
    except TypeError as exc:  # e.g. an unknown key inside the histogram_bins table
        raise UsageError(f"invalid trial config: {exc}") from None


def run_train(args: argparse.Namespace) -> int:
    from kfaclab.train import run_trial, validate_config  # the CLI's --help stays fast

    if args.threads < 1:
        raise UsageError(f"threads must be >= 1, got {args.threads}")
    config = config_from_args(args)
    validate_config(config)  # before the data loads, so a bad value fails at once
    torch.set_num_threads(args.threads)
    bar = _ProgressBar(enabled=not args.no_progress)
    try:
        result = run_trial(config, progress=bar)
    finally:
        bar.close()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_dict()) + "\n")
    print(summary(result, args.out))
    return 0


def summary(result: TrialResult, out: Path | None) -> str:
    rate = result.steps_done / result.seconds if result.seconds > 0 else float("nan")
    head = (
        f"ok: final train loss {result.value:.4f}, test accuracy "
        f"{100 * result.final_test_accuracy:.2f}%"
        if result.status == "ok"
        else f"diverged at step {result.diverged_at}"
    )
    tail = f", written to {out}" if out is not None else ""
    return f"{head}; {result.steps_done} steps in {result.seconds:.1f} s ({rate:.0f} steps/s){tail}"


class _ProgressBar:
    """A tqdm bar on stderr, created on the first report (only then is the step count known).
    Updated every few steps: tqdm's per-call cost is small, its redraws are not."""

    EVERY = 10

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, loss: float) -> None:
        if not self.enabled or (done % self.EVERY and done != total):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
