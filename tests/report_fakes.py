"""Hand-made stored studies for the analysis and report tests (no training, no Optuna).

Shapes follow docs/interfaces.md (kfaclab.study): a StudySet with protocol, cells and trials
whose records are TrialResults. Includes the awkward cases the report must survive: a cell whose
every trial diverged, and a cell with trials still running.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfaclab.trial_types import EvalPoint, HistogramBins, TrialConfig, TrialResult

LAYERS = [f"{i}" for i in (0, 2, 4, 6, 8, 10)]  # nn.Sequential indices of the Linear layers
HIST_STEPS = (60, 120, 180, 240, 300, 360)
STEPS = 400
REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeCell:
    name: str
    optimizer: str
    damping: Any
    damping_label: str
    n_trials: int
    top_k: int


@dataclass
class FakeTrial:
    cell: str
    number: int
    state: str
    status: str | None
    value: float | None
    params: dict[str, Any]
    seconds: float | None
    record: TrialResult | None


@dataclass
class FakeStudySet:
    protocol: dict[str, Any]
    cells: list[FakeCell]
    trials: list[FakeTrial] = field(default_factory=list)


PROTOCOL: dict[str, Any] = {
    "name": "fake",
    "search": {
        "lr": {"low": 1e-4, "high": 1.0, "log": True},
        "momentum": [0.0, 0.99],
        "lr_decay": [0.0, 1.0],
    },
    "report": {"histogram_lambdas": [1e-4, 1.0, 10.0], "top_k": 4},
}


def _record(
    rng: np.random.Generator,
    cfg: TrialConfig,
    level: float,
    diverge_at: int | None,
    lam: float | None,
) -> TrialResult:
    n = diverge_at if diverge_at is not None else STEPS
    t = np.arange(1, n + 1)
    losses = (2.3 - level) * np.exp(-t / 80) + level + 0.05 * rng.standard_normal(n)
    if diverge_at is not None:
        losses[-1] = math.inf
    bins = cfg.histogram_bins
    hists: dict[str, dict[str, list[int]]] = {}
    curv: dict[str, dict[str, dict[str, Any]]] = {}
    for s in HIST_STEPS:
        if s > n:
            break
        centre = 40 + (10 if lam is None else int(np.log10(lam))) - s // 60  # later: smaller g²
        hists[str(s)] = {}
        curv[str(s)] = {}
        for j, layer in enumerate(LAYERS):
            counts = np.zeros(bins.n_bins + 2, dtype=int)
            idx = np.clip(rng.normal(centre + j, 6, 2000).round().astype(int), 0, bins.n_bins + 1)
            np.add.at(counts, idx, 1)
            hists[str(s)][layer] = counts.tolist()
            curv[str(s)][layer] = {
                "eig_A_min": 1e-6 * (j + 1),
                "eig_A_max": 10.0 + j,
                "eig_G_min": 1e-9,
                "eig_G_max": 1e-2 * (j + 1),
                "damping": lam,
                "condition_number": 1e3 / (lam or 1),
                "frac_below_damping": min(1.0, 0.1 + 0.1 * math.log10(1 + (lam or 0) * 1e4)),
                "effective_dim": 50.0 / (1 + (lam or 0)),
                "eig_A_hist": [1, 2, 3],  # non-scalar
            }
    evals = [EvalPoint(0, 2.3, 2.3, 0.1), EvalPoint(n, level, level + 0.02, 0.9 - level / 10)]
    return TrialResult(
        config=cfg,
        status="ok" if diverge_at is None else "diverged",
        value=level if diverge_at is None else math.inf,
        steps_done=n,
        seconds=1.0 + rng.random(),
        step_losses=losses.tolist(),
        evals=evals,
        histograms=hists,
        curvature=curv,
        damping_trace=[]
        if lam is None
        else (lam * np.exp(-t / 200)).tolist()
        if cfg.damping != lam
        else [lam] * n,
        diverged_at=diverge_at,
    )


def make_study(n_trials: int = 8, top_k: int = 4) -> FakeStudySet:
    """SGD, λ ∈ {1e-4, 1, 10, 100 (all diverged)} and an adaptive rule still running."""
    rng = np.random.default_rng(0)
    protocol = {**PROTOCOL, "report": {**PROTOCOL["report"], "top_k": top_k}}
    study = FakeStudySet(protocol, [])
    specs: list[tuple[str, str, Any, str, float]] = [
        ("sgd", "sgd", None, "sgd", 0.5),
        ("kfac-lam1e-04", "kfac", 1e-4, "1e-04", 0.3),
        ("kfac-lam1e+00", "kfac", 1.0, "1e+00", 0.1),
        ("kfac-lam1e+01", "kfac", 10.0, "1e+01", 0.2),
        ("kfac-lam1e+02", "kfac", 100.0, "1e+02", math.inf),
        (
            "kfac-lm",
            "kfac",
            {"kind": "levenberg_marquardt", "initial": 1.0},
            "levenberg_marquardt",
            0.15,
        ),
    ]
    for name, opt, damping, label, base in specs:
        study.cells.append(FakeCell(name, opt, damping, label, n_trials, top_k))
        running = name == "kfac-lm"
        for k in range(n_trials):
            if running and k >= n_trials // 2:
                state = "RUNNING" if k == n_trials // 2 else "WAITING"
                study.trials.append(FakeTrial(name, k, state, None, None, {}, None, None))
                continue
            params = {
                "lr": float(10 ** rng.uniform(-4, 0)),
                "momentum": float(rng.uniform(0, 0.99)),
                "lr_decay": float(rng.uniform(0, 1)),
            }
            if k == 1:
                params["lr"] = 0.999  # best trials on the edge in some cells
            lam = damping if isinstance(damping, float) else (1.0 if damping else None)
            cfg = TrialConfig(
                optimizer=opt,
                damping=damping if damping is not None else 0.0,  # type: ignore[arg-type]
                seed=k,
                histogram_steps=HIST_STEPS,
                histogram_bins=HistogramBins(),
                **params,
            )
            diverge = k % 3 == 2 or math.isinf(base)
            level = (5.0 if math.isinf(base) else base) + 0.02 * k + 0.01 * rng.random()
            if k == 1:
                level -= 0.05  # the best trial sits on the lr edge: the report must warn
            rec = _record(rng, cfg, level, 100 + 10 * k if diverge else None, lam)
            study.trials.append(
                FakeTrial(name, k, "COMPLETE", rec.status, rec.value, params, rec.seconds, rec)
            )
    return study


# --- a real, small stored study: the `smoke` protocol, swept once per test session -----------

_SMOKE: dict[str, Path] = {}


def smoke_dir(tmp_root: Path) -> Path:
    """Run configs/smoke.toml once (seconds) into ``tmp_root``; later calls reuse it, so both
    test modules share one sweep."""
    if "dir" not in _SMOKE:
        from kfaclab.study.protocol import load_protocol
        from kfaclab.study.runner import run_sweep
        from kfaclab.study.storage import resolve

        out = tmp_root / "smoke"
        protocol = load_protocol(REPO / "configs" / "smoke.toml")
        rc = run_sweep(protocol, resolve(str(out)), workers=1, stream=io.StringIO())
        assert rc == 0, "the smoke sweep did not complete"
        _SMOKE["dir"] = out
    return _SMOKE["dir"]


# --- constructed studies whose claims' verdicts are known by construction ---------------------


@dataclass
class CellSpec:
    """One cell of a constructed study: its finished losses, diverged count and what each trial's
    learning rate and gradient histograms look like."""

    lam: float | None  # None: SGD
    losses: list[float]
    n_diverged: int = 0
    lr: float | list[float] = 0.01  # one value for every trial, or one per finite trial
    # log10 (∂L/∂θ)² centre per histogram step; every trial gets it plus N(0, hist_noise) jitter
    hist_centre: dict[int, float] = field(default_factory=dict)
    hist_noise: float = 0.05
    reruns: list[float] | None = None  # the best configuration's losses on new seeds


SEARCH = {
    "lr": {"low": 1e-6, "high": 1e3, "log": True},
    "lr_decay": {"low": 0.0, "high": 1.0},
    "momentum": {"low": 0.0, "high": 0.99},
}


def _histogram(rng: np.random.Generator, bins: HistogramBins, centre: float) -> list[int]:
    x = rng.normal(centre, 1.0, 3000)
    width = (bins.log10_max - bins.log10_min) / bins.n_bins
    idx = np.clip(np.floor((x - bins.log10_min) / width).astype(int) + 1, 0, bins.n_bins + 1)
    counts = np.zeros(bins.n_bins + 2, dtype=int)
    np.add.at(counts, idx, 1)
    return [int(c) for c in counts]


def build_study(specs: list[CellSpec], seed: int = 0) -> tuple[FakeStudySet, dict[str, Any]]:
    """A study from cell specs, and its rerun records (as ``summarize`` takes them)."""
    from kfaclab.analysis.summary.reruns import RerunRecord

    rng = np.random.default_rng(seed)
    protocol: dict[str, Any] = {"protocol": {"name": "constructed"}, "search": SEARCH}
    study = FakeStudySet(protocol, [])
    reruns: dict[str, Any] = {}
    bins = HistogramBins()
    steps = tuple(sorted({s for sp in specs for s in sp.hist_centre}))
    for sp in specs:
        cname = "sgd" if sp.lam is None else f"kfac-lam={sp.lam:.0e}"
        label = "sgd" if sp.lam is None else f"{sp.lam:.0e}"
        values = [*sp.losses, *([math.inf] * sp.n_diverged)]
        opt = "sgd" if sp.lam is None else "kfac"
        study.cells.append(FakeCell(cname, opt, sp.lam, label, len(values), len(sp.losses)))
        lrs = sp.lr if isinstance(sp.lr, list) else [sp.lr] * len(sp.losses)
        for k, value in enumerate(values):
            lr = lrs[k] if k < len(lrs) else 0.01
            params: dict[str, Any] = {"lr": lr, "momentum": 0.5, "lr_decay": 0.5}
            cfg = TrialConfig(
                optimizer=opt,  # type: ignore[arg-type]
                damping=sp.lam if sp.lam is not None else 0.0,
                seed=0,
                histogram_steps=steps,
                lr=lr,
                momentum=0.5,
                lr_decay=0.5,
            )
            ok = math.isfinite(value)
            hists = {
                str(s): {
                    layer: _histogram(rng, bins, c + rng.normal(0, sp.hist_noise))
                    for layer in LAYERS
                }
                for s, c in sp.hist_centre.items()
            }
            rec = TrialResult(
                config=cfg,
                status="ok" if ok else "diverged",
                value=value,
                steps_done=3,
                seconds=1.0,
                step_losses=[2.3, 1.0, value if ok else math.inf],
                evals=[],
                histograms=hists if ok else {},
                diverged_at=None if ok else 3,
            )
            study.trials.append(
                FakeTrial(cname, k, "COMPLETE", rec.status, value, params, 1.0, rec)
            )
        if sp.reruns is not None:
            best, n = int(np.argmin(sp.losses)), len(sp.reruns)
            reruns[cname] = RerunRecord(
                cname, best, list(range(n)), list(sp.reruns), [0.9] * n, [1.0] * n
            )
    return study, reruns
