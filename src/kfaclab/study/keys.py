"""What every key of a protocol file means: the source of `kfaclab protocol new`'s template and of
the key reference page (`kfaclab protocol keys`, docs/protocol.md), both written by keys_doc.py.

protocol.py decides what a file may contain; this module only describes it, so
tests/test_protocol_keys.py holds the two together: the keys listed here are exactly the keys
protocol.py reads (``_schema.tracing``), every default written here parses to the value the code
uses when the key is left out, and docs/protocol.md is this module's output. A key added to
protocol.py without a line here fails that test.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfaclab import choices as ch
from kfaclab.lr_scale import LR_SCALES, STRATEGY_LR_SCALES


def _one_of(options: tuple[str, ...]) -> str:
    return " | ".join(f'"{o}"' for o in options)


@dataclass(frozen=True)
class Key:
    """One key. ``default`` is the TOML value the code uses when the key is absent (None: the
    key has no such value: required, or absence means "off"/"unset", said in ``doc``);
    ``example`` is what the template writes; ``kind`` names the TOML type and the rule."""

    path: str
    kind: str
    doc: str
    default: str | None = None
    required: bool = False
    example: str | None = None  # written (not commented out) in the template when set

    @property
    def table(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split(".", 1)[1]


_RANGE = "table {low, high, log = false}"
# TPE's random start-up trials, as study/sweep.py's make_sampler computes them.
STARTUP_RULE = "min(10, max(1, n_trials // 3))"

KEYS: tuple[Key, ...] = (
    Key(
        "protocol.name",
        "string without '/'",
        "names the studies: <name>/sgd, <name>/kfac-lam=1e-03, …",
        required=True,
        example='"my-study"',
    ),
    Key(
        "protocol.description",
        "string",
        "one line for reports",
        default='""',
        example='"SGD and K-FAC at three λ on MNIST"',
    ),
    Key(
        "data.dataset",
        _one_of(ch.DATASETS),
        "the training set (60 000 images either way)",
        required=True,
        example='"mnist"',
    ),
    Key(
        "data.data_dir",
        "path",
        "folder with the IDX files, relative to this file; unset: `--data-dir`, then the cache "
        "(~/.cache/kfaclab), then a verified download. Not part of the stored protocol",
    ),
    Key(
        "model.kind",
        _one_of(ch.MODELS),
        '"mlp": depth × nn.Linear; "cnn": the fixed LeNet-like CNN (depth and width must then be '
        "left out)",
        default='"mlp"',
    ),
    Key(
        "model.depth",
        "integer >= 1",
        "number of nn.Linear layers (mlp only; required for it)",
        example="6",
    ),
    Key("model.width", "integer >= 1", "hidden width (mlp only; required for it)", example="100"),
    Key(
        "model.activation",
        _one_of(ch.ACTIVATIONS),
        '"identity" is the deep linear reading',
        default='"relu"',
    ),
    Key(
        "model.init",
        _one_of(ch.INITS),
        'weight initialisation: "torch" is PyTorch\'s default; "he", "glorot" redraw weights, '
        "biases 0",
        default=f'"{ch.DEFAULT_INIT}"',
    ),
    Key("training.batch_size", "integer >= 1", "examples per step", required=True, example="128"),
    Key(
        "training.epochs",
        "integer >= 1",
        "passes over the training set; give epochs or steps, not both",
        example="1",
    ),
    Key(
        "training.steps",
        "integer >= 1",
        "steps of a trial instead of epochs (the last partial batch of an epoch is a step: 469 at "
        "B = 128)",
    ),
    Key(
        "training.factor_decay",
        "number in [0, 1)",
        "running-factor EMA decay (the first update takes the batch statistic)",
        default=str(ch.DEFAULT_FACTOR_DECAY),
    ),
    Key(
        "training.factor_every",
        "integer >= 1",
        "steps between factor updates",
        default=str(ch.DEFAULT_FACTOR_EVERY),
    ),
    Key(
        "training.inverse_every",
        "integer >= 1",
        "steps between decompositions of the factors",
        default=str(ch.DEFAULT_INVERSE_EVERY),
    ),
    Key(
        "training.damping_form",
        _one_of(ch.DAMPING_FORMS),
        '"exact": (G⊗A + λI)⁻¹ in the factors\' eigenbases; "factored": Martens & Grosse\'s π '
        "split",
        default=f'"{ch.DEFAULT_DAMPING_FORM}"',
    ),
    Key(
        "training.fisher",
        _one_of(ch.FISHER_TYPES),
        '"empirical": the labels; "mc": labels sampled from the model',
        default=f'"{ch.DEFAULT_FISHER}"',
    ),
    Key(
        "training.kl_clip",
        "number > 0",
        "KL clipping of the step, ν = min(1, sqrt(c / (η² dᵀ∇))); unset: off",
        example=None,
    ),
    Key(
        "training.factor_init",
        _one_of(ch.FACTOR_INITS),
        '"identity" starts the factors at I (extra damping that decays with the EMA), as popular '
        "implementations do",
        default=f'"{ch.DEFAULT_FACTOR_INIT}"',
    ),
    Key(
        "training.eigen_floor",
        "number >= 0",
        "eigenvalues of A and G below it are set to 0 before damping",
        default=str(ch.DEFAULT_EIGEN_FLOOR),
    ),
    Key(
        "training.conv_approx",
        _one_of(ch.CONV_APPROXIMATIONS),
        "Conv2d factors: KFC's expand or the reduce approximation (cnn only)",
        default=f'"{ch.DEFAULT_CONV_APPROX}"',
    ),
    Key(
        "training.divergence_loss",
        "number > 0",
        "a minibatch loss above it, or not finite, ends the trial as diverged",
        default="1000.0",
    ),
    Key(
        "training.eval_steps",
        "increasing integers",
        "extra full-training-set evaluations (each ~1/6 of an SGD trial); the final one is always "
        "done, it is the objective",
    ),
    Key(
        "training.histogram_steps",
        "increasing integers >= 1",
        "steps at which (∂L/∂θ)² histograms are recorded",
        default="[]",
    ),
    Key("cells.sgd", "boolean", "an SGD-with-momentum cell", default="false", example="true"),
    Key(
        "cells.lambdas",
        "list of numbers > 0",
        "the λ grid: one K-FAC cell per value; unset: no fixed-λ cell",
        example="[1e-3, 1e-1, 10.0]",
    ),
    Key(
        "cells.lambda_convention",
        _one_of(("ours", "b2_scaled")),
        '"b2_scaled": the values are in the B²-smaller-G convention and are converted (ours = B² ×'
        " value)",
        default='"ours"',
    ),
    Key(
        "cells.strategies",
        "list of tables {name, kind, <constants>, search = {<constant> = range}}",
        "damping strategies as cells; the constants of each kind are listed below",
        default="[]",
    ),
    Key(
        "search.n_trials",
        "integer >= 1",
        "finished trials per cell (diverged ones count)",
        required=True,
        example="30",
    ),
    Key(
        "search.top_k",
        "integer in [1, n_trials]",
        "the best trials the report aggregates; unset: all n_trials",
        example="10",
    ),
    Key(
        "search.sampler",
        _one_of(("tpe", "gp", "random")),
        f'"tpe" and "gp" start with {STARTUP_RULE} random trials; TPE is multivariate',
        default='"tpe"',
    ),
    Key(
        "search.seed",
        "integer >= 0",
        "seeds every cell's sampler (with the cell name) and the training",
        default="0",
    ),
    Key(
        "search.trial_seeds",
        _one_of(("fixed", "per_trial")),
        '"fixed": every trial trains with seed; "per_trial": trial k with seed + k',
        default='"fixed"',
    ),
    Key(
        "search.lr",
        _RANGE,
        'the initial learning rate η₀ (lr / λ for a fixed-λ cell when lr_scale = "lambda")',
        required=True,
        example="{ low = 1e-4, high = 1.0, log = true }",
    ),
    Key(
        "search.lr_scale",
        _one_of(LR_SCALES),
        '"lambda": a fixed-λ cell samples lr / λ in search.lr (kfaclab.lr_scale)',
        default='"none"',
    ),
    Key(
        "search.strategy_lr_scale",
        _one_of(STRATEGY_LR_SCALES),
        '"damping": an adaptive strategy\'s cell samples lr / λ in search.lr (stored as its "lr") '
        "and each step uses it times the strategy's current λ_t (kfaclab.lr_scale)",
        default='"none"',
    ),
    Key(
        "search.lr_decay",
        _RANGE + " within [0, 1]",
        "α of the linear decay η_t = η₀ (1 − (1 − α) t / T): the final rate as a fraction of η₀",
        required=True,
        example="{ low = 0.0, high = 1.0 }",
    ),
    Key(
        "search.momentum",
        _RANGE + " within [0, 1)",
        "heavy-ball momentum",
        required=True,
        example="{ low = 0.0, high = 0.99 }",
    ),
    Key(
        "search.kl_clip",
        _RANGE + " with low > 0",
        "a K-FAC cell samples the KL clip instead of lr (with search.kl_clip_lr; excludes "
        "training.kl_clip); unset: off",
    ),
    Key(
        "search.kl_clip_lr",
        "number > 0",
        "the fixed lr (in lr_scale's units) of a searched KL clip; required with search.kl_clip",
    ),
    Key(
        "report.histogram_lambdas",
        "list of values of cells.lambdas",
        "the λ whose gradient histograms the report draws",
        default="[]",
    ),
    Key(
        "report.fixed_grid_cells",
        "integer >= 1",
        "size of the λ grid that chose an adaptive protocol's fixed λ, when it ran elsewhere "
        "(scales the tuning cost)",
    ),
    Key(
        "report.rerun_seeds",
        "distinct integers >= 0",
        "seeds of the report's reruns of each cell's best trial; unset: 10001, 10002, 10003",
    ),
    Key(
        "report.paired_reruns",
        "table {top, seeds}: integers, 1 <= top <= search.top_k, 1 <= seeds <= 99",
        "`kfaclab reproduce` reruns each cell's `top` best configurations on `seeds` new seeds "
        "shared by every cell (as `kfaclab replicate --top --seeds`) before the report, whose "
        "verdicts then come from these paired reruns; unset: reproduce runs none",
    ),
    Key(
        "claims.paper",
        "true | false",
        "test the paper's five claims (Fujimori et al. 2022); false for a study of one's own",
        default="true",
    ),
    Key(
        "claims.alpha",
        "number in (0, 0.5)",
        "two-sided level of every test a verdict uses (pre-registered: stored with the study)",
        default="0.05",
    ),
    Key(
        "claims.tie_margin",
        "number in (0, 1)",
        "C1 calls λ = 1 tied with the best only if its paired difference lies within ± this "
        "fraction of the best loss",
        default="0.1",
    ),
    Key(
        "claims.divergence_margin",
        "number in (0, 1)",
        "C2 is not reproduced when the smallest λ diverges at most this share more often than "
        "the best λ (Wilson upper bound)",
        default="0.1",
    ),
)
TABLES = ("protocol", "data", "model", "training", "cells", "search", "report", "claims")
