"""K-FAC's options as values: one frozen, validated object for the mathematics, one for the
speed-ups, and what of the speed-ups is actually in effect (with the reason for each that is not).

The mathematics (``KFACOptions``) decides the result; the speed-ups (``Speedups``) never do —
each one promises the same numbers up to float rounding. A speed-up that cannot apply to a given
configuration is not silently dropped: ``resolve_speedups`` says which are off and why, and the
optimizer warns once and lists them in ``opt.speedups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kfaclab import choices as ch
from kfaclab.choices import ConvApprox, DampingForm, FactorInit, FisherType, LossReduction
from kfaclab.errors import UsageError
from kfaclab.optim.input_stream import InputStreamCache


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise UsageError(f"{name} must be {rule}, got {value!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


# float32 overflows above ~3.4e38: a larger lr or λ turns every step into inf.
FLOAT32_MAX = 3.4028234663852886e38


def check_lr(lr: Any, name: str = "lr") -> None:
    # 0 is allowed, as torch.optim.SGD allows it: warm-up from 0 and schedulers that end at 0
    # (CosineAnnealingLR, LinearLR(end_factor=0)) produce it; the step is then zero.
    _require(_is_number(lr) and 0 <= lr <= FLOAT32_MAX, name, ">= 0 and <= 3.4e38", lr)


def check_momentum(momentum: Any, name: str = "momentum") -> None:
    _require(_is_number(momentum) and 0 <= momentum < 1, name, "in [0, 1)", momentum)


def check_weight_decay(weight_decay: Any, name: str = "weight_decay") -> None:
    ok = _is_number(weight_decay) and 0 <= weight_decay <= FLOAT32_MAX
    _require(ok, name, ">= 0", weight_decay)


@dataclass(frozen=True)
class KFACOptions:
    """The mathematics of a K-FAC step, apart from λ (the damping strategy) and lr/momentum.

    - ``factor_decay`` β in [0, 1): running factors F ← βF + (1−β)F̂;
    - ``factor_every``: update the factors every N steps; ``inverse_every``: decompose every N;
    - ``damping_form``: "exact" (G⊗A + λI)⁻¹ or "factored" (π-split Tikhonov, Cholesky);
    - ``fisher``: "empirical" (the training loss's gradients) or "mc" (sampled targets);
    - ``factor_init``: "batch" (the first update sets the factor) or "identity" (A₀ = G₀ = I,
      then the EMA: after k updates the identity keeps weight β^k, extra damping on top of λ);
    - ``eigen_floor`` ≥ 0: eigenvalues of A and G below it are set to 0 before damping
      (exact form only);
    - ``kl_clip``: None, or c > 0 to scale steps by ν = min(1, sqrt(c / (η² dᵀ∇)));
    - ``loss_reduction``: how the loss combines examples ("mean" or "sum"), so gᵢ = ∂ℓᵢ/∂sᵢ
      can be recovered from ∂L/∂s;
    - ``conv_approx``: how an nn.Conv2d's spatial locations enter its factors, "expand" (KFC)
      or "reduce" (``kfaclab.optim.conv``).
    """

    factor_decay: float = ch.DEFAULT_FACTOR_DECAY
    factor_every: int = ch.DEFAULT_FACTOR_EVERY
    inverse_every: int = ch.DEFAULT_INVERSE_EVERY
    damping_form: DampingForm = ch.DEFAULT_DAMPING_FORM
    fisher: FisherType = ch.DEFAULT_FISHER
    factor_init: FactorInit = ch.DEFAULT_FACTOR_INIT
    eigen_floor: float = ch.DEFAULT_EIGEN_FLOOR
    kl_clip: float | None = None
    loss_reduction: LossReduction = "mean"
    conv_approx: ConvApprox = ch.DEFAULT_CONV_APPROX

    def __post_init__(self) -> None:
        decay = self.factor_decay
        _require(_is_number(decay) and 0 <= decay < 1, "factor_decay", "in [0, 1)", decay)
        for name in ("factor_every", "inverse_every"):
            value = getattr(self, name)
            _require(_is_count(value), name, "an integer >= 1", value)
        for name, allowed in (
            ("damping_form", ch.DAMPING_FORMS),
            ("fisher", ch.FISHER_TYPES),
            ("factor_init", ch.FACTOR_INITS),
            ("loss_reduction", ch.LOSS_REDUCTIONS),
            ("conv_approx", ch.CONV_APPROXIMATIONS),
        ):
            value = getattr(self, name)
            _require(value in allowed, name, "one of " + ", ".join(map(repr, allowed)), value)
        floor = self.eigen_floor
        _require(_is_number(floor) and floor >= 0, "eigen_floor", ">= 0", floor)
        if floor and self.damping_form != "exact":
            raise ValueError(
                "eigen_floor needs damping_form='exact' (the factored form never decomposes), "
                f"got eigen_floor={floor!r} with damping_form={self.damping_form!r}"
            )
        clip = self.kl_clip
        ok = clip is None or (_is_number(clip) and 0 < clip <= FLOAT32_MAX)
        _require(ok, "kl_clip", "None or a finite number > 0", clip)


@dataclass(frozen=True)
class Speedups:
    """Ways to compute the same step faster; none changes a result beyond float rounding.

    - ``input_stream_cache``: shared by several optimizers in one process (a sweep's trials):
      layers whose input is the data itself do their input-factor updates and decompositions
      once per data stream (inputs checked bitwise);
    - ``batch_gradients_only``: a promise that each step's ``.grad`` of the preconditioned layers
      is exactly the gradient of the one backward pass the hooks saw (no accumulation, clipping or
      added terms); stream-following layers then precondition from the shared batch projection;
    - ``deferred_rotation``: such layers also keep their update in A's eigenbasis between
      inversions (``kfaclab.optim.deferred``); ``materialize()`` before reading their weights;
    - ``skip_weight_grads``: backward no longer computes a deferred layer's weight gradient (the
      step reads the captured batch); ``restore_weight_grads()`` writes ``.grad`` on request.
    """

    input_stream_cache: InputStreamCache | None = None
    batch_gradients_only: bool = False
    deferred_rotation: bool = False
    skip_weight_grads: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_gradients_only", "deferred_rotation", "skip_weight_grads"):
            value = getattr(self, name)
            _require(isinstance(value, bool), name, "True or False", value)
        cache = self.input_stream_cache
        ok = cache is None or isinstance(cache, InputStreamCache)
        _require(ok, "input_stream_cache", "None or an InputStreamCache", cache)
        if self.deferred_rotation and not (self.batch_gradients_only and cache is not None):
            raise ValueError(
                "deferred_rotation needs batch_gradients_only=True and an input_stream_cache, got "
                f"batch_gradients_only={self.batch_gradients_only!r}, input_stream_cache={cache!r}"
            )
        if self.skip_weight_grads and not self.deferred_rotation:
            raise ValueError(
                "skip_weight_grads needs deferred_rotation=True (the step reads the captured "
                f"batch instead), got deferred_rotation={self.deferred_rotation!r}"
            )


@dataclass(frozen=True)
class SpeedupsInEffect:
    """What ``resolve_speedups`` found: the speed-ups that apply, and why the others do not."""

    from_batch: bool
    deferred_rotation: bool
    skip_weight_grads: bool
    not_applied: dict[str, str] = field(default_factory=dict)


def resolve_speedups(
    options: KFACOptions,
    speedups: Speedups,
    weight_decay: float,
    *,
    grads_from_batches: bool = False,
) -> SpeedupsInEffect:
    """Which requested speed-ups can apply to these options (the rest, with the reason).

    ``grads_from_batches``: the backend computes every gradient block from its captured batch
    and keeps the training loss's rows apart from the MC Fisher's (``kfaclab.train.fused``).
    Such a backend defers the data-input layer's rotation on its own, with or without a stream:
    it projects its own batches where no stream shares the projection (any factor start,
    schedule or Fisher; not with weight decay, which adds a term the batch does not have). A KL
    clip defers too: the rotated step gives its dᵀ∇ (``deferred.DeferredStep``)."""
    off: dict[str, str] = {}
    from_batch = speedups.batch_gradients_only and speedups.input_stream_cache is not None

    def refuse(name: str, reason: str) -> None:
        if getattr(speedups, name):
            off[name] = reason

    if speedups.input_stream_cache is None:
        refuse("batch_gradients_only", "it needs an input_stream_cache (the shared projections)")
    elif options.fisher != "empirical" and not grads_from_batches:
        from_batch = False
        refuse("batch_gradients_only", "the MC Fisher's captured gradients are not .grad's")
    elif weight_decay:
        from_batch = False
        refuse("batch_gradients_only", "weight decay adds a term the batch does not have")
    deferred = speedups.deferred_rotation and from_batch
    if grads_from_batches and not weight_decay:
        deferred = True  # on its own batches' projections where the stream has none
    if speedups.deferred_rotation and not from_batch:
        off["deferred_rotation"] = "it needs batch_gradients_only in effect"
    skip = speedups.skip_weight_grads and deferred
    if skip and options.factor_every != 1:
        skip = False
        off["skip_weight_grads"] = "it needs factor_every=1 (the gradient comes from the capture)"
    elif speedups.skip_weight_grads and not deferred:
        off["skip_weight_grads"] = "it needs deferred_rotation in effect"
    return SpeedupsInEffect(from_batch, deferred, skip, off)


def applicable(
    speedups: Speedups,
    options: KFACOptions,
    weight_decay: float,
    *,
    grads_from_batches: bool = False,
) -> Speedups:
    """``speedups`` less the ones that cannot apply to ``options``: for callers (the sweep's
    trials) that ask for "whatever applies" and so want no warning about the rest. The deferral
    a ``grads_from_batches`` backend adds on its own (see ``resolve_speedups``) is the engine's,
    not a ``Speedups`` flag."""
    in_effect = resolve_speedups(
        options, speedups, weight_decay, grads_from_batches=grads_from_batches
    )
    return Speedups(
        speedups.input_stream_cache,
        in_effect.from_batch,
        in_effect.deferred_rotation and in_effect.from_batch,
        in_effect.skip_weight_grads,
    )
