"""Recipes: one experiment as a YAML file, expanded into ordinary run configurations.

A recipe is a run configuration (the keys of ``kdlab.config.RunConfig``: the *base* every student
starts from) plus five recipe keys::

    description: what the experiment shows
    claims: [C1, C2]          # the claims of shared/PAPER.md it serves (informational)
    seeds: 1                  # default number of student seeds (seeds 0..K-1); --seeds overrides
    teacher_seeds: 1          # T > 1: each teacher is trained T times (TEACHERS/NAME-tsK, its seed + K)
    teachers:                 # named teachers, each trained once into TEACHERS/NAME and shared;
      large: {model: wrn-28-4}    # a teacher is the base without `kd`, plus its entry (loss ce)
      medium-from-large: {model: wrn-16-4, kd: {teacher: large, loss: kl, tau: 3}}
    grid:                     # dotted keys -> lists: the cartesian product, each point one run
      kd.alpha: [0.1, 0.5, 1.0]
      kd.tau: [1, 3, inf]
    runs:                     # extra single runs (their union with the grid)
      - {kd.loss: mse}

A recipe may start with ``extends: BASE`` (a shipped base such as ``_small``, or a YAML file beside
it): the recipe is merged over that base document, key by key.

A student's ``kd.teacher`` (a name or a list of names = an ensemble) names recipe teachers; anything
else is taken as the path of an existing run folder or checkpoint. Every student is ``base + one
grid point or run entry + seed``; its folder name is derived from what the entry sets plus the
canonical loss tokens, e.g. ``kl-a0.9-t20-s0``, ``convnet-4-mse-a1-s1``, ``from-t1+t2-kl-a1-t20-s0``.
The name depends only on the run itself, so the same run in two recipes gets the same name.

``teacher_seeds: T`` (default 1) trains every recipe teacher T times: teacher seed K (0..T-1) is the
teacher's own ``seed`` + K, in ``TEACHERS/NAME-tsK``; a teacher that reads another reads the one of
its own teacher seed. Every student that reads recipe teachers is planned once per teacher seed and
student seed (``...-tsK-sS``, reading the teachers of seed K): students are paired within a teacher
seed (same K, same S; arms differ in what the entry sets). Students whose loss reads no teacher (the
CE baselines: their teacher only serves the logit distance) are planned once per student seed,
reading teacher seed 0, as with T = 1, which changes nothing else.

``--set key=value`` edits the recipe document before expansion: ``--set optim.epochs=2`` changes the
base (and so every teacher that does not set its own epochs), ``--set teachers.large.optim.epochs=3``
one teacher, ``--set grid.kd.tau=[1,inf]`` one grid axis. Grid and run entries win over the base.

Shipped recipes are named ``EXPERIMENT-SCALE``: ``small`` (Fashion-MNIST, sized for a 2-core CPU) and
``paper`` (CIFAR-100, WRN-28-4 teacher, the paper's 200-epoch recipe); ``kdlab recipes`` lists them.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import (  # noqa: F401 - flatten, identity and RUNTIME_KEYS are used through this module too
    RUNTIME_KEYS,
    RunConfig,
    check_unread,
    declared_hyperparameters,
    flatten,
    format_value,
    from_dict,
    identity,
    load_yaml,
    loss_tokens,
    merge,
    parse_override,
    teacher_specs,
    unflatten,
)
from kdlab.errors import UserError, did_you_mean, shown
from kdlab.losses import loss_spec, needs_teacher
from kdlab.teacher import FOREIGN_PREFIX, with_teacher_data

RECIPE_KEYS = ("description", "claims", "seeds", "teacher_seeds", "teachers", "grid", "runs")
TEACHERS_FOLDER = "teachers"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")


@dataclass
class Recipe:
    """A parsed recipe: ``base`` is a nested config dict, ``grid`` maps dotted keys to value lists."""

    name: str
    description: str = ""
    claims: list[str] = field(default_factory=list)
    seeds: int = 1
    teacher_seeds: int = 1  # each recipe teacher trained this many times (seed + K), students paired within K
    base: dict[str, Any] = field(default_factory=dict)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)  # the YAML after --set, for the record


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: ``name`` is its folder relative to the sweep folder."""

    name: str
    config: RunConfig
    teachers: tuple[str, ...] = ()  # recipe teachers it reads (direct dependencies), as planned (NAME-tsK)
    role: str = ""  # a teacher run: its name in the recipe (without the -tsK of its teacher seed)
    # Teacher seed K of a teacher, or of the teachers a student reads (None: a student reading none).
    teacher_seed: int | None = None


