"""``kdlab reproduce --setting FILE.yaml``: the nine claims judged on your own models and data.

A setting names what the claims need; kdlab turns it into the seven experiments of the ``small``
protocol (the same recipes, grids, gates, statistics and report, docs/results/small/PROTOCOL.md),
with your dataset, teachers and students in place of Fashion-MNIST's::

    description: what this setting is
    imports: [my_models.py]                 # your models, datasets, losses (kdlab.plugins)
    data: {name: tensors, data_dir: data}   # any data.* keys of a run config
    seeds: 3                                # student seeds, paired within each teacher seed
    teacher_seeds: 3                        # every teacher trained this many times (>= 3 for a verdict)
    students: [mlp-s, mlp-xs, mlp-m]        # >= 3 models; the first is the student of C1-C4, C6-C9
    student: {optim: {epochs: 30, lr: 0.05, batch_size: 64}}   # every student's run settings
    teachers:
      large: {model: mlp-l, optim: {epochs: 60, lr: 0.1}}      # required: C1-C6, C9
      medium: {model: mlp-m, optim: {epochs: 60, lr: 0.1}}     # C8 (large -> medium -> student)
      poor: {model: mlp-l, optim: {epochs: 1, milestones: []}} # C7 (a poorly trained teacher)
    label_noise: symmetric:0.4              # C9 (null: C9 is not judged)
    alphas: [0.1, 0.4, 0.7, 1.0]            # C1's alpha axis (default: the small protocol's)

Each teacher entry holds run settings (``model``, ``optim``, ``seed``, ...) as a recipe's
teachers do, and is trained ``teacher_seeds`` times (its seed + K); the second member of C5's
ensemble is the large teacher with ``seed: SEED + teacher_seeds`` (1 + T with no seed set), so that
no teacher seed of one is a teacher seed of the other; C8's
medium-from-large is the medium teacher distilled from the large one with KL at tau = 3; C9's
teacher is the large one trained on the noisy labels. A claim whose part the setting leaves out is
reported as *not judged*, with the reason. Relative paths in the file (``imports``, ``data_dir``)
are taken from the file's folder.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.config import RunConfig, load_yaml, merge
from kdlab.errors import UserError, did_you_mean, shown
from kdlab.experiments.recipes import MAX_SEEDS, MAX_TEACHER_SEEDS, seed_count

SETTING_KEYS = (
    "description", "imports", "data", "seeds", "teacher_seeds", "students", "student", "teachers", "label_noise",
    "alphas",
)  # fmt: skip
ROLES = ("large", "medium", "poor")
DEFAULT_ALPHAS = [0.1, 0.4, 0.7, 1.0]  # the small preset's reduced grid
DEFAULT_NOISE = "symmetric:0.4"  # the small protocol's
DEFAULT_TEACHER_SEEDS = 3  # protocol v2's minimum for a verdict
# The small recipes' teachers, and what each becomes in a setting.
TEACHER_NAMES = {
    "convnet-32": "large",
    "convnet-32-b": "large-b",
    "convnet-32-poor": "poor",
    "convnet-8": "medium",
    "convnet-8-from-convnet-32": "medium-from-large",
    "convnet-32-noisy": "large-noisy",
}
# What each experiment needs from the setting beyond the large teacher and the students.
NEEDS = {"poor-teacher": "poor", "sequential": "medium", "label-noise": "label_noise"}
WHY = {
    "poor": "the setting names no poor teacher (teachers: poor: {model: ..., optim: {epochs: 1}})",
    "medium": "the setting names no medium teacher (teachers: medium: {model: ...}), which C8 distils through",
    "label_noise": "the setting turns label noise off (label_noise: null)",
}


@dataclass
class Setting:
    """A parsed setting file (see the module docstring)."""

    name: str
    path: Path
    sha256: str
    description: str
    imports: list[str]
    data: dict[str, Any]
    seeds: int
    students: list[str]
    student: dict[str, Any]
    teachers: dict[str, dict[str, Any]]
    label_noise: str | None
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    teacher_seeds: int = DEFAULT_TEACHER_SEEDS

    def missing(self, experiment: str) -> str | None:
        """Why this setting cannot run ``experiment`` (None when it can)."""
        need = NEEDS.get(experiment)
        if need is None:
            return None
        present = self.label_noise is not None if need == "label_noise" else need in self.teachers
        return None if present else WHY[need]

    def adjust(self, experiment: str, document: dict[str, Any]) -> dict[str, Any]:
        """The small recipe ``EXPERIMENT-small`` rewritten for this setting."""
        document = copy.deepcopy(document)
        noise = (document.get("data") or {}).get("label_noise")
        document["imports"] = list(self.imports)
        document["data"] = {
            **copy.deepcopy(self.data),
            **({"label_noise": self.label_noise} if noise else {}),
        }
        for key in [key for key in document if key in RunConfig.__dataclass_fields__]:
            if key not in ("imports", "data", "kd", "model"):
                del document[key]  # the small recipe's student settings give way to the setting's
        document.update(copy.deepcopy(self.student))
        document["model"] = self.students[0]
        kd = document.setdefault("kd", {})
        kd["teacher"] = _renamed(kd.get("teacher"))
        document["teachers"] = {
            TEACHER_NAMES[name]: self._teacher(TEACHER_NAMES[name], entry)
            for name, entry in (document.get("teachers") or {}).items()
        }
        grid = document.get("grid") or {}
        if "kd.teacher" in grid:
            grid["kd.teacher"] = [_renamed(value) for value in grid["kd.teacher"]]
        if experiment == "pairs":
            grid["model"] = list(self.students)
        if experiment == "grid":
            grid["kd.alpha"] = list(self.alphas)
        for entry in document.get("runs") or []:
            if "kd.teacher" in entry:
                entry["kd.teacher"] = _renamed(entry["kd.teacher"])
        document["teacher_seeds"] = self.teacher_seeds
        document["description"] = f"{document.get('description', '')} On setting {self.name}.".strip()
        return document

    def _teacher(self, name: str, small_entry: dict[str, Any]) -> dict[str, Any]:
        role = {"large-b": "large", "large-noisy": "large", "medium-from-large": "medium"}.get(name, name)
        entry = copy.deepcopy(self.teachers[role])
        if name == "large-b":
            # The ensemble's second member: other seeds than the large teacher's T (seed + K, K < T).
            entry["seed"] = int(entry.get("seed", 0)) + self.teacher_seeds
        if name == "medium-from-large":  # distilled from the large teacher as the small recipe does
            entry["kd"] = merge(small_entry.get("kd") or {}, {"teacher": "large"})
        return entry


def _renamed(value: Any) -> Any:
    if isinstance(value, list):
        return [TEACHER_NAMES.get(item, item) for item in value]
    return TEACHER_NAMES.get(value, value) if isinstance(value, str) else value


def load_setting(path: str | Path) -> Setting:
    """Read and check a setting file (one line naming the key and the fix for each mistake)."""
    path = Path(path)
    document = load_yaml(path)  # its `imports` already taken from the file's folder
    where = f"setting {path}"
    unknown = [key for key in document if key not in SETTING_KEYS]
    if unknown:
        key = str(unknown[0])[:80]
        raise UserError(
            f"{where}: unknown key {key!r}{did_you_mean(key, SETTING_KEYS)}: valid keys are {', '.join(SETTING_KEYS)}"
        )
    data = _mapping(document.get("data"), f"{where}: data", "data: {name: DATASET, ...}")
    if not data.get("name"):
        raise UserError(
            f"{where}: data.name is missing: name the dataset, e.g. data: {{name: tensors, data_dir: data}}"
        )
    if isinstance(data.get("data_dir"), str) and not Path(data["data_dir"]).expanduser().is_absolute():
        data["data_dir"] = str(path.parent / data["data_dir"])
    students = document.get("students")
    if not isinstance(students, list) or not all(isinstance(model, str) and model for model in students):
        raise UserError(
            f"{where}: students must be a list of model names, e.g. students: [mlp-16, mlp-32, mlp-64]"
        )
    if len(set(students)) < 3:
        raise UserError(
            f"{where}: students names {len(set(students))} distinct model(s): C5 compares losses across at least 3 "
            "students; name three or more"
        )
    teachers = _mapping(document.get("teachers"), f"{where}: teachers", "teachers: {large: {model: ...}}")
    for role, entry in teachers.items():
        if role not in ROLES:
            raise UserError(
                f"{where}: teacher {str(role)[:40]!r} is not a role{did_you_mean(str(role), ROLES)}: the roles are "
                f"{', '.join(ROLES)} (large is required)"
            )
        entry = _mapping(entry, f"{where}: teachers.{role}", f"teachers: {{{role}: {{model: ...}}}}")
        if not isinstance(entry.get("model"), str):
            raise UserError(f"{where}: teachers.{role} names no model: add model: NAME")
        if "kd" in entry:
            raise UserError(
                f"{where}: teachers.{role} sets kd: teachers are trained with cross-entropy; drop it"
            )
    if "large" not in teachers:
        raise UserError(f"{where}: teachers.large is missing: every claim but C3 needs the large teacher")
    student = _mapping(document.get("student") or {}, f"{where}: student", "student: {optim: {...}}")
    for key in ("model", "data", "kd", "imports", "seed", "out"):
        if key in student:
            raise UserError(f"{where}: student sets {key}, which the setting decides: drop it")
    verdict = " (3 or more for a verdict)"
    seeds = seed_count(document, "seeds", 3, MAX_SEEDS, where, verdict)
    teacher_seeds = seed_count(
        document, "teacher_seeds", DEFAULT_TEACHER_SEEDS, MAX_TEACHER_SEEDS, where, verdict
    )
    alphas = document.get("alphas", DEFAULT_ALPHAS)
    if not isinstance(alphas, list) or len(alphas) < 2:
        raise UserError(f"{where}: alphas must list two or more values in [0, 1], e.g. alphas: [0.1, 1.0]")
    noise = document.get("label_noise", DEFAULT_NOISE)
    if noise is not None and not isinstance(noise, str):
        raise UserError(f"{where}: label_noise={shown(noise)} must be e.g. symmetric:0.4, or null")
    if noise is not None:
        from kdlab.data import parse_label_noise

        parse_label_noise(noise)
    return Setting(
        name=path.stem,
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        description=str(document.get("description", "")).strip(),
        imports=list(document.get("imports") or []),
        data=data,
        seeds=seeds,
        students=list(dict.fromkeys(students)),
        student=student,
        teachers={role: dict(entry) for role, entry in teachers.items()},
        label_noise=noise,
        alphas=list(alphas),
        teacher_seeds=teacher_seeds,
    )


def _mapping(value: Any, where: str, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, e.g. {example}")
    return dict(value)
