"""Typed run configuration: dataclasses, YAML load/save and dotted ``key=value`` overrides.

Precedence, lowest first: the defaults below (the paper's CIFAR-100 recipe), a ``--config``
YAML file, the command's flags, then ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import UserError, did_you_mean, shown
from kdlab.losses import loss_spec, term_weights

ENSEMBLE_REDUCTIONS = ("mean", "sum")

# Stated limits of numeric settings (seeds: MAX_SEED): far beyond any run of the papers kdlab reproduces
# (200-240 epochs, lr 0.05-0.2, tau <= 20, crops of 224), low enough that a typo or an attack ends in
# one line before anything is allocated or written rather than in an overflow, a fork bomb or a NaN.
MAX_EPOCHS = 100_000
MAX_LR = 10.0
MAX_TAU = 1e4
MAX_WORKERS = 256
MAX_IMAGE_SIZE = 4096
MAX_CACHE_GB = 1e6
MAX_LOSS_WEIGHT = 1e4  # DKD's and DIST's term weights (the methods use 0.5-8)
MAX_ENSEMBLE = 64  # teachers in one ensemble


@dataclass
class DataConfig:
    name: str = "cifar100"
    data_dir: str | None = None
    subset: int | None = None  # training images kept (seeded, class-balanced); None = all
    test_subset: int | None = None
    subset_seed: int = 0  # chooses the subsets and the validation split
    val_split: int | None = None  # training images held out for validation (class-balanced); None = none
    augment: str = (
        "default"  # default | none | flip | crop | crop+flip | autoaugment (true/false: default/none)
    )
    label_noise: str | None = None  # "symmetric:0.4" or "asymmetric:0.2"; training labels only
    noise_seed: int = 0  # separate from the training seed: the same noisy labels for every run
    select: str | None = (
        None  # train on a teacher-chosen fraction, e.g. "samples:entropy:0-0.1" (kdlab.data.select)
    )
    select_pass: str = (
        "clean"  # the teacher scores clean images, or one crop+flip pass ("augmented", official)
    )
    select_seed: int = 0  # random selections: the same samples for every run
    # How many of a class's n samples a band keeps: kd_data (the official code's arithmetic: 19 of 187 for
    # samples:random:0-0.1) or floor (floor(n * upper) - floor(n * lower): 18); kdlab.data.select.
    select_count: str = "kd_data"
    # Each epoch, the student's accuracy on the training samples data.select left out (left_out_acc in
    # metrics.jsonl, as the official code's valid loader): one evaluation pass over them per epoch.
    eval_left_out: bool = True
    download: bool = False
    num_workers: int = 4  # DataLoader workers (ImageFolder only; in-memory data needs none)
    image_size: int | None = None  # ImageFolder crop size (default 224)

    def __post_init__(self) -> None:
        from kdlab.data.augment import augment_mode

        self.augment = augment_mode(self.augment)  # one spelling per mode: old true/false become modes


# --- loss hyperparameters: each declared once, with its config field ---------------------------------

HYPERPARAMETER = "kdlab.hyperparameter"  # the key of a field's metadata that declares it


def format_value(value: Any) -> str:
    """How run names and labels show a hyperparameter: 0.9 -> '0.9', 1.0 -> '1', inf -> 'inf'."""
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Hyperparameter:
    """A loss hyperparameter ``kd.FIELD``: its valid range ``[low, high]`` (``open_low``/``open_high``
    exclude a bound), the token that starts its run-name part (``t`` -> ``t20``; a true flag shows the
    bare token), the fix an error suggests (``hint``), whether report labels omit it at its default
    (``hide_default``), and for a flag the suffix it adds to its loss's label when true (``label``).
    Declared once: with a ``DistillConfig`` field (:func:`hyperparameter`) or, for a plugin's loss,
    with :func:`declare_hyperparameter`. A field whose default is None is optional: None means not
    given (no run-name token, no label, not listed in summary.json), a number must fit the range."""

    token: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    hint: str = ""
    hide_default: bool = False
    label: str | None = None

    def range_text(self) -> str:
        return (
            f"{'(' if self.open_low else '['}{format_value(float(self.low))}, "
            f"{format_value(float(self.high))}{')' if self.open_high else ']'}"
        )


def hyperparameter(default: Any, *, token: str, **declaration: Any) -> Any:
    """A ``DistillConfig`` field declared as a loss hyperparameter (see :class:`Hyperparameter`)."""
    return field(default=default, metadata={HYPERPARAMETER: Hyperparameter(token, **declaration)})


@dataclass
class DistillConfig:
    teacher: str | list[str] | None = None  # run folder(s) or checkpoint(s); a list is an ensemble
    ensemble: str = "mean"  # how an ensemble combines its members' logits: mean | sum (the official code)
    loss: str = "ce"  # a registered loss (kdlab.losses): ce | kl | mse | smooth_logit | dkd | dist
    # Loss hyperparameters. Each loss reads the ones its registration names (kdlab.losses); a setting
    # the chosen loss does not read is an error. The defaults are the CIFAR-100 settings of each method.
    alpha: float = hyperparameter(
        1.0,
        token="a",
        low=0.0,
        high=1.0,
        hide_default=True,
        hint="alpha weights the KD term, e.g. --alpha 0.9",
    )  # kl, mse, smooth_logit: weight of the KD term; (1 - alpha) weights cross-entropy
    # kl, mse, smooth_logit: the loss ce_weight * CE + kd_weight * KD instead of alpha's convex pair, as
    # mdistiller's CE_WEIGHT/KD_WEIGHT (logit standardization's recipe: 0.1 * CE + 9 * KD at tau 2). Both
    # or neither; given, they replace alpha (kdlab.losses.term_weights). None: not given.
    ce_weight: float | None = hyperparameter(
        None, token="ce", low=0.0, high=MAX_LOSS_WEIGHT,
        hint="the weight of cross-entropy, given with kd.kd_weight (instead of alpha), e.g. 0.1",
    )  # fmt: skip
    kd_weight: float | None = hyperparameter(
        None, token="kd", low=0.0, high=MAX_LOSS_WEIGHT,
        hint="the weight of the KD term, given with kd.ce_weight (instead of alpha), e.g. 9",
    )  # fmt: skip
    tau: float = hyperparameter(
        4.0, token="t", low=0.0, high=math.inf,
        hint="use a temperature >= 0, 'inf' (logit matching) or 0 (label matching)",
    )  # kl, dkd, dist: temperature; kl also takes inf (logit matching) and 0 (label matching)  # fmt: skip
    standardize: bool = hyperparameter(
        False, token="ls", label="LS", hint="logit standardization is on (true) or off (false)"
    )  # kl, dkd: z-score both logits per sample first (logit standardization, Sun et al. 2024)
    dkd_alpha: float = hyperparameter(
        1.0, token="a", low=0.0, high=MAX_LOSS_WEIGHT, hide_default=True,
        hint="DKD's weight of TCKD (target class), e.g. 1",
    )  # fmt: skip
    dkd_beta: float = hyperparameter(
        8.0, token="b", low=0.0, high=MAX_LOSS_WEIGHT, hide_default=True,
        hint="DKD's weight of NCKD (non-target classes), e.g. 8",
    )  # fmt: skip
    dkd_warmup: int = hyperparameter(
        20, token="w", low=0, high=MAX_EPOCHS, hide_default=True,
        hint="the epochs over which DKD's terms ramp up linearly; 0 = from the start",
    )  # fmt: skip
    dist_beta: float = hyperparameter(
        2.0, token="b", low=0.0, high=MAX_LOSS_WEIGHT, hide_default=True,
        hint="DIST's weight of the inter-class relation, e.g. 2",
    )  # fmt: skip
    dist_gamma: float = hyperparameter(
        2.0, token="g", low=0.0, high=MAX_LOSS_WEIGHT, hide_default=True,
        hint="DIST's weight of the intra-class relation, e.g. 2",
    )  # fmt: skip
    # Look teacher logits up in an exact per-(image, crop, flip) cache (kdlab.cache): true, false, or
    # auto: on when the teacher would otherwise compute more views than the cache holds
    # (kdlab.cache.decide_cache). One of CACHE_SETTINGS.
    cache: bool | str = "auto"
    cache_dir: str | None = None  # default $KDLAB_CACHE_DIR/teacher-logits
    cache_limit_gb: float = 8.0  # refuse to build a cache larger than this
    # Hyperparameters that plugins declared (declare_hyperparameter), by field name; read and written
    # as kd.NAME like the fields above (the config file shows them among them, never as `extra`).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes: plugin fields
        declared = _DECLARED.get(name)
        if declared is None or name.startswith("__"):
            raise AttributeError(f"DistillConfig has no field {name!r}")
        return self.__dict__.get("extra", {}).get(name, declared[0])


CACHE_SETTINGS = ("auto", True, False)  # kd.cache's values (YAML's on/off/yes/no read as true/false)


_DECLARED: dict[
    str, tuple[Any, Hyperparameter]
] = {}  # plugin hyperparameters: field -> (default, declaration)
_NOT_FIELDS = ("extra",)  # DistillConfig attributes that are not config keys


def declare_hyperparameter(name: str, default: float | int | bool, *, token: str, replace: bool = False,
                           **declaration: Any) -> None:  # fmt: skip
    """Declare ``kd.NAME`` for a loss of your own (see :class:`Hyperparameter` for ``token``, ``low``,
    ``high``, ``open_low``, ``open_high``, ``hint``, ``hide_default``, ``label``); a loss then reads
    it with ``register_loss(..., params={"keyword": "NAME"})``. It is set like kdlab's own:
    ``--set kd.NAME=VALUE``, ``kd: {NAME: VALUE}`` in YAML, a sweep grid over ``kd.NAME``."""
    own = {item.name for item in dataclasses.fields(DistillConfig)}
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or name in own:
        raise ValueError(f"kd.{name} cannot be declared: choose a new identifier (not a DistillConfig field)")
    if name in _DECLARED and not replace:
        raise ValueError(f"kd.{name} is already declared: choose another name, or pass replace=True")
    if not isinstance(default, (bool, int, float)):
        raise ValueError(f"kd.{name}: the default must be a number or a bool, not {default!r}")
    spec = Hyperparameter(token, **declaration)
    problem = _out_of_range(spec, default, default)
    if problem is not None:
        raise ValueError(f"kd.{name}: its default {default!r} {problem}")
    _DECLARED[name] = (default, spec)


def undeclare_hyperparameter(name: str) -> None:
    """Forget a plugin hyperparameter (for tests that declare a temporary one)."""
    _DECLARED.pop(name, None)


def declared_hyperparameters() -> dict[str, tuple[Any, Hyperparameter]]:
    """Every loss hyperparameter: ``{field: (default, declaration)}``, kdlab's then the plugins'."""
    found = {
        item.name: (item.default, item.metadata[HYPERPARAMETER])
        for item in dataclasses.fields(DistillConfig)
        if HYPERPARAMETER in item.metadata
    }
    return {**found, **_DECLARED}


def _out_of_range(spec: Hyperparameter, value: Any, default: Any) -> str | None:
    """Why ``value`` does not fit ``spec`` (None when it does): the words after ``kd.F=VALUE``."""
    if default is None and value is None:  # an optional hyperparameter, not given
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return f"is not a number in {spec.range_text()}"
    if isinstance(default, int) and value != int(value):
        return f"must be a whole number in {spec.range_text()}"
    below = value < spec.low or (spec.open_low and value == spec.low)
    above = value > spec.high or (spec.open_high and value == spec.high)
    return f"is outside {spec.range_text()}" if below or above else None


@dataclass(frozen=True)
class LossParam:
    """One hyperparameter as a loss reads it: its keyword ``name`` (the report label), its field
    ``kd.FIELD`` and that field's declaration; ``excluded`` values the loss cannot take."""

    name: str
    field: str
    default: Any
    spec: Hyperparameter
    excluded: tuple[float, ...] = ()

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def hide_default(self) -> bool:
        return self.spec.hide_default

    @property
    def label(self) -> str:
        return self.spec.label or self.name

    def check(self, value: Any, loss: str) -> None:
        """A UserError naming ``kd.FIELD``, the value and what it must be, unless ``value`` fits."""
        key, hint = f"kd.{self.field}", self.spec.hint or f"see the hyperparameters of loss {loss}"
        problem = _out_of_range(self.spec, value, self.default)
        if problem is not None:
            raise UserError(f"{key}={shown(value)} {problem}: {hint}")
        if value in self.excluded:
            values = ", ".join(format_value(v) for v in self.excluded)
            raise UserError(
                f"{key}={format_value(value)} cannot be used with loss {loss}, which excludes {values}: choose "
                f"another value, e.g. {key}={format_value(self.default)}"
            )

    def token_of(self, value: Any) -> str | None:
        if value is None:  # an optional hyperparameter not given
            return None
        if self.is_flag:
            return self.spec.token if value else None
        return f"{self.spec.token}{format_value(value)}"

    def label_of(self, value: Any) -> str | None:
        if value is None or self.is_flag or (self.hide_default and value == self.default):
            return None
        return f"{self.label}={format_value(value)}"