@dataclass
class SweepPlan:
    """Teachers (in training order: every teacher after those it reads) and students (sorted by name)."""

    recipe: Recipe
    out: Path
    teachers: dict[str, PlannedRun]
    students: list[PlannedRun]

    def teachers_for(self, students: list[PlannedRun]) -> list[PlannedRun]:
        """The teachers ``students`` need, their own teachers included, in training order."""
        needed: set[str] = set()
        pending = [name for student in students for name in student.teachers]
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(self.teachers[name].teachers)
        return [run for name, run in self.teachers.items() if name in needed]


# --- finding and loading recipes ----------------------------------------------------------------


def _shipped(bases: bool = False) -> dict[str, Any]:
    """Shipped recipes by name; with ``bases``, only the shared bases (files named ``_NAME.yaml``)."""
    folder = resources.files("kdlab") / "recipes"
    if not folder.is_dir():
        return {}
    return {
        item.name[: -len(".yaml")]: item
        for item in folder.iterdir()
        if item.name.endswith(".yaml") and item.name.startswith("_") == bases
    }


def recipe_names() -> list[str]:
    """Names of the recipes shipped with kdlab, sorted."""
    return sorted(_shipped())


def recipe_document(spec: str | Path) -> tuple[str, dict[str, Any]]:
    """``(name, YAML document)`` of a shipped recipe (by name) or of a recipe file, its ``extends`` resolved."""
    path = Path(spec)
    shipped = _shipped()
    if str(spec) in shipped:
        return str(spec), _extend(yaml.safe_load(shipped[str(spec)].read_text()) or {}, str(spec), None)
    if path.suffix in (".yaml", ".yml") or path.exists():  # load_yaml refuses a FIFO, a folder
        return path.stem, _extend(load_yaml(path), path.stem, path.parent)
    raise UserError(
        f"unknown recipe '{spec}'{did_you_mean(str(spec), shipped)}: choose one of "
        f"{', '.join(sorted(shipped))} (see `kdlab recipes`), or pass a recipe .yaml file"
    )


def _extend(document: dict[str, Any], name: str, folder: Path | None) -> dict[str, Any]:
    """``extends: BASE`` merges the recipe over a base document: a shipped base (``_small`` is
    ``recipes/_small.yaml``) or a YAML file (relative to the recipe's folder). One level: a base does
    not extend another."""
    if not isinstance(document, dict) or "extends" not in document:
        return document
    document = dict(document)
    base_name = str(document.pop("extends"))
    bases = _shipped(bases=True)
    if base_name in bases:
        base = yaml.safe_load(bases[base_name].read_text()) or {}
    else:
        base_path = (folder or Path()) / base_name
        if not base_path.exists():
            raise UserError(
                f"recipe {name}: extends '{base_name}', which is neither a shipped base "
                f"({', '.join(sorted(bases)) or 'none'}) nor a file: fix the name or the path"
            )
        base = load_yaml(base_path)
    if not isinstance(base, dict) or "extends" in base:
        raise UserError(f"recipe {name}: its base '{base_name}' must be a mapping that extends nothing")
    return merge(base, document)


def load_recipe(
    spec: str | Path, overrides: list[str] | None = None, imports: list[str] | None = None
) -> Recipe:
    """A shipped recipe by name (``grid-small``) or a recipe YAML file, with ``--set`` overrides applied
    and ``imports`` (``--import``) added to the recipe's own (every run records them)."""
    name, document = recipe_document(spec)
    for text in overrides or []:
        document = merge(document, parse_override(text))
    if imports:
        from kdlab.plugins import resolve_import

        listed = document.get("imports") or []
        listed = listed if isinstance(listed, list) else [listed]
        document = {**document, "imports": list(dict.fromkeys([*listed, *map(resolve_import, imports)]))}
    return parse_recipe(document, name)


def seed_count(
    document: dict[str, Any], key: str, default: int, most: int, where: str, note: str = ""
) -> int:
    """``document[key]`` (``seeds``, ``teacher_seeds``): a whole number in 1..``most``, else one line."""
    value = document.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise UserError(f"{where}: {key}={shown(value)} must be a whole number in 1..{most}{note}")
    return value


