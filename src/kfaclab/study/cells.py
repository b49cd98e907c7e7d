"""The cells of a protocol: SGD, K-FAC at each λ of the grid, K-FAC with each damping strategy.

A cell is one Optuna study named "<protocol>/<cell>" with its own seeded sampler, so the
Bayesian search of each cell is a sequence of its own and never sees another cell's trials.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from kfaclab.lr_scale import cell_lr_bounds
from kfaclab.study.protocol import Protocol, Range, StrategySpec


@dataclass(frozen=True)
class CellInfo:
    """One cell as the report sees it (docs/interfaces.md, kfaclab.study).

    ``damping``: None for SGD; a float λ in kfaclab's convention; or a strategy spec
    ``{"kind": ..., **fixed constants}`` (constants searched per trial are in each trial's params
    as ``damping.<name>``). ``damping_label``: "1e-03" for λ written in our convention,
    "1e-03 (B²-scaled)" for λ written in the B²-scaled convention of the popular PyTorch K-FAC
    (``damping`` then holds our λ = B² × that value, see ``lambda_from_file``), the strategy
    name for a strategy.
    """

    name: str
    optimizer: Literal["sgd", "kfac"]
    damping: float | dict[str, Any] | None
    damping_label: str
    n_trials: int
    top_k: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellInfo:
        return cls(**data)


def format_lambda(lam: float) -> str:
    """The shortest scientific form that reads back as the same float: 1e-03, 2.5e-04."""
    for digits in range(17):
        text = f"{lam:.{digits}e}"
        if float(text) == lam:
            return text
    return repr(lam)


def lambda_from_file(lam: float, convention: str, batch_size: int) -> float:
    """λ as written in the protocol → kfaclab's λ (what the optimizer receives)."""
    if convention == "ours":
        return lam
    from kfaclab.curvature.conventions import from_b2_scaled

    return from_b2_scaled(lam, batch_size)


def build_cells(protocol: Protocol) -> list[CellInfo]:
    """Every cell of ``protocol``, in a fixed order: SGD, the λ grid ascending, strategies."""
    search = protocol.search
    cells: list[CellInfo] = []
    if protocol.cells.sgd:
        cells.append(CellInfo("sgd", "sgd", None, "sgd", search.n_trials, search.top_k))
    b2 = protocol.cells.lambda_convention == "b2_scaled"
    for lam in sorted(protocol.cells.lambdas):
        label = format_lambda(lam)
        ours = lambda_from_file(lam, protocol.cells.lambda_convention, protocol.training.batch_size)
        # The name keeps the value as written, so the grid reads the same in both conventions.
        name = f"kfac-lam_b2={label}" if b2 else f"kfac-lam={label}"
        shown = f"{label} (B²-scaled)" if b2 else label
        cells.append(CellInfo(name, "kfac", ours, shown, search.n_trials, search.top_k))
    for strategy in protocol.cells.strategies:
        spec = {"kind": strategy.kind, **dict(strategy.constants)}
        cells.append(
            CellInfo(
                f"kfac-{strategy.name}", "kfac", spec, strategy.name, search.n_trials, search.top_k
            )
        )
    return cells


def search_space(protocol: Protocol, cell: CellInfo) -> dict[str, Range]:
    """The hyperparameters sampled per trial of ``cell``: the nuisance ones, plus a strategy's
    searched constants as ``damping.<name>``. Where ``search.kl_clip`` is set a K-FAC cell
    samples the clip as ``kl_clip`` instead of lr (``trial_lr`` gives its fixed lr)."""
    lr = protocol.search.lr
    lam = cell.damping if isinstance(cell.damping, float) else None
    low, high = cell_lr_bounds(lr.low, lr.high, lam, protocol.search.lr_scale)
    step: dict[str, Range] = {"lr": Range(low, high, lr.log)}
    if protocol.search.kl_clip is not None and cell.optimizer == "kfac":
        step = {"kl_clip": protocol.search.kl_clip}
    space = {**step, "lr_decay": protocol.search.lr_decay, "momentum": protocol.search.momentum}
    strategy = strategy_of(protocol, cell)
    if strategy is not None:
        space.update({f"damping.{key}": rng for key, rng in strategy.search})
    return space


def trial_lr(protocol: Protocol, cell: CellInfo, params: dict[str, Any]) -> float:
    """A trial's initial lr: its sampled one, or, in a cell that searches the KL clip, the fixed
    ``search.kl_clip_lr`` (times the cell's λ under ``lr_scale = "lambda"``)."""
    if "lr" in params:
        return float(params["lr"])
    fixed = protocol.search.kl_clip_lr
    if fixed is None:
        raise KeyError("lr")  # a cell without a searched clip always samples lr
    lam = cell.damping if isinstance(cell.damping, float) else None
    return cell_lr_bounds(fixed, fixed, lam, protocol.search.lr_scale)[0]


def trial_kl_clip(protocol: Protocol, params: dict[str, Any]) -> float | None:
    """A trial's KL clip: its sampled one, else the protocol's fixed ``training.kl_clip``."""
    return float(params["kl_clip"]) if "kl_clip" in params else protocol.training.kl_clip


def strategy_of(protocol: Protocol, cell: CellInfo) -> StrategySpec | None:
    for strategy in protocol.cells.strategies:
        if cell.name == f"kfac-{strategy.name}":
            return strategy
    return None


def damping_for_trial(cell: CellInfo, params: dict[str, Any]) -> float | dict[str, Any]:
    """The damping spec a trial runs with: the cell's, plus its sampled constants."""
    if cell.damping is None:
        return 0.0  # unused by SGD; TrialConfig wants a number
    if isinstance(cell.damping, dict):
        sampled = {k[len("damping.") :]: v for k, v in params.items() if k.startswith("damping.")}
        return {**cell.damping, **sampled}
    return cell.damping