def loss_params(loss: str) -> tuple[LossParam, ...]:
    """The hyperparameters ``loss`` reads, in its registration's order (a UserError for an unknown
    loss, or for a loss that reads a field nobody declared)."""
    spec = loss_spec(loss)
    declared = declared_hyperparameters()
    params = []
    for keyword, name in spec.params:
        if name not in declared:
            raise UserError(
                f"loss {spec.name} reads kd.{name}, which is not a declared hyperparameter: declare it with "
                "kdlab.config.declare_hyperparameter in the loss's module, or fix the name in its params"
            )
        default, declaration = declared[name]
        params.append(LossParam(keyword, name, default, declaration, spec.excluded(name)))
    return tuple(params)


def loss_values(kd: DistillConfig) -> dict[str, Any]:
    """``{keyword: value}`` of the hyperparameters ``kd.loss`` reads (what its terms function takes)."""
    return {param.name: getattr(kd, param.field) for param in loss_params(kd.loss)}


def loss_settings(kd: DistillConfig) -> dict[str, Any]:
    """``{field: value}`` of the hyperparameters ``kd.loss`` reads: what summary.json records (an
    optional one that is not given, such as ``ce_weight`` of a KL run weighted by alpha, is left out)."""
    values = {param.field: getattr(kd, param.field) for param in loss_params(kd.loss)}
    return {field: value for field, value in values.items() if value is not None}


