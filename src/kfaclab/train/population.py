"""A population: many trials of one architecture stepped together as one batched model.

``run_population(configs)`` returns what ``run_trial`` returns for each config, computed for all
of them at once: weights, factors, eigenbases and momentum live stacked along a trial dimension
(``population_mlp``, ``population_kfac``), so a step is a few batched products (bmm, one GEMM
for layer 1) and batched eigendecompositions instead of P trials' worth of small operations —
the lever on a GPU, where one tiny MLP trial is launch-bound.

Trials differ in lr, lr_decay, momentum, λ (``damping``, a constant) and seed; everything else
is the population's. Trials that share a seed and start together form a *cohort*: they see the
same batches, so layer 1's data-only work (its input factor, the factor's decompositions, the
batch's projection into its eigenbasis) is done once for the cohort, and recorded for every
later cohort of the seed (``population_stream``). A trial whose minibatch loss breaks the
divergence rule stops there (recorded as ``run_trial`` records it) and leaves its cohort (the
stacks are compacted); ``Population.add`` may start a new trial at any step (a new cohort), e.g.
in the freed slot. On a GPU (``TrialConfig.device``) everything stays on the device, one host
sync a step (the losses, for the divergence rule).

Semantics: each result equals ``run_trial(config)`` up to float rounding (the same mathematics
in other groupings; tests/test_population.py checks float64 trials to 1e-12). Counters as the
engine's; ``seconds`` is the trial's share of the population's wall time (each step's time
divided among the trials it advanced).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch

from kfaclab.data import load_dataset
from kfaclab.errors import UsageError
from kfaclab.train.build import DTYPES, build_model, seeded
from kfaclab.train.population_kfac import StackedKFAC, with_ones
from kfaclab.train.population_mlp import StackedMLP, evaluate_stacked, heavy_ball
from kfaclab.train.population_observe import StackedHistogram
from kfaclab.train.population_stream import Streams
from kfaclab.train.schedule import batch_indices, eval_points, lr_schedule, total_steps
from kfaclab.train.validate import validate_config
from kfaclab.trial_types import EvalPoint, TrialConfig, TrialResult

#: The fields in which the trials of one population may differ.
PER_TRIAL = ("lr", "lr_decay", "momentum", "damping", "seed")
#: K-FAC options the population step implements, with the value it requires.
_KFAC_REQUIRED = {
    "damping_form": "exact",
    "fisher": "empirical",
    "factor_every": 1,
    "factor_init": "batch",
    "eigen_floor": 0.0,
    "kl_clip": None,
}


def population_unsupported(config: TrialConfig) -> str | None:
    """Why ``config`` cannot run in a population (one line), or None if it can."""
    if config.model != "mlp" or config.depth < 2:
        return f"model must be an mlp of depth >= 2, got {config.model!r} of depth {config.depth}"
    if config.lr_per_damping:
        return "lr_per_damping must be false in a population (its λ is constant: search lr/λ)"
    if config.optimizer == "kfac":
        if isinstance(config.damping, bool) or not isinstance(config.damping, int | float):
            return f"damping must be a constant λ (a number), got {config.damping!r}"
        for field, wanted in _KFAC_REQUIRED.items():
            if getattr(config, field) != wanted:
                return f"{field} must be {wanted!r} in a population, got {getattr(config, field)!r}"
    return None


def shared_part(config: TrialConfig) -> TrialConfig:
    """``config`` without its per-trial fields: trials with equal shared parts can form one
    population."""
    return dataclasses.replace(config, lr=1.0, lr_decay=1.0, momentum=0.0, damping=1.0, seed=0)


class _Record:
    """What one trial has recorded so far (``TrialResult``'s fields)."""

    def __init__(self, config: TrialConfig, tag: Hashable) -> None:
        self.config, self.tag = config, tag
        self.losses: list[float] = []
        self.evals: list[EvalPoint] = []
        self.histograms: dict[str, dict[str, list[int]]] = {}
        self.curvature: dict[str, dict[str, dict[str, Any]]] = {}
        self.seconds = 0.0
        self.inversions = 0

    def result(self, diverged_at: int | None, counters: dict[str, float]) -> TrialResult:
        steps = len(self.losses) if diverged_at is None else diverged_at
        kfac = self.config.optimizer == "kfac"
        lam = float(self.config.damping) if kfac else 0.0  # type: ignore[arg-type]
        return TrialResult(
            config=self.config,
            status="ok" if diverged_at is None else "diverged",
            value=self.evals[-1].train_loss if diverged_at is None else math.inf,
            steps_done=steps,
            seconds=self.seconds,
            step_losses=self.losses,
            evals=self.evals,
            histograms=self.histograms,
            curvature=self.curvature,
            damping_trace=[lam] * steps if kfac else [],
            counters=counters,
            diverged_at=diverged_at,
        )


class Cohort:
    """Trials with one seed started at the same step: the same batches, stepped as one."""

    def __init__(
        self,
        records: list[_Record],
        data: Any,
        device: torch.device,
        streams: Streams,
        eigh_on_cpu: bool = False,
    ) -> None:
        config = records[0].config
        self.records, self.config, self.device = records, config, device
        self.train, self.test = (data.train_x, data.train_y), (data.test_x, data.test_y)
        self.total = total_steps(config, len(data.train_y))
        self.t = 0
        with seeded(config.seed, device):  # run_trial's initialisation: same seed, same model
            model = build_model(config, device)
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        self.mlp = StackedMLP.from_models([model] * len(records), config.activation)
        dtype = DTYPES[config.dtype]

        def per_trial(values: list[Any]) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        # −η_t of every trial and step, from the single trial's own schedule: (P, T)
        self.neg_lrs = -per_trial(
            [lr_schedule(r.config.lr, r.config.lr_decay, self.total) for r in records]
        ).view(len(records), self.total)
        momentum = per_trial([r.config.momentum for r in records])
        self.kfac: StackedKFAC | None = None
        self.sgd_velocity: list[torch.Tensor | None] = [None] * self.mlp.depth
        self.momentum = momentum.view(-1, 1, 1)
        if config.optimizer == "kfac":
            damping = per_trial([float(r.config.damping) for r in records])  # type: ignore[arg-type]
            self.kfac = StackedKFAC(
                self.mlp,
                damping,
                momentum,
                config.factor_decay,
                names,
                streams,
                config.seed,
                eigh_on_cpu,
            )
        self.histogram = StackedHistogram(names, config.histogram_bins)
        self.hist_at = {s for s in config.histogram_steps if s < self.total}
        self.eval_at = set(eval_points(config.eval_steps, self.total)[:-1])
        generator = torch.Generator().manual_seed(config.seed)
        self.batches: Iterator[torch.Tensor] = batch_indices(
            len(data.train_y), config.batch_size, self.total, generator, device
        )

    def __len__(self) -> int:
        return len(self.records)

    # --- one step ---

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, TrialResult]]:
        """Advance every trial by one step; returns the trials that finished (all of them once
        the last step is done)."""
        start = time.perf_counter()
        t, kfac, mlp = self.t, self.kfac, self.mlp
        if t in self.eval_at:
            self._evaluate(t)
        X, Y = self.train
        idx = next(self.batches)
        x, y = X.index_select(0, idx), Y.index_select(0, idx)
        x_bar = with_ones(x)
        first = kfac.first_input(x_bar, t) if kfac is not None else x_bar
        losses = mlp.forward(first, y).tolist()
        for record, value in zip(self.records, losses, strict=True):
            record.losses.append(value)
        bound = self.config.divergence_loss
        finished = self._drop([p for p, v in enumerate(losses) if not v <= bound], t)
        if not self.records:
            self._charge(start, finished)
            return finished
        mlp.backward()
        if t in self.hist_at:
            blocks = [mlp.first_block(x_bar)] + [mlp.block(j) for j in range(1, mlp.depth)]
            for record, counts in zip(self.records, self.histogram(blocks), strict=True):
                record.histograms[str(t)] = counts
        neg_lr = self.neg_lrs[:, t].view(-1, 1, 1)
        if kfac is None:
            for j in range(mlp.depth):
                block = mlp.first_block(x_bar) if j == 0 else mlp.block(j)
                self.sgd_velocity[j] = heavy_ball(
                    mlp.weights[j], self.sgd_velocity[j], block, self.momentum, neg_lr
                )
        else:
            kfac.update_factors(x)
            if t % self.config.inverse_every == 0:
                kfac.invert(t)
                first = kfac.first_input(x_bar, t)
                for record in self.records:
                    record.inversions += 1
            kfac.step(first, neg_lr)
            if t in self.hist_at:
                for record, layers in zip(self.records, kfac.diagnostics(), strict=True):
                    record.curvature[str(t)] = layers
        self.t += 1
        if self.t == self.total:
            finished += self._finish()
        self._charge(start, finished)
        return finished

    def _charge(self, start: float, finished: list[tuple[Hashable, TrialResult]]) -> None:
        """Each trial advanced by this step pays an equal share of its wall time."""
        advanced = len(self.records) + len(finished)
        share = (time.perf_counter() - start) / max(advanced, 1)
        for record in self.records:
            record.seconds += share
        for _, result in finished:
            result.seconds += share

    def _real_weights(self) -> list[torch.Tensor]:
        return self.kfac.real_weights() if self.kfac is not None else list(self.mlp.weights)

    def _evaluate(self, step: int) -> None:
        weights, activation = self._real_weights(), self.config.activation
        train_loss, _ = evaluate_stacked(weights, activation, *self.train)
        test_loss, correct = evaluate_stacked(weights, activation, *self.test)
        n_test = len(self.test[1])
        for p, record in enumerate(self.records):
            record.evals.append(EvalPoint(step, train_loss[p], test_loss[p], correct[p] / n_test))

    def _finish(self) -> list[tuple[Hashable, TrialResult]]:
        self._evaluate(self.total)
        bound = self.config.divergence_loss
        done = []
        for p, record in enumerate(self.records):
            final = record.evals[-1].train_loss
            diverged_at = None if final <= bound else self.total
            counters = self._counters(p, self.total)
            done.append((record.tag, record.result(diverged_at, counters)))
        self.records = []
        return done

    def _counters(self, p: int, steps: int) -> dict[str, float]:
        """The single trial's ``KFACEngine.all_counters()`` after ``steps`` steps (SGD: none)."""
        if self.kfac is None:
            return {}
        record = self.records[p]
        fallbacks = self.kfac.fallbacks[p].as_dict()
        for key, value in self.kfac.shared_fallbacks.as_dict().items():
            fallbacks[key] += value
        return {
            "kl_clip_binds": 0,
            "kl_clip_last_factor": 1.0,
            "steps_without_capture": 0,
            "factor_updates": steps,
            "inversions": record.inversions,
            "standard_form_steps": 0,
            "diagonal_fallback_steps": 0,
            **fallbacks,
        }

    def _drop(self, dead: list[int], t: int) -> list[tuple[Hashable, TrialResult]]:
        """Trials ``dead`` diverged at step t: record them and take them out of the stacks."""
        if not dead:
            return []
        done = []
        for p in dead:
            record = self.records[p]
            done.append((record.tag, record.result(t, self._counters(p, t))))
        keep = [p for p in range(len(self.records)) if p not in set(dead)]
        self.records = [self.records[p] for p in keep]
        if keep:
            index = torch.tensor(keep, dtype=torch.int64, device=self.device)
            if self.kfac is not None:
                self.kfac.keep(index)
            else:
                self.mlp.keep(index)
                self.sgd_velocity = [
                    None if v is None else v.index_select(0, index) for v in self.sgd_velocity
                ]
            self.momentum = self.momentum.index_select(0, index)
            self.neg_lrs = self.neg_lrs.index_select(0, index)
        return done


