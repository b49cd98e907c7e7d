"""A study protocol: a TOML file read into validated, frozen dataclasses.

docs/protocol.md documents every key (generated from study/keys.py, which a test holds to this
module). Reading is strict: an unknown or misspelt key, a value of the wrong type or out of
range, an empty λ grid, a top-k larger than the trial count are all ``UsageError`` one-liners,
since a silently ignored key would change what the study measures; all of a file's problems are
reported together (``_schema.collecting``).
``Protocol.raw`` keeps the dict exactly as loaded; the study stores it and refuses to resume with
a different one.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfaclab import choices as ch
from kfaclab.errors import UsageError
from kfaclab.lr_scale import LR_SCALES, STRATEGY_LR_SCALES
from kfaclab.study import _schema as s
from kfaclab.study._strategies import (
    CellsSpec,
    Range,
    cells_spec,
    search_range,
    searched_kl_clip,
)
from kfaclab.study._strategies import StrategySpec as StrategySpec  # study.cells imports it here
from kfaclab.study.bounds import (
    MAX_NESTING,
    MAX_TRAINING_STEPS,
    name_problem,
    nesting_depth,
)
from kfaclab.study.protocol_report import ClaimsSpec, PairedSpec, parse_claims, parse_report

SAMPLERS = ("tpe", "gp", "random")
TRIAL_SEEDS = ("fixed", "per_trial")
TRAIN_EXAMPLES = 60000  # MNIST and Fashion-MNIST alike
MACHINE_KEYS = s.MACHINE_KEYS


@dataclass(frozen=True)
class DataSpec:
    dataset: str
    data_dir: str | None  # absolute, or None: the data module's own search (cache, mirrors)


@dataclass(frozen=True)
class ModelSpec:
    depth: int
    width: int
    activation: str
    kind: str = "mlp"  # "cnn": models.build_cnn (depth and width do not apply)
    init: str = ch.DEFAULT_INIT  # weight initialisation (models.initialise)


@dataclass(frozen=True)
class TrainingSpec:
    batch_size: int
    epochs: int
    steps: int | None  # overrides epochs when set
    factor_decay: float
    factor_every: int
    inverse_every: int
    damping_form: str
    fisher: str
    kl_clip: float | None
    # implementation profile (DESIGN: "Implementation profiles", docs/interfaces.md)
    factor_init: str
    eigen_floor: float
    conv_approx: str
    divergence_loss: float
    eval_steps: tuple[int, ...] | None
    histogram_steps: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        """Steps of one trial; both datasets have 60000 training images, the last partial batch
        is a step (60000 / 128 → 469), as in kfaclab.train.schedule."""
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(TRAIN_EXAMPLES / self.batch_size)


@dataclass(frozen=True)
class SearchSpec:
    n_trials: int
    top_k: int
    sampler: str
    seed: int
    # "fixed": every trial trains with seed `seed` (same initialisation and batch order: common
    # random numbers, so trials differ only by their hyperparameters — and layer 1's factor
    # decompositions are shared between trials); "per_trial": trial k uses seed + k.
    trial_seeds: str
    lr: Range
    lr_decay: Range
    momentum: Range
    # "none": every cell samples lr in `lr`; "lambda": a fixed-λ cell samples lr/λ in `lr`
    # (kfaclab.lr_scale says why).
    lr_scale: str = "none"
    # "none": a strategy cell samples lr; "damping": it samples lr/λ and steps with (lr/λ)·λ_t.
    strategy_lr_scale: str = "none"
    # Where set, a K-FAC cell samples the KL clip in this range instead of lr, and trains with the
    # fixed lr ``kl_clip_lr`` (in lr_scale's units): under a binding clip the step is
    # sqrt(c / dᵀ∇)·d whatever lr is, so the clip, not lr, is the step-size hyperparameter.
    kl_clip: Range | None = None
    kl_clip_lr: float | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    data: DataSpec
    model: ModelSpec
    training: TrainingSpec
    cells: CellsSpec
    search: SearchSpec
    histogram_lambdas: tuple[float, ...]
    rerun_seeds: tuple[int, ...] | None  # None: the report's default seeds
    raw: dict[str, Any] = field(compare=False, repr=False)
    claims: ClaimsSpec = field(default_factory=ClaimsSpec)  # [claims]: what the report tests
    paired_reruns: PairedSpec | None = None  # [report]: what `kfaclab reproduce` reruns, if any
    # The machine's, like data.data_dir: not part of the stored protocol (the CLI's --device).
    device: str = "cpu"


def load_protocol(
    path: str | Path, data_dir: str | Path | None = None, device: str = "cpu"
) -> Protocol:
    """Read and validate a protocol file; ``data_dir`` (the CLI's ``--data-dir``) overrides
    ``data.data_dir``, ``device`` (``--device``) is where this machine's trials run. Both are
    properties of the machine, not of the protocol: they are not part of the stored protocol
    that resumed or parallel sweeps must match."""
    path = Path(path)
    protocol = parse_protocol(read_toml(path), base_dir=path.resolve().parent)
    return for_machine(protocol, data_dir, device)


def read_toml(path: Path) -> dict[str, Any]:
    """A protocol (or design) file's TOML as a dict; unreadable or invalid is a UsageError."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is fine
    except IsADirectoryError:
        raise UsageError(f"CONFIG must be a protocol file, got {str(path)!r} (a folder)") from None
    except OSError as exc:
        raise UsageError(f"cannot read protocol {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"protocol {path} must be UTF-8 text (TOML is), got byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"protocol {path} is not valid TOML: {exc}") from None
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise UsageError(
            f"protocol {path} must nest tables and arrays at most {MAX_NESTING} deep"
        ) from None
    return data


def for_machine(
    protocol: Protocol, data_dir: str | Path | None = None, device: str = "cpu"
) -> Protocol:
    """``protocol`` with this machine's ``--data-dir`` and ``--device`` (not stored)."""
    if device != "cpu":
        from kfaclab.data.loader import resolve_device

        protocol = replace(protocol, device=str(resolve_device(device)))
    if data_dir is None:
        return protocol
    folder = Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"--data-dir must be an existing folder, got {str(data_dir)!r}")
    return replace(protocol, data=replace(protocol.data, data_dir=str(folder)))