def loss_tokens(kd: DistillConfig) -> list[str]:
    """``["kl", "a0.9", "t20"]``: the loss name, then each hyperparameter's token."""
    tokens = [param.token_of(getattr(kd, param.field)) for param in loss_params(kd.loss)]
    return [loss_spec(kd.loss).name, *[token for token in tokens if token]]


def loss_label(kd: DistillConfig) -> str:
    """The report label: 'CE', 'KL tau=20', 'KL alpha=0.5 tau=inf', 'KL+LS tau=2', 'DKD tau=4'."""
    params = loss_params(kd.loss)
    values = [getattr(kd, param.field) for param in params]
    flags = [param.label for param, value in zip(params, values, strict=True) if param.is_flag and value]
    parts = [param.label_of(value) for param, value in zip(params, values, strict=True)]
    return " ".join(["+".join([loss_spec(kd.loss).label, *flags]), *[part for part in parts if part]])


def check_unread(config: RunConfig, given: Any, where: str = "") -> None:
    """A UserError when a loss hyperparameter in ``given`` (dotted keys that were set explicitly) is one
    ``config.kd.loss`` does not read: a setting that would change nothing, yet be recorded. That
    includes ``kd.alpha`` given with ``kd.ce_weight``/``kd.kd_weight``, which replace it."""
    reads = set(loss_spec(config.kd.loss).fields)
    for key in given:
        name = key.removeprefix("kd.")
        if key.startswith("kd.") and name in declared_hyperparameters() and name not in reads:
            raise UserError(f"{where}{unread_message(key, config.kd.loss)}")
        if key == "kd.alpha" and _weighted(config.kd):
            raise UserError(f"{where}{alpha_and_weights_message(config.kd)}")