def parse_recipe(document: dict[str, Any], name: str = "recipe") -> Recipe:
    """Split a recipe document into its base config and recipe keys, checking every key."""
    if not isinstance(document, dict):
        raise UserError(f"recipe {name} must be a mapping of keys, got {type(document).__name__}")
    config_keys = set(RunConfig.__dataclass_fields__)
    unknown = [key for key in document if key not in config_keys and key not in RECIPE_KEYS]
    if unknown:
        valid = sorted(config_keys) + list(RECIPE_KEYS)
        raise UserError(
            f"unknown recipe key '{unknown[0]}' in {name}{did_you_mean(str(unknown[0]), valid)}: valid keys are "
            + ", ".join(valid)
        )
    base = {key: value for key, value in document.items() if key in config_keys}
    from_dict(base)  # unknown or mistyped config keys fail here, with the valid ones listed
    teachers = document.get("teachers") or {}
    if not isinstance(teachers, dict):
        raise UserError(
            f"{name}: 'teachers' must map teacher names to configs, e.g. teachers: {{large: {{model: wrn-28-4}}}}"
        )
    for teacher in teachers:
        if not isinstance(teacher, str) or not _SAFE_NAME.match(teacher) or "." in teacher:
            raise UserError(
                f"{name}: teacher name {teacher!r} must be a folder name of letters, digits, '-', '_' or '+' (no dots)"
            )
    grid = flatten(_mapping(document.get("grid") or {}, f"{name}: grid"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(
                f"{name}: grid key '{key}' must map to a non-empty list of values, e.g. {key}: [1, 2]"
            )
    runs = document.get("runs") or []
    if not isinstance(runs, list):
        raise UserError(f"{name}: 'runs' must be a list of config entries, e.g. runs: [{{kd.loss: mse}}]")
    seeds = seed_count(document, "seeds", 1, MAX_SEEDS, name)
    teacher_seeds = seed_count(document, "teacher_seeds", 1, MAX_TEACHER_SEEDS, name)
    return Recipe(
        name=name,
        description=str(document.get("description", "")).strip(),
        claims=[str(claim) for claim in document.get("claims") or []],
        seeds=seeds,
        teacher_seeds=teacher_seeds,
        base=base,
        teachers={key: _mapping(value or {}, f"{name}: teacher {key}") for key, value in teachers.items()},
        grid=grid,
        runs=[flatten(_mapping(entry, f"{name}: runs entry")) for entry in runs],
        document=document,
    )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping of config keys, got {value!r}")
    return value


# --- expansion ------------------------------------------------------------------------------------


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def _teacher_token(value: Any) -> str:
    return "from-" + "+".join(_sanitise(Path(spec).name) for spec in teacher_specs(value))


def _entry_token(key: str, value: Any) -> str:
    """The folder-name token of one key an entry sets (loss, alpha, tau and seed are handled apart)."""
    if key == "model":
        return _sanitise(str(value))
    if key == "kd.teacher":
        return _teacher_token(value)
    if key == "data.label_noise":
        return "noise-" + _sanitise(str(value).replace("asymmetric:", "asym").replace("symmetric:", "sym"))
    if key == "data.select":
        return "select-" + _sanitise(str(value).replace(":", "-").replace(",", "+"))
    return _sanitise(key.rsplit(".", 1)[-1] + format_value(value))


def run_name(
    entry: dict[str, Any], config: RunConfig, with_seed: bool = True, teacher_seed: int | None = None
) -> str:
    """``[model][-from-TEACHER][-other entry keys]-LOSS[-hyperparameter tokens][-tsK]-sSEED``.

    The loss and its hyperparameter tokens come from the resolved config through the loss's
    registration (``kl-a0.9-t20``, ``mse-a1``, ``dkd-a1-b8-t4-w20``, ``ce``); the other tokens from
    the keys the grid point or run entry sets.
    """
    canonical = {"kd.loss", "seed", "out", *(f"kd.{field}" for field in declared_hyperparameters())}
    keys = [key for key in entry if key not in canonical]
    order = {"model": 0, "kd.teacher": 1}
    keys.sort(key=lambda key: (order.get(key, 2), key))
    tokens = [_entry_token(key, entry[key]) for key in keys]
    tokens += loss_tokens(config.kd)
    if teacher_seed is not None:  # a recipe of several teacher seeds: the one this student reads
        tokens.append(f"ts{teacher_seed}")
    if with_seed:
        tokens.append(f"s{config.seed}")
    return "-".join(tokens)


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not grid:
        return []
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def replica_name(name: str, teacher_seed: int | None) -> str:
    """The folder of teacher ``name`` at a teacher seed: ``NAME-tsK`` (None: ``NAME``, one teacher seed)."""
    return name if teacher_seed is None else f"{name}-ts{teacher_seed}"


def _resolve_teachers(
    value: Any, recipe: Recipe, teachers_dir: Path, where: str, teacher_seed: int | None = None
) -> tuple[Any, tuple[str, ...]]:
    """Recipe teacher names -> their folders (of ``teacher_seed``, see ``replica_name``); other entries
    must be existing paths. Returns (value, planned names of the recipe teachers read)."""
    if value is None:
        return None, ()
    resolved, names = [], []
    for item in teacher_specs(value):
        if item in recipe.teachers:
            resolved.append(str(teachers_dir / replica_name(item, teacher_seed)))
            names.append(replica_name(item, teacher_seed))
        elif Path(item).exists() or item.startswith(FOREIGN_PREFIX):
            resolved.append(item)  # a run folder, a checkpoint, or torchvision weights (kdlab.teacher)
        else:
            raise UserError(
                f"{where}: kd.teacher '{item}' is neither a teacher of recipe {recipe.name}"
                f"{did_you_mean(item, recipe.teachers)} (teachers: {', '.join(recipe.teachers) or 'none'}) "
                "nor an existing run folder or checkpoint"
            )
    return resolved, tuple(names)  # RunConfig.validate gives one teacher its single form


def _build(
    data: dict[str, Any], recipe: Recipe, teachers_dir: Path, where: str, teacher_seed: int | None = None
) -> tuple[RunConfig, tuple[str, ...]]:
    kd = dict(data.get("kd") or {})
    kd["teacher"], names = _resolve_teachers(kd.get("teacher"), recipe, teachers_dir, where, teacher_seed)
    try:
        document = {**data, "kd": kd}
        if (
            kd["teacher"] and not names
        ):  # a run folder outside the recipe: its data, unless the recipe names it
            document = with_teacher_data(document, {"name": "data.name", "image_size": "data.image_size"})
        config = from_dict(document).validate()
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    return config, names


MAX_SEEDS = 100  # planning a million seeds would take minutes before training anything
MAX_TEACHER_SEEDS = 20  # each multiplies every teacher and every student that reads one
# The most runs one sweep may plan ((grid points + runs entries) x seeds + teachers): grid-paper with
# 100 seeds is 5,101. Counted before the grid is expanded, so a grid of 10^6 points costs nothing.
MAX_PLANNED_RUNS = 10_000


def plan_sweep(
    recipe: Recipe, out: str | Path, seeds: int | None = None, teachers_dir: str | Path | None = None
) -> SweepPlan:
    """Expand ``recipe`` into student runs under ``out`` (seeds 0..K-1) and teacher runs under
    ``teachers_dir`` (default ``out/teachers``; sweeps that share it share teachers of equal name)."""
    out = Path(out)
    teachers_dir = Path(teachers_dir) if teachers_dir else out / TEACHERS_FOLDER
    count = seeds if seeds is not None else recipe.seeds
    if not 1 <= count <= MAX_SEEDS:
        raise UserError(
            f"--seeds {count} is outside 1..{MAX_SEEDS}: each seed repeats every run of the recipe; "
            "the paper uses a handful"
        )
    points = math.prod(len(values) for values in recipe.grid.values()) if recipe.grid else 0
    replicas = recipe.teacher_seeds
    planned = ((points + len(recipe.runs) or 1) * count + len(recipe.teachers)) * replicas
    if planned > MAX_PLANNED_RUNS:
        axes = " x ".join(f"{len(values)} {key}" for key, values in recipe.grid.items()) or "no grid"
        times = f" x {replicas} teacher seeds" if replicas > 1 else ""
        raise UserError(
            f"recipe {recipe.name} plans {planned} runs (grid {axes}, {len(recipe.runs)} runs entries, {count} "
            f"seed(s), {len(recipe.teachers)} teacher(s){times}), more than kdlab's limit of {MAX_PLANNED_RUNS}: "
            "shorten the grid's lists or split the recipe"
        )
    teachers = _plan_teachers(recipe, teachers_dir)
    entries = _grid_points(recipe.grid) + recipe.runs or [{}]
    students: dict[str, PlannedRun] = {}
    for entry in entries:
        for seed in range(count):
            data = merge(recipe.base, unflatten(entry))
            data["seed"] = seed
            where = f"recipe {recipe.name}, run {entry or 'base'}"
            config, names = _build(data, recipe, teachers_dir, where)
            check_unread(config, entry, f"{where}: ")  # a grid axis or run key its loss ignores
            # One student per teacher seed when it reads recipe teachers (paired within the seed); a student
            # whose loss reads no teacher (CE) trains alike for every K: once, reading teacher seed 0.
            replicated = [(config, names, 0 if names else None)]
            if names and replicas > 1:
                seeds_read = range(replicas) if needs_teacher(config.kd.loss) else range(1)
                replicated = [(*_build(data, recipe, teachers_dir, where, k), k) for k in seeds_read]
            for config, names, teacher_seed in replicated:
                name = run_name(entry, config, teacher_seed=teacher_seed if len(replicated) > 1 else None)
                config.out = str(out / name)
                previous = students.get(name)
                if previous is not None and identity(previous.config) != identity(config):
                    raise UserError(
                        f"recipe {recipe.name} defines run {name} twice with different settings: make the entries "
                        "differ in a key that names the run (model, kd.teacher, loss, alpha, tau)"
                    )
                students[name] = PlannedRun(name, config, names, teacher_seed=teacher_seed)
    _check_base_read(recipe, [run.config for run in [*teachers.values(), *students.values()]])
    return SweepPlan(recipe, out, teachers, [students[name] for name in sorted(students)])


def _check_base_read(recipe: Recipe, configs: list[RunConfig]) -> None:
    """The base's loss hyperparameters are shared by runs of several losses (a CE baseline ignores the
    KL temperature); one that no run of the recipe reads is a mistake."""
    read = {field for config in configs for field in loss_spec(config.kd.loss).fields}
    for key in flatten(recipe.base.get("kd") or {}):
        if key in declared_hyperparameters() and key not in read:
            losses = ", ".join(dict.fromkeys(config.kd.loss for config in configs))
            raise UserError(
                f"recipe {recipe.name}: kd.{key} is not read by the loss of any run ({losses}): drop it, or add "
                "runs of a loss that reads it"
            )


def _plan_teachers(recipe: Recipe, teachers_dir: Path) -> dict[str, PlannedRun]:
    """Teacher runs in training order; a teacher may read other teachers (sequential distillation)."""
    base = {key: value for key, value in recipe.base.items() if key != "kd"}
    default_seed = RunConfig.__dataclass_fields__["seed"].default
    planned: dict[str, PlannedRun] = {}
    for role, entry in recipe.teachers.items():
        for teacher_seed in range(recipe.teacher_seeds):
            replica = teacher_seed if recipe.teacher_seeds > 1 else None
            name = replica_name(role, replica)
            data = merge(base, unflatten(flatten(entry)))
            data.setdefault("kd", {}).setdefault("loss", "ce")
            data["seed"] = data.get("seed", default_seed) + teacher_seed
            where = f"recipe {recipe.name}, teacher {name}"
            config, names = _build(data, recipe, teachers_dir, where, replica)
            check_unread(config, flatten(entry), f"{where}: ")
            config.out = str(teachers_dir / name)
            planned[name] = PlannedRun(f"{TEACHERS_FOLDER}/{name}", config, names, role, teacher_seed)
    ordered: dict[str, PlannedRun] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise UserError(f"recipe {recipe.name}: teachers read each other in a cycle ({cycle}): break it")
        visiting.append(name)
        for dependency in planned[name].teachers:
            visit(dependency)
        visiting.pop()
        ordered[name] = planned[name]

    for name in planned:
        visit(name)
    return ordered


# --- shards ---------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``: shard indices run from 0 to N-1 (a SLURM array's task id)."""
    index, sep, count = str(text).partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (-1, 0)
    if not sep or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise UserError(f"--shard {text!r} is invalid: write I/N with 0 <= I < N, e.g. --shard 0/4")
    return shard


def select_shard(runs: list[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Runs ``index, index + N, ...`` of the name-sorted list: disjoint shards whose union is all runs."""
    ordered = sorted(runs, key=lambda run: run.name)
    return ordered[index::count]