def parse_protocol(raw: dict[str, Any], base_dir: Path | None = None) -> Protocol:
    """Validate a loaded TOML dict. Relative ``data.data_dir`` is taken from ``base_dir``.

    Every problem of the file is found in one reading and raised together as
    ``_schema.ProtocolError`` (a ``UsageError``, one problem per line; see ``_schema``)."""
    with s.collecting():
        protocol = _parse(raw, base_dir)
    return protocol


def _parse(raw: dict[str, Any], base_dir: Path | None) -> Protocol:
    if "design" in raw:  # kfaclab.study.design_schema expands it into one protocol per run
        raise UsageError("a file with [design] is a design: `kfaclab sweep` runs it, run by run")
    s.check_keys(
        raw, "", ("protocol", "data", "model", "training", "cells", "search", "report", "claims")
    )
    head = s.table(raw, "protocol", "")
    s.check_keys(head, "protocol", ("name", "description"), required=("name",))
    name = s.string(head.get("name", s.MISSING), "protocol.name")
    if "/" in name:
        s.fail(f"protocol.name must not contain '/', got {name!r}", "protocol.name")
    problem = name_problem(name)
    if problem is not None:
        s.fail(f"protocol.name {problem}", "protocol.name")
    description = head.get("description", "")
    if not isinstance(description, str):
        s.fail(
            f"protocol.description must be a string, got {description!r}", "protocol.description"
        )
    training = _training(s.table(raw, "training", ""))
    if training.total_steps > MAX_TRAINING_STEPS:
        # The lr schedule and the curves hold a value per step: 1e12 steps took 23 GB.
        s.fail(
            f"training must be at most {MAX_TRAINING_STEPS} steps per trial, got "
            f"{training.total_steps}",
            *("training.steps", "training.epochs"),
        )
    cells = cells_spec(s.table(raw, "cells", ""))
    search = _search(s.table(raw, "search", ""))
    if search.kl_clip is not None and training.kl_clip is not None:
        s.fail(
            "search.kl_clip (a searched clip) and training.kl_clip (a fixed one) exclude each "
            f"other, got both ({training.kl_clip})",
            *("search.kl_clip", "training.kl_clip"),
        )
    hist, rerun_seeds, paired = parse_report(raw, cells.lambdas, search.top_k)
    claims = parse_claims(raw)
    return Protocol(
        name=name,
        description=description,
        data=_data(s.table(raw, "data", ""), base_dir),
        model=_model(s.table(raw, "model", "")),
        training=training,
        cells=cells,
        search=search,
        histogram_lambdas=hist,
        rerun_seeds=rerun_seeds,
        claims=claims,
        paired_reruns=paired,
        raw=stored_form(raw),
    )