def _weighted(kd: DistillConfig) -> bool:
    """Whether ``kd``'s loss is weighted by ``kd.ce_weight``/``kd.kd_weight`` instead of alpha."""
    fields = loss_spec(kd.loss).fields
    return "alpha" in fields and any(
        name in fields and getattr(kd, name) is not None for name in ("ce_weight", "kd_weight")
    )


def alpha_and_weights_message(kd: DistillConfig) -> str:
    return (
        f"kd.alpha={format_value(kd.alpha)} and kd.ce_weight/kd.kd_weight both weight loss {kd.loss}: give alpha "
        "((1 - alpha) * CE + alpha * KD) or the two weights (ce_weight * CE + kd_weight * KD), not both"
    )


def unread_message(key: str, loss: str) -> str:
    fields = loss_spec(loss).fields
    reads = f"reads {', '.join('kd.' + name for name in fields)}" if fields else "reads no hyperparameter"
    return f"{key} is not read by loss {loss}, which {reads}: drop {key}, or choose a loss that reads it"


@dataclass
class OptimConfig:
    """The optimiser and its learning-rate schedule (kdlab.engine.student: ``make_optimizer``,
    ``lr_at``). The defaults are the paper's: SGD, Nesterov momentum, x0.1 at half and three quarters
    of the epochs. A setting that only another optimiser or schedule reads (``OPTIM_CHOICES``) must
    keep its default: it would change nothing."""

    name: str = "sgd"  # sgd | adamw
    epochs: int = 200
    batch_size: int = 128  # per process; the global batch is this times the world size
    lr: float = 0.1
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw: moment decay rates
    eps: float = 1e-8  # adamw: added to the root of the second moment
    weight_decay: float = 5e-4  # on parameters with more than one dimension only (adamw: decoupled)
    schedule: str = "step"  # step | cosine
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of the epochs
    gamma: float = 0.1  # step: the factor at each milestone
    warmup_epochs: int = 0  # both schedules: linear warm-up over the first epochs (0: none)

    def unread(self) -> list[str]:
        """The fields another optimiser or schedule reads but the chosen ones do not (sgd: betas, eps)."""
        unread: list[str] = []
        for key, choices in OPTIM_CHOICES.items():
            reads = choices.get(getattr(self, key), ())
            unread += [name for names in choices.values() for name in names if name not in reads]
        return list(dict.fromkeys(unread))

    def check(self) -> None:
        """A UserError for an unknown optimiser or schedule, or for a setting the chosen ones do not
        read that is given, i.e. differs from its default (so a run's config.yaml, which lists every
        field at its value, reads back as it was written)."""
        for key, choices in OPTIM_CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise UserError(
                    f"optim.{key}={shown(value)} is invalid{did_you_mean(str(value), choices)}: choose "
                    + " or ".join(choices)
                )
        defaults = OptimConfig()
        for name in self.unread():
            if getattr(self, name) == getattr(defaults, name):
                continue
            key, choices = next(
                (key, choices) for key, choices in OPTIM_CHOICES.items() if _reader(choices, name)
            )
            chosen = getattr(self, key)
            reads = ", ".join(f"optim.{field}" for field in choices[chosen])
            raise UserError(
                f"optim.{name}={shown(getattr(self, name))} is not read by optim.{key}={chosen}, which reads "
                f"{reads}: drop optim.{name}, or set optim.{key}={_reader(choices, name)}"
            )


