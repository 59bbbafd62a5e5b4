"""The presets of ``kdlab reproduce`` (tiny, small, paper) and a user's setting as one: which recipes,
how each is adjusted (grids, epochs, seeds, teacher seeds, what is cut), and the claims chosen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.errors import UserError, did_you_mean
from kdlab.experiments.claims import CLAIMS
from kdlab.experiments.setting import Setting, load_setting

# The grid of the small preset (protocol v2): alphas for C1, taus for C2 (alpha = 1) and C1 (tau > 1).
SMALL_ALPHAS = [0.1, 0.4, 0.7, 1.0]
SMALL_TAUS = [1, 3, 5, 20, "inf"]
SMALL_C1_TAUS = [3, 20, "inf"]  # the taus of the alphas below 1


def _small(experiment: str, document: dict[str, Any]) -> dict[str, Any]:
    """Protocol v2's design and cuts of the *-small recipes (docs/results/small/PROTOCOL.md, section 6):
    3 teacher seeds; the grid's alphas below 1 at tau in {3, 20, inf} (C1 reads tau > 1), every tau at
    alpha = 1 (C2); the poor teacher's and the noisy teacher's students at the taus C7 and C9 read
    (1 and inf) and MSE; C5 without its ensemble teacher (section 11)."""
    document["teacher_seeds"] = SMALL_TEACHER_SEEDS
    if experiment == "grid":
        document["grid"] = {"kd.alpha": SMALL_ALPHAS[:-1], "kd.tau": SMALL_C1_TAUS}
        document["runs"] = [{"kd.alpha": 1.0, "kd.tau": tau} for tau in SMALL_TAUS] + list(
            document.get("runs") or []
        )
    elif experiment in ("poor-teacher", "label-noise"):
        document["grid"] = {"kd.tau": [1, "inf"]}
    elif experiment == "pairs":  # the ensemble teacher is cut (PROTOCOL.md section 11)
        document["runs"] = []
        document["teachers"].pop("convnet-32-b")
    return document


SMALL_TEACHER_SEEDS = 3
SMALL_SEEDS = 10
# Experiments cut from the small preset to fit 2 hours of wall time (PROTOCOL.md section 11).
SMALL_CUT = {
    "sequential": (
        "cut from the small preset to fit its 2 hours (PROTOCOL.md section 11): its medium teachers miss G1 "
        "(v1 and the pilots: 95.5-97.5% clean-train, against 98%), so C8 would be outside the regime"
    ),
}


def _tiny(experiment: str, document: dict[str, Any]) -> dict[str, Any]:
    """Digits, 2 student epochs (3 for teachers; a 1-epoch poor teacher keeps 1), smaller grids."""
    data = document.get("data") or {}
    document["data"] = {"name": "digits", **{k: data[k] for k in ("label_noise", "noise_seed") if k in data}}
    document["optim"] = {**(document.get("optim") or {}), "epochs": 2, "batch_size": 64}
    for entry in (document.get("teachers") or {}).values():
        optim = entry.setdefault("optim", {})
        optim["epochs"] = 1 if optim.get("epochs") == 1 else 3
    if experiment == "grid":
        document["grid"] = {"kd.alpha": [0.5, 1.0], "kd.tau": [1, 3, 20, "inf"]}
    elif experiment == "logit-distance":
        document["grid"] = {"kd.tau": [1, 3, 20, "inf"]}
    elif experiment == "pairs":
        document["grid"]["model"] = document["grid"]["model"][:2]
    return document


@dataclass(frozen=True)
class Preset:
    name: str
    scale: str  # the recipes used: EXPERIMENT-SCALE
    seeds: int
    description: str
    adjust: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda experiment, document: document
    # Torch threads while this preset runs (None: leave as set). Intra-op threads only add overhead to
    # 8x8-input convnets, and on a busy 2-core machine 2 threads made `tiny` 12x slower than 1 (157 s
    # against 13 s, measured).
    threads: int | None = None
    protocol: str | None = None  # the design document committed before the runs, relative to the repository
    overrides: tuple[str, ...] = ()  # --set edits of every recipe, before the user's
    # Why an experiment cannot run on this preset (None: it can): a setting may leave parts out.
    missing: Callable[[str], str | None] = lambda experiment: None
    setting: Setting | None = None  # kdlab reproduce --setting: the user's setting file
    teacher_seeds: int = 1  # declared: what the adjust function sets in every recipe


def setting_preset(setting: Setting) -> Preset:
    """The small protocol's experiments, gates and rules on a user's setting (kdlab.experiments.setting)."""
    teachers = ", ".join(f"{role} {entry['model']}" for role, entry in setting.teachers.items())
    description = (
        f"Setting `{setting.path}` (SHA-256 `{setting.sha256[:16]}`): {setting.description or 'no description'} "
        f"Data: {setting.data.get('name')}; teachers: {teachers}; students: {', '.join(setting.students)} (the "
        f"first is the main student); imports: {', '.join(setting.imports) or 'none'}; {setting.teacher_seeds} "
        "teacher seed(s). Experiments, grids, gates and verdict rules are the small preset's "
        "(docs/results/small/PROTOCOL.md) with this setting's models and data."
    )
    return Preset(
        setting.name, "small", setting.seeds, description, setting.adjust,
        protocol="docs/results/small/PROTOCOL.md", missing=setting.missing, setting=setting,
        teacher_seeds=setting.teacher_seeds,
    )  # fmt: skip


PRESETS = {
    "tiny": Preset(
        "tiny", "small", 1,
        "Smoke test: the *-small recipes shrunk to sklearn's 8x8 digits, 2 student epochs, 3 teacher epochs, "
        "a 2 x 4 alpha x tau grid, one seed, one teacher seed; its numbers only show that the pipeline runs "
        "(one teacher seed: every empirical verdict is inconclusive by rule, or outside the regime where a gate "
        "fails).",
        _tiny,
        threads=1,
    ),
    "small": Preset(
        "small", "small", SMALL_SEEDS,
        "Protocol v2: the *-small recipes (Fashion-MNIST: 6,000 class-balanced training images of which 1,000 are "
        "held out for validation, the full 10,000-image test set, no augmentation; convnet-32 teachers trained 60 "
        f"epochs, MLP students 30 epochs at lr 0.01), every teacher with {SMALL_TEACHER_SEEDS} teacher seeds, "
        f"{SMALL_SEEDS} student seeds paired within each; the alpha x tau grid reduced to alpha in {{0.1, 0.4, 0.7}} "
        "x tau in {3, 20, inf} plus every tau in {1, 3, 5, 20, inf} at alpha = 1; the poor and the noisy teachers' "
        "students at tau in {1, inf} and MSE; C5 without its ensemble teacher and C8 not run (both cut to fit 2 "
        "hours); teacher logits cached once per teacher (kd.cache, float16).",
        _small,
        threads=1,
        protocol="docs/results/small/PROTOCOL.md",
        # Each teacher's logits computed once (no augmentation: one view per image), stored in float16
        # (relative rounding <= 4.9e-4) and shared by every student and seed: most of the CPU time saved.
        overrides=("kd.cache=true",),
        missing=SMALL_CUT.get,
        teacher_seeds=SMALL_TEACHER_SEEDS,
    ),
    "paper": Preset(
        "paper", "paper", 3,
        "The *-paper recipes as they are: CIFAR-100, WRN-28-4 teacher, WRN students, 200 epochs, fp32.",
    ),
}  # fmt: skip


def parse_claims(text: str | None) -> list[str]:
    """``"C1,c5"`` -> ``["C1", "C5"]``; None or empty -> all nine."""
    if not text:
        return list(CLAIMS)
    chosen = []
    for item in (part.strip().upper() for part in text.split(",")):
        if item not in CLAIMS:
            raise UserError(
                f"--claims: unknown claim {item!r}: choose among {', '.join(CLAIMS)}, e.g. --claims C1,C5"
            )
        if item not in chosen:
            chosen.append(item)
    return sorted(chosen, key=lambda claim: int(claim[1:]))


def preset_label(preset: Preset) -> str:
    """What runs.csv's ``preset`` column names: the preset, or ``setting:NAME`` for a setting file."""
    return f"setting:{preset.name}" if preset.setting is not None else preset.name


def choose_preset(preset: str, setting: str | Path | None) -> Preset:
    if setting is not None:
        return setting_preset(load_setting(setting))
    if preset not in PRESETS:
        raise UserError(
            f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}: choose tiny, small or paper"
        )
    return PRESETS[preset]
