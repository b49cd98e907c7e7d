"""`kfaclab train`: run one trial from flags and/or a TOML file, show progress, write JSON.

    kfaclab train --optimizer kfac --damping 1.0 --lr 0.05 --momentum 0.9 --lr-decay 0.1 \\
        --epochs 1 --data-dir DIR --out result.json
    kfaclab train --config trial.toml --seed 3      # flags override the file

The TOML file holds ``TrialConfig`` fields at top level (``damping`` may be a table such as
``{kind = "levenberg_marquardt", initial = 1.0}``); an unknown key is an error naming it.

Defaults: those of ``TrialConfig``, except the learning rate, momentum and λ, which take the
values of ``TRAIN_DEFAULTS`` for the chosen optimizer when neither a flag nor the file sets them.
TrialConfig's K-FAC values (lr 0.05, λ 1e-3, momentum 0) diverge at step 4 on MNIST; these train
one epoch of the reference 6 × 100 ReLU network stably (measured with seeds 0–2: K-FAC
final training loss 0.13–0.14, 95 % test accuracy, and still stable at twice the learning rate;
SGD 0.18, 94 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from kfaclab import choices as ch
from kfaclab.cli.outputs import check_out_file, save_result
from kfaclab.errors import UsageError
from kfaclab.study.bounds import MAX_NESTING, MAX_TRAINING_STEPS, nesting_depth
from kfaclab.trial_types import TrialConfig, TrialResult

TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "kfac": {"lr": 0.05, "damping": 0.1, "momentum": 0.0},
    "sgd": {"lr": 0.05, "momentum": 0.9},
}
# More threads than this many per core only oversubscribe the machine (and torch crashes with a
# segmentation fault when asked for 100000).
THREADS_PER_CORE = 4
_D = TrialConfig()  # TrialConfig's defaults, quoted in the help texts
_K, _S = TRAIN_DEFAULTS["kfac"], TRAIN_DEFAULTS["sgd"]

# (flag, TrialConfig field, argparse type, choices, help); every flag defaults to "not given" so
# that only the flags actually typed override the TOML file.
_FLAGS: tuple[tuple[str, str, Any, tuple[str, ...] | None, str], ...] = (
    ("--optimizer", "optimizer", str, ch.OPTIMIZERS, f"default: {_D.optimizer}"),
    ("--lr", "lr", float, None, f"initial learning rate η₀ ({_K['lr']}; SGD {_S['lr']})"),
    ("--lr-decay", "lr_decay", float, None, "α, final fraction of lr: η_t = η₀(1−(1−α)t/T)"),
    ("--momentum", "momentum", float, None, f"momentum μ ({_K['momentum']}; SGD {_S['momentum']})"),
    ("--damping", "damping", float, None, f"constant λ for K-FAC (default {_K['damping']})"),
    ("--damping-form", "damping_form", str, ch.DAMPING_FORMS, f"default: {_D.damping_form}"),
    ("--fisher", "fisher", str, ch.FISHER_TYPES, f"default: {_D.fisher}"),
    ("--factor-decay", "factor_decay", float, None, f"EMA decay of A, G ({_D.factor_decay})"),
    ("--factor-every", "factor_every", int, None, f"factor update period ({_D.factor_every})"),
    ("--inverse-every", "inverse_every", int, None, f"decomposition period ({_D.inverse_every})"),
    ("--kl-clip", "kl_clip", float, None, "K-FAC KL clipping bound (default: off)"),
    ("--factor-init", "factor_init", str, ch.FACTOR_INITS, f"first factors ({_D.factor_init})"),
    ("--eigen-floor", "eigen_floor", float, None, f"eigenvalue floor ({_D.eigen_floor})"),
    ("--conv-approx", "conv_approx", str, ch.CONV_APPROXIMATIONS, f"Conv2d ({_D.conv_approx})"),
    ("--model", "model", str, ch.MODELS, f"mlp (build_mlp) or cnn (build_cnn); {_D.model}"),
    ("--dataset", "dataset", str, ch.DATASETS, f"default: {_D.dataset}"),
    ("--data-dir", "data_dir", str, None, "folder searched first for the IDX files"),
    ("--depth", "depth", int, None, f"number of nn.Linear layers (default {_D.depth})"),
    ("--width", "width", int, None, f"hidden units per layer (default {_D.width})"),
    ("--activation", "activation", str, ch.ACTIVATIONS, f"default: {_D.activation}"),
    ("--init", "init", str, ch.INITS, f"weight initialisation (default {_D.init})"),
    ("--batch-size", "batch_size", int, None, f"default {_D.batch_size}"),
    ("--epochs", "epochs", int, None, f"default {_D.epochs} (469 steps at batch 128)"),
    ("--steps", "steps", int, None, "total steps; overrides --epochs"),
    ("--seed", "seed", int, None, f"default {_D.seed}"),
    ("--device", "device", str, None, f"torch device (default {_D.device})"),
    ("--dtype", "dtype", str, ch.DTYPES, f"default: {_D.dtype}"),
    ("--eval-steps", "eval_steps", None, None, "comma-separated steps; the last is always added"),
    ("--histogram-steps", "histogram_steps", None, None, "comma-separated (default 60,120,…,360)"),
    ("--divergence-loss", "divergence_loss", float, None, f"bound ({_D.divergence_loss:g})"),
)  # fmt: skip
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
    p.add_argument("--out", help="write the TrialResult here as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train)


def load_toml(path: Path) -> dict[str, Any]:
    """The TrialConfig fields of a TOML file; one-line UsageError for a missing or bad file."""
    try:
        with path.open("rb") as f:
            # utf-8-sig: a byte-order mark (Windows editors write one) is not a TOML error.
            data = tomllib.loads(f.read().decode("utf-8-sig"))
        if nesting_depth(data) > MAX_NESTING:
            raise RecursionError
    except RecursionError:
        raise UsageError(
            f"{path}: must nest arrays and tables at most {MAX_NESTING} deep"
        ) from None
    except FileNotFoundError:
        raise UsageError(f"--config must be an existing file, got {str(path)!r}") from None
    except IsADirectoryError:
        raise UsageError(f"--config must be a file, got {str(path)!r} (a folder)") from None
    except OSError as exc:
        raise UsageError(f"--config: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # tomllib decodes UTF-8 itself
        raise UsageError(f"--config must be UTF-8 text, got {str(path)!r} ({exc.reason})") from None
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
    optimizer = merged.get("optimizer", _D.optimizer)
    for key, value in TRAIN_DEFAULTS.get(optimizer, {}).items():
        merged.setdefault(key, value)
    try:
        return TrialConfig.from_dict(merged)
    except TypeError as exc:  # e.g. an unknown key inside the histogram_bins table
        raise UsageError(f"invalid trial config: {exc}") from None


def check_threads(threads: int) -> int:
    limit = THREADS_PER_CORE * (os.cpu_count() or 1)
    if not 1 <= threads <= limit:
        raise UsageError(
            f"threads must be in [1, {limit}] ({THREADS_PER_CORE} per CPU core), got {threads}"
        )
    return threads


def run_train(args: argparse.Namespace) -> int:
    import torch

    from kfaclab.train import run_trial, validate_config  # the CLI's --help stays fast

    check_threads(args.threads)
    config = config_from_args(args)
    validate_config(config)  # before the data loads, so a bad value fails at once
    steps = (
        config.steps if config.steps is not None else config.epochs * -(-60000 // config.batch_size)
    )
    if steps > MAX_TRAINING_STEPS:  # a value per step is kept: 1e12 steps ran out of memory
        raise UsageError(
            f"--steps/--epochs must give at most {MAX_TRAINING_STEPS} steps, got {steps}"
        )
    # Checked before training: a run is never lost to an --out found unusable at the end.
    out = None if args.out is None else check_out_file(args.out)
    torch.set_num_threads(args.threads)
    bar = _ProgressBar(enabled=not args.no_progress)
    try:
        result = run_trial(config, progress=bar)
    finally:
        bar.close()
    if out is not None:
        save_result(result.to_dict(), out, stem="kfaclab-train")
    print(summary(result, out))
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