# What each optimiser (optim.name) and each schedule (optim.schedule) reads. A field read by one
# choice but not the chosen one must keep its default (OptimConfig.check) and is not part of a run's
# identity (identity()).
OPTIM_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "name": {"sgd": ("lr", "momentum", "nesterov", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay")},
    "schedule": {"step": ("lr", "epochs", "milestones", "gamma", "warmup_epochs"),
                 "cosine": ("lr", "epochs", "warmup_epochs")},
}  # fmt: skip


def _reader(choices: dict[str, tuple[str, ...]], name: str) -> str | None:
    """The first choice that reads ``name``."""
    return next((choice for choice, names in choices.items() if name in names), None)


@dataclass
class RunConfig:
    model: str = "wrn-16-2"
    # Modules or .py files imported before any name is resolved: your models, datasets and losses,
    # registered with kdlab's decorators (kdlab.plugins). Files are recorded as absolute paths.
    imports: list[str] = field(default_factory=list)
    # The layer whose output is the model's penultimate features (a module path, e.g. "body.3"); None:
    # the input of its last nn.Linear (kdlab.models.features). Read by feature losses and kdlab analyze.
    features: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    kd: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 9999
    out: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (fp32 on CUDA and CPU: kdlab.device.AUTO_BF16) | bf16 | off
    channels_last: bool = False
    compile: bool = False
    stack: str = "auto"  # students of one architecture as one module: auto (on CUDA) | on | off
    cuda_graph: bool = True  # on CUDA, capture the training step as one CUDA graph and replay it
    deterministic: bool = False
    sync_bn: bool = False
    tensorboard: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The nested config; plugin hyperparameters appear under ``kd`` like kdlab's own."""
        data = dataclasses.asdict(self)
        data["kd"].update(data["kd"].pop("extra"))
        return data

    def validate(self) -> RunConfig:
        """Raise a UserError for values no run can use; return self."""
        spec = loss_spec(self.kd.loss)
        self.kd.loss = spec.name  # as registered, whatever the case it was typed in
        for param in loss_params(spec.name):
            param.check(getattr(self.kd, param.field), spec.name)
        if _weighted(self.kd):  # the weights replace alpha: both of them, and alpha left at its default
            term_weights(self.kd.alpha, self.kd.ce_weight, self.kd.kd_weight)
            if self.kd.alpha != DistillConfig.alpha:
                raise UserError(alpha_and_weights_message(self.kd))
        specs = teacher_specs(self.kd.teacher)  # one form per meaning: a single teacher is a string
        self.kd.teacher = None if not specs else specs[0] if len(specs) == 1 else specs
        if spec.needs_teacher and not specs:
            raise UserError(f"--loss {self.kd.loss} needs a teacher: pass --teacher RUN_OR_CHECKPOINT")
        if len(specs) > MAX_ENSEMBLE:  # each member is loaded and run on every batch
            raise UserError(
                f"kd.teacher lists {len(specs)} teachers: an ensemble holds at most {MAX_ENSEMBLE} (the paper's has 3)"
            )
        for name, value in [("optim.epochs", self.optim.epochs), ("optim.batch_size", self.optim.batch_size)]:
            if value < 1:
                raise UserError(f"{name}={value} must be a positive integer")
        if not 0 < self.optim.lr < math.inf:
            raise UserError(f"optim.lr={self.optim.lr} must be positive and finite, e.g. --lr 0.1")
        if self.kd.ensemble not in ENSEMBLE_REDUCTIONS:
            raise UserError(
                f"kd.ensemble={self.kd.ensemble!r} is invalid: choose {' or '.join(ENSEMBLE_REDUCTIONS)}"
            )
        self._validate_ranges()
        if self.amp not in ("auto", "bf16", "off"):
            raise UserError(f"amp={self.amp!r} is invalid: choose auto, bf16 or off")
        if not (isinstance(self.kd.cache, bool) or self.kd.cache in CACHE_SETTINGS):
            raise UserError(f"kd.cache={shown(self.kd.cache)} is invalid: choose auto, true or false")
        if self.kd.cache is True and self.data.augment == "autoaugment":
            raise UserError(
                "kd.cache keeps one teacher logit per crop/flip view, and AutoAugment's views are not a "
                "finite set: drop kd.cache or choose another data.augment"
            )
        from kdlab.data.select import check_selection

        check_selection(self.data.select, self.data.select_pass, bool(specs), self.data.select_count)
        if self.stack not in ("auto", "on", "off"):
            raise UserError(f"stack={self.stack!r} is invalid: choose auto, on or off")
        if self.data.label_noise:
            from kdlab.data import parse_label_noise

            parse_label_noise(self.data.label_noise)
        from kdlab.device import check_device

        check_device(self.device)
        return self

    def _validate_ranges(self) -> None:
        """Seeds, optimiser and data settings that PyTorch or numpy would refuse mid-run (or accept
        silently, such as a negative weight decay)."""
        optim = self.optim
        optim.check()
        seeds = {
            "seed": self.seed,
            **{f"data.{k}_seed": getattr(self.data, f"{k}_seed") for k in ("subset", "noise", "select")},
        }
        for name, seed in seeds.items():
            if not 0 <= seed <= MAX_SEED:
                raise UserError(f"{name}={seed} is outside [0, {MAX_SEED}] (2^32 - 1): choose e.g. --seed 0")
        data, kd = self.data, self.kd
        ranges = [  # (key, value, valid, what it must be); NaN fails every comparison, so it is refused too
            ("optim.weight_decay", optim.weight_decay, 0 <= optim.weight_decay < math.inf, ">= 0 and finite, e.g. 5e-4"),
            ("optim.momentum", optim.momentum, 0 <= optim.momentum < 1, "in [0, 1), e.g. 0.9"),
            ("optim.gamma", optim.gamma, 0 < optim.gamma < math.inf, "positive and finite, e.g. 0.1"),
            ("optim.milestones", optim.milestones, all(0 <= m <= 1 for m in optim.milestones),
             "fractions of the epochs in [0, 1], e.g. [0.5, 0.75]"),
            ("optim.betas", optim.betas, len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
             "two decay rates in [0, 1), e.g. [0.9, 0.999]"),
            ("optim.eps", optim.eps, 0 < optim.eps < math.inf, "positive and finite, e.g. 1e-8"),
            ("optim.warmup_epochs", optim.warmup_epochs, optim.warmup_epochs == 0 or 0 < optim.warmup_epochs < optim.epochs,
             f"a whole number of epochs in [0, {optim.epochs}) (fewer than optim.epochs: the run must reach optim.lr)"),
            ("data.num_workers", data.num_workers, data.num_workers >= 0, ">= 0 (0 loads in the main process)"),
            ("kd.cache_limit_gb", kd.cache_limit_gb, 0 < kd.cache_limit_gb < math.inf, "positive, e.g. 8"),
            # The stated upper limits (MAX_* below): absurd values end here, in one line, rather than in
            # an overflow, a fork bomb, a NaN or a run that never ends.
            ("optim.epochs", optim.epochs, optim.epochs <= MAX_EPOCHS, f"at most {MAX_EPOCHS}, e.g. --epochs 200"),
            ("optim.lr", optim.lr, optim.lr <= MAX_LR, f"at most {MAX_LR:g} (larger steps diverge), e.g. --lr 0.1"),
            ("optim.weight_decay", optim.weight_decay, optim.weight_decay <= 1,
             "at most 1 (it would shrink the weights faster than they learn), e.g. 5e-4"),
            ("optim.gamma", optim.gamma, optim.gamma <= 1,
             "at most 1 (the factor that lowers the learning rate at each milestone), e.g. 0.1"),
            ("optim.eps", optim.eps, optim.eps <= 1, "at most 1 (it would drown the gradient), e.g. 1e-8"),
            ("data.num_workers", data.num_workers, data.num_workers <= MAX_WORKERS,
             f"at most {MAX_WORKERS} processes, e.g. 4"),
            ("data.image_size", data.image_size, data.image_size is None or 1 <= data.image_size <= MAX_IMAGE_SIZE,
             f"a crop size in [1, {MAX_IMAGE_SIZE}] pixels (or absent: the dataset's own), e.g. 224"),
            ("kd.cache_limit_gb", kd.cache_limit_gb, kd.cache_limit_gb <= MAX_CACHE_GB,
             f"at most {MAX_CACHE_GB:g} (a petabyte), e.g. 8"),
            ("kd.tau", kd.tau, kd.tau == math.inf or kd.tau <= MAX_TAU,
             f"at most {MAX_TAU:g}, or inf for logit matching (beyond it softmax(z / tau) of float32 logits is "
             "uniform to rounding)"),
        ]  # fmt: skip
        for name, value, valid, accepted in ranges:
            if not valid:
                raise UserError(f"{name}={shown(value)} is invalid: it must be {accepted}")
        if optim.nesterov and optim.momentum == 0:
            raise UserError(
                "optim.nesterov=true needs optim.momentum > 0: set optim.momentum=0.9, or optim.nesterov=false"
            )
        for name, value in (("data.subset", data.subset), ("data.test_subset", data.test_subset)):
            if value is not None and value < 1:
                raise UserError(f"{name}={value} must be a positive number of images (or absent: all)")
        from kdlab.models import check_model_name

        check_model_name(self.model)  # unknown, or absurd before any data is loaded (wrn-10000-1000)
        spec = loss_spec(kd.loss)
        if optim.batch_size < spec.min_batch:
            raise UserError(
                f"optim.batch_size={optim.batch_size} is too small: {spec.batch_need}; raise --batch-size"
            )
        if self.out is not None and not self.out.strip():
            raise UserError("--out is empty: name a folder for the run")


def teacher_specs(value: str | Path | list[str | Path] | tuple[str | Path, ...] | None) -> list[str]:
    """A teacher setting as a list of specs: None or empty -> ``[]``, one spec -> ``[spec]``, a list
    (an ensemble) -> its specs. The one place where ``kd.teacher``'s two forms are told apart."""
    if not value:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    return [str(item) for item in items]


MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed take [0, 2^32 - 1] everywhere


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's annotated type, or raise a UserError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except UserError as error:
                errors.append(error)
        raise errors[-1]
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, item_type, key) for item in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
    elif annotation is float:  # the one parser of numbers from YAML, --set and flags such as --tau
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return math.inf if value.strip().lower() in ("inf", "infinity", "+inf") else float(value)
            except ValueError:
                pass
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads `amp: off` / `--set amp=off` as False
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
    type_name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"{key}={shown(value)} is not a valid {type_name}: give {key} a {type_name} value")


