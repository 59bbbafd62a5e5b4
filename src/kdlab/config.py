"""Typed run configuration: dataclasses, YAML load/save and dotted ``key=value`` overrides.

Precedence, lowest first: the defaults below (the paper's CIFAR-100 recipe), a ``--config``
YAML file, the command's flags, then ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import UserError, did_you_mean, shown

ENSEMBLE_REDUCTIONS = ("mean", "sum")


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
    download: bool = False
    num_workers: int = 4  # DataLoader workers (ImageFolder only; in-memory data needs none)
    image_size: int | None = None  # ImageFolder crop size (default 224)

    def __post_init__(self) -> None:
        from kdlab.data.augment import augment_mode

        self.augment = augment_mode(self.augment)  # one spelling per mode: old true/false become modes


@dataclass
class DistillConfig:
    teacher: str | list[str] | None = None  # run folder(s) or checkpoint(s); a list is an ensemble
    ensemble: str = "mean"  # how an ensemble combines its members' logits: mean | sum (the official code)
    loss: str = "ce"  # a registered loss (kdlab.losses): ce | kl | mse | smooth_logit | dkd | dist
    # Loss hyperparameters. Each loss reads the ones its registration names (kdlab.losses), which
    # also gives their valid ranges; the defaults below are the CIFAR-100 settings of each method.
    alpha: float = 1.0  # kl, mse, smooth_logit: weight of the KD term; (1 - alpha) weights cross-entropy
    tau: float = 4.0  # kl, dkd, dist: temperature; kl also takes inf (logit matching) and 0 (label matching)
    standardize: bool = False  # kl: z-score both logits per sample first (logit standardization)
    dkd_alpha: float = 1.0  # dkd: weight of TCKD, the target-class term
    dkd_beta: float = 8.0  # dkd: weight of NCKD, the non-target-class term
    dkd_warmup: int = 20  # dkd: epochs over which the DKD terms ramp up linearly (0: none)
    dist_beta: float = 2.0  # dist: weight of the inter-class relation
    dist_gamma: float = 2.0  # dist: weight of the intra-class relation
    cache: bool = False  # look teacher logits up in an exact per-(image, crop, flip) cache (kdlab.cache)
    cache_dir: str | None = None  # default $KDLAB_CACHE_DIR/teacher-logits
    cache_limit_gb: float = 8.0  # refuse to build a cache larger than this


@dataclass
class OptimConfig:
    epochs: int = 200
    batch_size: int = 128  # per process; the global batch is this times the world size
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on parameters with more than one dimension only
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    gamma: float = 0.1


@dataclass
class RunConfig:
    model: str = "wrn-16-2"
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
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Raise a UserError for values no run can use; return self."""
        from kdlab.losses import loss_spec
        from kdlab.teacher import teacher_specs

        spec = loss_spec(self.kd.loss)
        spec.check(self.kd)
        specs = teacher_specs(self.kd.teacher)  # one form per meaning: a single teacher is a string
        self.kd.teacher = None if not specs else specs[0] if len(specs) == 1 else specs
        if spec.needs_teacher and not specs:
            raise UserError(f"--loss {self.kd.loss} needs a teacher: pass --teacher RUN_OR_CHECKPOINT")
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
        if self.kd.cache and self.data.augment == "autoaugment":
            raise UserError(
                "kd.cache keeps one teacher logit per crop/flip view, and AutoAugment's views are not a "
                "finite set: drop kd.cache or choose another data.augment"
            )
        from kdlab.data.select import check_selection

        check_selection(self.data.select, self.data.select_pass, bool(specs))
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
        seeds = {
            "seed": self.seed,
            **{f"data.{k}_seed": getattr(self.data, f"{k}_seed") for k in ("subset", "noise", "select")},
        }
        for name, seed in seeds.items():
            if not 0 <= seed <= MAX_SEED:
                raise UserError(f"{name}={seed} is outside [0, {MAX_SEED}] (2^32 - 1): choose e.g. --seed 0")
        ranges = [  # (key, value, valid, what it must be); NaN fails every comparison, so it is refused too
            ("optim.weight_decay", optim.weight_decay, 0 <= optim.weight_decay < math.inf, ">= 0 and finite, e.g. 5e-4"),
            ("optim.momentum", optim.momentum, 0 <= optim.momentum < 1, "in [0, 1), e.g. 0.9"),
            ("optim.gamma", optim.gamma, 0 < optim.gamma < math.inf, "positive and finite, e.g. 0.1"),
            ("optim.milestones", optim.milestones, all(0 <= m <= 1 for m in optim.milestones),
             "fractions of the epochs in [0, 1], e.g. [0.5, 0.75]"),
            ("data.num_workers", self.data.num_workers, self.data.num_workers >= 0, ">= 0 (0 loads in the main process)"),
            ("kd.cache_limit_gb", self.kd.cache_limit_gb, 0 < self.kd.cache_limit_gb < math.inf, "positive, e.g. 8"),
        ]  # fmt: skip
        for name, value, valid, accepted in ranges:
            if not valid:
                raise UserError(f"{name}={shown(value)} is invalid: it must be {accepted}")
        if optim.nesterov and optim.momentum == 0:
            raise UserError(
                "optim.nesterov=true needs optim.momentum > 0: set optim.momentum=0.9, or optim.nesterov=false"
            )
        for name, value in (("data.subset", self.data.subset), ("data.test_subset", self.data.test_subset)):
            if value is not None and value < 1:
                raise UserError(f"{name}={value} must be a positive number of images (or absent: all)")
        if self.out is not None and not self.out.strip():
            raise UserError("--out is empty: name a folder for the run")


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
    """Build ``cls`` from a nested dict, refusing unknown keys (listing the valid ones)."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = _fields(cls)
    unknown = [key for key in data if key not in hints]
    if unknown:
        key = str(unknown[0])[:200]
        raise UserError(
            f"unknown config key {shown(prefix + key)}{did_you_mean(prefix + key, [prefix + n for n in hints])}: "
            "valid keys are " + ", ".join(prefix + name for name in hints)
        )
    values = {}
    for key, value in data.items():
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = from_dict(value or {}, annotation, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, annotation, prefix + key)
    return cls(**values)


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
    return data


def build_config(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < ``base`` < YAML file < flags (nested dict, None values ignored) < ``--set`` overrides."""
    data: dict[str, Any] = dict(base or {})
    if config_file:
        data = merge(data, load_yaml(config_file))
    data = merge(data, _drop_none(flags or {}))
    for text in overrides or []:
        data = merge(data, parse_override(text))
    return from_dict(data).validate()


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
    "out", "device", "amp", "compile", "progress", "tensorboard", "channels_last", "deterministic", "sync_bn",
    "stack", "cuda_graph",
    "data.data_dir", "data.download", "data.num_workers", "kd.cache", "kd.cache_dir", "kd.cache_limit_gb",
)  # fmt: skip


def identity(config: RunConfig) -> dict[str, Any]:
    """The flattened config without ``RUNTIME_KEYS`` and without the loss hyperparameters its loss
    does not read (a CE run has no tau): what makes two runs the same computation."""
    from kdlab.losses import loss_fields, loss_spec

    unread = {f"kd.{field}" for field in loss_fields()} - {
        f"kd.{field}" for field in loss_spec(config.kd.loss).fields
    }
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
    from kdlab.teacher import teacher_specs

    return [Path(spec).name for spec in teacher_specs(value)]


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