class Population:
    """Trials of one architecture and protocol, stepped together (see the module doc).

    ``add(config, tag)`` queues a trial (it starts at the next ``step``); ``step()`` advances
    every running trial by one step and returns ``(tag, result)`` of those that finished.
    """

    def __init__(self, streams: Streams | None = None, *, eigh_on_cpu: bool | None = None) -> None:
        """``streams``: layer 1's recorded work to share with other populations (of the same
        shared config: a sweep's successive rounds); a fresh record by default.
        ``eigh_on_cpu``: decompose the trials' factors on the host in threads
        (``population_kfac.eigh_on_cpu``), the same decomposition up to rounding. None: on the
        host for a CUDA population — torch's batched CUDA eigh is a batched Jacobi only up to
        32×32 and otherwise, as far as we know, one solver call per matrix; unmeasured so far
        (benchmarks/device_check.sh times both: flip this default if the GPU wins)."""
        self.eigh_on_cpu = eigh_on_cpu
        self.cohorts: list[Cohort] = []
        self.pending: list[_Record] = []
        self.shared: TrialConfig | None = None
        # Layer 1's data-only work by seed: every cohort of a seed (later rounds of a sweep,
        # trials added later) takes it from the first (``population_stream``).
        self.streams = streams if streams is not None else Streams()
        self._data: Any = None
        self._device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.pending) + sum(len(c) for c in self.cohorts)

    def add(self, config: TrialConfig, tag: Hashable = None) -> None:
        validate_config(config)
        reason = population_unsupported(config)
        if reason is not None:
            raise UsageError(reason)
        shared = shared_part(config)
        if self.shared is None:
            self.shared = shared
            self._device = torch.device(config.device)
            dtype = DTYPES[config.dtype]
            self._data = load_dataset(config.dataset, config.data_dir, self._device, dtype)
        elif shared != self.shared:
            fields = [
                f for f in self.shared.to_dict() if getattr(shared, f) != getattr(self.shared, f)
            ]
            raise UsageError(
                f"config must differ from the population's only in {', '.join(PER_TRIAL)}, "
                f"got other values of {', '.join(fields)}"
            )
        self.pending.append(_Record(config, tag))

    def step(self) -> list[tuple[Hashable, TrialResult]]:
        if self.pending:
            by_seed: dict[int, list[_Record]] = {}
            for record in self.pending:
                by_seed.setdefault(record.config.seed, []).append(record)
            self.pending = []
            on_cpu = self.eigh_on_cpu
            if on_cpu is None:
                on_cpu = self._device.type == "cuda"
            for records in by_seed.values():
                cohort = Cohort(records, self._data, self._device, self.streams, on_cpu)
                self.cohorts.append(cohort)
        finished: list[tuple[Hashable, TrialResult]] = []
        for cohort in self.cohorts:
            finished += cohort.step()
        self.cohorts = [c for c in self.cohorts if len(c)]
        return finished

    def run(self) -> list[tuple[Hashable, TrialResult]]:
        """Step until every trial has finished."""
        finished: list[tuple[Hashable, TrialResult]] = []
        while len(self):
            finished += self.step()
        return finished


def run_population(configs: Sequence[TrialConfig]) -> list[TrialResult]:
    """``[run_trial(c) for c in configs]``, computed as one population (see the module doc).
    Raises ``UsageError`` for an invalid config or one the population step does not cover."""
    population = Population()
    for i, config in enumerate(configs):
        population.add(config, i)
    results: dict[Hashable, TrialResult] = dict(population.run())
    return [results[i] for i in range(len(configs))]