def stored_form(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the machine's keys (``MACHINE_KEYS``): what the study stores and compares."""
    out = dict(raw)
    for table_key, key in MACHINE_KEYS:
        sub = out.get(table_key)
        if isinstance(sub, dict) and key in sub:
            out[table_key] = {k: v for k, v in sub.items() if k != key}
    return out


def _data(t: dict[str, Any], base_dir: Path | None) -> DataSpec:
    s.check_keys(t, "data", ("dataset", "data_dir"), required=("dataset",))
    dataset = s.string(t.get("dataset", s.MISSING), "data.dataset", ch.DATASETS)
    data_dir = None
    if "data_dir" in t:
        folder = Path(s.string(t["data_dir"], "data.data_dir"))
        # Relative to the protocol file, so the same file works from any working directory.
        if not folder.is_absolute() and base_dir is not None:
            folder = (base_dir / folder).resolve()
        data_dir = str(folder)
    return DataSpec(dataset, data_dir)


def _model(t: dict[str, Any]) -> ModelSpec:
    kind = s.string(t.get("kind", "mlp"), "model.kind", ch.MODELS)
    if kind == "cnn":  # build_cnn's LeNet-like shape is fixed: depth and width do not apply
        s.check_keys(t, "model", ("kind", "activation", "init"))
    else:
        s.check_keys(
            t,
            "model",
            ("kind", "depth", "width", "activation", "init"),
            required=("depth", "width"),
        )
    return ModelSpec(
        depth=s.integer(t.get("depth", 1), "model.depth", 1),
        width=s.integer(t.get("width", 1), "model.width", 1),
        activation=s.string(t.get("activation", "relu"), "model.activation", ch.ACTIVATIONS),
        kind=kind,
        init=s.string(t.get("init", ch.DEFAULT_INIT), "model.init", ch.INITS),
    )


_TRAINING_KEYS = (
    "batch_size", "epochs", "steps", "factor_decay", "factor_every", "inverse_every",
    "damping_form", "fisher", "kl_clip", "factor_init", "eigen_floor", "conv_approx",
    "divergence_loss",
    "eval_steps", "histogram_steps",
)  # fmt: skip


def _training(t: dict[str, Any]) -> TrainingSpec:
    s.check_keys(t, "training", _TRAINING_KEYS, required=("batch_size",))
    if "epochs" in t and "steps" in t:
        s.fail("training: give epochs or steps, not both", "training.epochs", "training.steps")
    if "epochs" not in t and "steps" not in t:
        s.fail("training.epochs or training.steps is required", "training.epochs", "training.steps")
    kl_clip = t.get("kl_clip")
    eval_steps = t.get("eval_steps")
    spec = TrainingSpec(
        batch_size=s.integer(t.get("batch_size", s.MISSING), "training.batch_size", 1),
        epochs=s.integer(t.get("epochs", 1), "training.epochs", 1),
        steps=None if "steps" not in t else s.integer(t["steps"], "training.steps", 1),
        # < 1: a decay of 1 never moves the running factors off their initial value.
        factor_decay=s.number(
            t.get("factor_decay", ch.DEFAULT_FACTOR_DECAY),
            "training.factor_decay",
            minimum=0.0,
            below=1.0,
        ),
        factor_every=s.integer(
            t.get("factor_every", ch.DEFAULT_FACTOR_EVERY), "training.factor_every", 1
        ),
        inverse_every=s.integer(
            t.get("inverse_every", ch.DEFAULT_INVERSE_EVERY), "training.inverse_every", 1
        ),
        damping_form=s.string(
            t.get("damping_form", ch.DEFAULT_DAMPING_FORM),
            "training.damping_form",
            ch.DAMPING_FORMS,
        ),
        fisher=s.string(t.get("fisher", ch.DEFAULT_FISHER), "training.fisher", ch.FISHER_TYPES),
        kl_clip=None if kl_clip is None else s.number(kl_clip, "training.kl_clip", positive=True),
        factor_init=s.string(
            t.get("factor_init", ch.DEFAULT_FACTOR_INIT), "training.factor_init", ch.FACTOR_INITS
        ),
        eigen_floor=s.number(
            t.get("eigen_floor", ch.DEFAULT_EIGEN_FLOOR), "training.eigen_floor", minimum=0.0
        ),
        conv_approx=s.string(
            t.get("conv_approx", ch.DEFAULT_CONV_APPROX),
            "training.conv_approx",
            ch.CONV_APPROXIMATIONS,
        ),
        divergence_loss=s.number(
            t.get("divergence_loss", 1e3), "training.divergence_loss", positive=True
        ),
        eval_steps=None if eval_steps is None else s.int_list(eval_steps, "training.eval_steps"),
        histogram_steps=s.int_list(t.get("histogram_steps", []), "training.histogram_steps", 1),
    )
    total = spec.total_steps
    for key, steps in (("eval_steps", spec.eval_steps), ("histogram_steps", spec.histogram_steps)):
        if steps and steps[-1] > total:
            s.fail(
                f"training.{key} must be <= the number of steps ({total}), got {steps[-1]}",
                f"training.{key}",
                *("training.steps", "training.epochs", "training.batch_size"),
            )
    return spec


def _search(t: dict[str, Any]) -> SearchSpec:
    keys = (
        "n_trials",
        "top_k",
        "sampler",
        "seed",
        "trial_seeds",
        "lr",
        "lr_scale",
        "strategy_lr_scale",
        "lr_decay",
        "momentum",
        "kl_clip",
        "kl_clip_lr",
    )
    s.check_keys(t, "search", keys, required=("n_trials", "lr", "lr_decay", "momentum"))
    n_trials = s.integer(t.get("n_trials", s.MISSING), "search.n_trials", 1)
    lr_decay = search_range(t.get("lr_decay", s.MISSING), "search.lr_decay")
    if lr_decay.low < 0 or lr_decay.high > 1:
        # α is the final learning rate as a fraction of the initial one.
        s.fail(f"search.lr_decay must lie within [0, 1], got {lr_decay}", "search.lr_decay")
    momentum = search_range(t.get("momentum", s.MISSING), "search.momentum")
    if momentum.low < 0 or momentum.high >= 1:
        s.fail(f"search.momentum must lie within [0, 1), got {momentum}", "search.momentum")
    top_k = s.integer(t.get("top_k", n_trials), "search.top_k", 1)
    if top_k > n_trials:
        s.fail(
            f"search.top_k must be <= search.n_trials ({n_trials}), got {top_k}",
            *("search.top_k", "search.n_trials"),
        )
    return SearchSpec(
        n_trials=n_trials,
        top_k=top_k,
        sampler=s.string(t.get("sampler", "tpe"), "search.sampler", SAMPLERS),
        seed=s.integer(t.get("seed", 0), "search.seed", 0),
        trial_seeds=s.string(t.get("trial_seeds", "fixed"), "search.trial_seeds", TRIAL_SEEDS),
        lr=search_range(t.get("lr", s.MISSING), "search.lr"),
        lr_decay=lr_decay,
        momentum=momentum,
        lr_scale=s.string(t.get("lr_scale", "none"), "search.lr_scale", LR_SCALES),
        strategy_lr_scale=s.string(
            t.get("strategy_lr_scale", "none"), "search.strategy_lr_scale", STRATEGY_LR_SCALES
        ),
        **searched_kl_clip(t),
    )