def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(data: dict[str, Any], cls: type = RunConfig, prefix: str = "") -> Any:
    """Build ``cls`` from a nested dict, refusing unknown keys (listing the valid ones). Under ``kd``,
    the hyperparameters plugins declared are accepted like kdlab's own fields."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    if cls is RunConfig and data.get("imports"):
        from kdlab.plugins import import_plugins

        # Before any name is resolved; recorded as imported (files as absolute paths).
        data = {**data, "imports": import_plugins(_coerce(data["imports"], list[str], "imports"))}
    hints = {
        key: value for key, value in _fields(cls).items() if not (cls is DistillConfig and key in _NOT_FIELDS)
    }
    extras = _DECLARED if cls is DistillConfig else {}
    unknown = [key for key in data if key not in hints and key not in extras]
    if unknown:
        key = str(unknown[0])[:200]
        valid = [*hints, *extras]
        raise UserError(
            f"unknown config key {shown(prefix + key)}{did_you_mean(prefix + key, [prefix + n for n in valid])}: "
            "valid keys are " + ", ".join(prefix + name for name in valid)
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in extras:
            default = extras[key][0]
            values.setdefault("extra", {})[key] = _coerce(value, type(default), prefix + key)
            continue
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = from_dict(value or {}, annotation, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, annotation, prefix + key)
    return cls(**values)


def from_record(stored: Any) -> RunConfig:
    """A run's recorded settings (its config.yaml, or the config a checkpoint holds) as a RunConfig.

    A setting that kdlab added later is absent from the records of older runs, which ran as kdlab did
    before it; where that differs from the new default, the record is read with the old behaviour, so
    that comparing it with a new config (``--resume``, a sweep's reuse, a report's groups) sees the
    difference: a ``data.select`` run recorded without ``data.select_count`` selected with ``floor``.
    """
    if isinstance(stored, dict) and isinstance(stored.get("data"), dict):
        data = stored["data"]
        if data.get("select") and "select_count" not in data:
            stored = {**stored, "data": {**data, "select_count": "floor"}}
    return from_dict(stored)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins, nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=0.05"`` -> ``{"optim": {"lr": 0.05}}``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r} is malformed: write --set key=value, e.g. --set optim.lr=0.05")
    try:
        value = safe_yaml(raw, f"--set {key}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return unflatten({key: value})


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"kd.tau": 3}`` -> ``{"kd": {"tau": 3}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        cursor = nested
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return nested


# A config or recipe is a few KB of a few levels; these bounds refuse what only an attack would send.
YAML_MAX_BYTES = 1 << 20
YAML_MAX_DEPTH = 64
YAML_MAX_VALUES = 100_000  # counted as expanded: aliases to an anchor count again each time


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents nested deeper than ``YAML_MAX_DEPTH`` (PyYAML's
    composer recurses per level, so 20,000 levels would end in a RecursionError)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > YAML_MAX_DEPTH:
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _TooDeep(Exception):
    pass


def _count_values(data: Any, budget: int) -> int:
    """``budget`` minus the number of values in ``data`` as if its aliases were expanded; stops below 0."""
    budget -= 1
    if isinstance(data, dict):
        items = [*data.keys(), *data.values()]
    elif isinstance(data, list):
        items = data
    else:
        return budget
    for item in items:
        budget = _count_values(item, budget)
        if budget < 0:
            break
    return budget


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` bounded in depth and expanded size (UserError naming ``source``);
    a syntax error is left as ``yaml.YAMLError`` for the caller to word."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except (_TooDeep, RecursionError):
        raise UserError(
            f"{source} is nested more than {YAML_MAX_DEPTH} levels deep: a kdlab config has a few levels"
        ) from None
    except ValueError as error:  # a value the constructor cannot build: a 5000-digit integer, a 13th month
        detail = str(error).split(":")[0][:80]
        raise UserError(f"{source} holds a value YAML cannot read ({detail}): fix that value") from None
    if _count_values(data, YAML_MAX_VALUES) < 0:
        raise UserError(
            f"{source} expands to more than {YAML_MAX_VALUES} values (YAML aliases repeating an anchor?): "
            "a kdlab config holds a few dozen; write the values out"
        )
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (a config, a recipe, a run's config.yaml), or a UserError."""
    from kdlab.runs import read_regular  # regular files only: a FIFO would block the read forever

    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {path} does not exist: check the path given to --config")
    raw = read_regular(path, YAML_MAX_BYTES, fix="give a YAML file")
    if len(raw) > YAML_MAX_BYTES:
        raise UserError(
            f"{path} is larger than {YAML_MAX_BYTES >> 20} MiB: a kdlab config is a few KB; check the path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}): save it as UTF-8"
        ) from None
    try:
        data = safe_yaml(text, str(path)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    if "imports" in data:  # files are named relative to the document that names them
        from kdlab.plugins import resolve_import

        listed = data["imports"] if isinstance(data["imports"], list) else [data["imports"]]
        data["imports"] = [resolve_import(item, path.parent) for item in listed if item is not None]
    return data


def build_config(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    strict: bool = True,
    complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> RunConfig:
    """Defaults < ``base`` < YAML file < flags (nested dict, None values ignored) < ``--set`` overrides.

    ``imports`` accumulate over all four (each source may add plugins). A loss hyperparameter given
    by the file, a flag or ``--set`` that the chosen loss does not read is a UserError (``strict``;
    a caller that shares settings among runs of several losses checks them itself). ``complete`` may
    fill in the merged document before it is parsed (``kdlab.teacher.with_teacher_data``)."""
    layers = [dict(base or {})]
    if config_file:
        layers.append(load_yaml(config_file))
    layers.append(_drop_none(flags or {}))
    layers += [parse_override(text) for text in overrides or []]
    data: dict[str, Any] = {}
    imports: list[str] = []
    for layer in layers:
        data = merge(data, layer)
        listed = layer.get("imports")
        imports += listed if isinstance(listed, list) else [] if listed is None else [listed]
    if imports:
        data["imports"] = list(dict.fromkeys(str(item) for item in imports))
    if complete is not None:
        data = complete(data)
    config = from_dict(data).validate()
    if strict:
        check_unread(config, [key for layer in layers[1:] for key in flatten(layer)])
    return config


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                cleaned[key] = value
        elif value is not None:
            cleaned[key] = value
    return cleaned


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kd": {"tau": 3}, "optim.lr": 0.1}`` -> ``{"kd.tau": 3, "optim.lr": 0.1}`` (later keys win)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# Settings that do not change what a run computes: they may differ between an interrupted run and its
# continuation (another machine, another data path), and a report does not group runs by them.
RUNTIME_KEYS = (
    "out", "imports", "device", "amp", "compile", "progress", "tensorboard", "channels_last", "deterministic", "sync_bn",
    "stack", "cuda_graph",
    "data.data_dir", "data.download", "data.num_workers", "data.eval_left_out", "kd.cache", "kd.cache_dir", "kd.cache_limit_gb",
)  # fmt: skip


def identity(config: RunConfig) -> dict[str, Any]:
    """The flattened config without ``RUNTIME_KEYS`` and without the loss hyperparameters its loss
    does not read (a CE run has no tau) or the optimiser settings its optimiser and schedule do not
    read (an AdamW run has no momentum): what makes two runs the same computation."""
    unread = {f"kd.{field}" for field in declared_hyperparameters()} - {
        f"kd.{field}" for field in loss_spec(config.kd.loss).fields
    }
    unread |= {f"optim.{field}" for field in config.optim.unread()}  # adamw has no momentum
    return {
        key: value
        for key, value in flatten(config.to_dict()).items()
        if key not in RUNTIME_KEYS and key not in unread
    }


def first_difference(
    old: RunConfig, new: RunConfig, ignore: tuple[str, ...] = ()
) -> tuple[str, Any, Any] | None:
    """``(key, old value, new value)`` of the first setting (outside ``RUNTIME_KEYS`` and ``ignore``)
    in which two configs compute differently, or None. Teachers are compared by file or folder name,
    so that a moved sweep or run folder still matches."""
    before, after = identity(old), identity(new)
    for key in dict.fromkeys([*before, *after]):
        if key in ignore:
            continue
        old_value, new_value = before.get(key), after.get(key)
        if key == "kd.teacher":
            old_value, new_value = _teacher_names(old_value), _teacher_names(new_value)
        if old_value != new_value:
            return key, old_value, new_value
    return None


def _teacher_names(value: Any) -> list[str]:
    return [Path(spec).name for spec in teacher_specs(value)]


def to_yaml(config: RunConfig) -> str:
    """The resolved config as a run records it (``config.yaml``): every setting, except the loss
    hyperparameters its loss does not read and the optimiser settings its optimiser and schedule do not
    read, so that the record holds no setting that changed nothing (and reads back as ``--config``)."""
    data = config.to_dict()
    reads = set(loss_spec(config.kd.loss).fields)
    for name in declared_hyperparameters():
        if name not in reads:
            data["kd"].pop(name, None)
    for name in config.optim.unread():
        data["optim"].pop(name, None)
    return yaml.safe_dump(data, sort_keys=False)
