"""``kdlab reproduce``: run what each claim C1-C9 of shared/PAPER.md needs, then judge every claim.

Each claim reads the runs of one recipe (C3 reads none: it is checked exactly on the loss functions):

| claims | recipe | folder under OUT |
|---|---|---|
| C1, C2 | grid-SCALE | main/ |
| C4 | logit-distance-SCALE | main/ (its alpha = 1 runs are the grid's own) |
| C6 | penultimate-SCALE (+ kdlab analyze) | main/, analysis/ |
| C5 | pairs-SCALE | pairs/ |
| C7 | poor-teacher-SCALE | poor-teacher/ |
| C8 | sequential-SCALE | sequential/ |
| C9 | label-noise-SCALE | label-noise/ |

All sweeps share ``OUT/teachers``, so a teacher of one name (the recipes of a scale define each name
once) is trained once. Finished runs are reused: running ``reproduce`` again only re-judges.
Presets: ``tiny`` (smoke test, about a minute: digits, 2 epochs, a 2 x 4 grid, one seed, so every
empirical verdict is inconclusive by rule), ``small`` (the *-small recipes, Fashion-MNIST, a 4 x 5
alpha x tau grid and 2 seeds: about 40-60 minutes on 2 CPU cores) and ``paper`` (the *-paper recipes
on CIFAR-100 as they are, 3 seeds: a GPU cluster's job; use ``kdlab sweep --shard`` to spread it).
The statistic and verdict rule of every claim are in ``kdlab.experiments.claims``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlab.analysis.records import RunRecord
from kdlab.config import merge, parse_override
from kdlab.errors import UserError, did_you_mean
from kdlab.experiments import claims as checks
from kdlab.experiments.recipes import SweepPlan, flatten, parse_recipe, recipe_document
from kdlab.experiments.report import write_report
from kdlab.experiments.sweep import run_sweep
from kdlab.runs import atomic_write_json, atomic_write_text

CLAIM_RECIPES: dict[str, str | None] = {
    "C1": "grid", "C2": "grid", "C3": None, "C4": "logit-distance", "C5": "pairs", "C6": "penultimate",
    "C7": "poor-teacher", "C8": "sequential", "C9": "label-noise",
}  # fmt: skip
FOLDERS = {"grid": "main", "logit-distance": "main", "penultimate": "main"}  # others: the recipe's name


def _reduce_grid(alphas: list[float]) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    def adjust(experiment: str, document: dict[str, Any]) -> dict[str, Any]:
        if experiment == "grid":
            document["grid"]["kd.alpha"] = alphas
        return document

    return adjust


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
        document["grid"]["model"] = ["convnet-4", "convnet-8"]
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


PRESETS = {
    "tiny": Preset(
        "tiny", "small", 1,
        "Smoke test: the *-small recipes shrunk to sklearn's 8x8 digits, 2 student epochs, 3 teacher epochs, "
        "a 2 x 4 alpha x tau grid; its numbers only show that the pipeline runs.",
        _tiny,
        threads=1,
    ),
    "small": Preset(
        "small", "small", 2,
        "The *-small recipes (Fashion-MNIST, 6,000 training images, full 10,000-image test set; convnet-32 teachers "
        "trained 15 epochs, convnet students 10 epochs) with the alpha x tau grid reduced to alpha in "
        "{0.1, 0.4, 0.7, 1.0}.",
        _reduce_grid([0.1, 0.4, 0.7, 1.0]),
    ),
    "paper": Preset(
        "paper", "paper", 3,
        "The *-paper recipes as they are: CIFAR-100, WRN-28-4 teacher, WRN students, 200 epochs.",
    ),
}  # fmt: skip


def parse_claims(text: str | None) -> list[str]:
    """``"C1,c5"`` -> ``["C1", "C5"]``; None or empty -> all nine."""
    if not text:
        return list(CLAIM_RECIPES)
    chosen = []
    for item in (part.strip().upper() for part in text.split(",")):
        if item not in CLAIM_RECIPES:
            raise UserError(
                f"--claims: unknown claim {item!r}: choose among {', '.join(CLAIM_RECIPES)}, e.g. --claims C1,C5"
            )
        if item not in chosen:
            chosen.append(item)
    return sorted(chosen, key=lambda claim: int(claim[1:]))


@dataclass
class Experiment:
    plan: SweepPlan
    students: list[RunRecord]
    teachers: dict[str, RunRecord]

    @property
    def runs(self) -> checks.Runs:
        return checks.Runs(self.students)

    @property
    def main_teacher(self) -> str:
        teacher = self.plan.recipe.base.get("kd", {}).get("teacher")
        return str(teacher)


def run_experiment(
    experiment: str, preset: Preset, out: Path, jobs: int, overrides: list[str], log: Callable[[str], None]
) -> Experiment:
    """Sweep ``EXPERIMENT-SCALE`` adjusted by the preset into ``out/FOLDER``; records of its runs."""
    name, document = recipe_document(f"{experiment}-{preset.scale}")
    document = preset.adjust(experiment, copy.deepcopy(document))
    for text in overrides:
        document = merge(document, parse_override(text))
    recipe = parse_recipe(document, name)
    log(f"reproduce: {name} ({', '.join(recipe.claims)})")
    plan, summaries = run_sweep(
        recipe, out / FOLDERS.get(experiment, experiment), jobs=jobs, seeds=preset.seeds,
        teachers_dir=out / "teachers", log=log,
    )  # fmt: skip
    students = [
        RunRecord(Path(run.config.out or ""), run.config, summaries[run.name]) for run in plan.students
    ]
    teachers = {
        key: RunRecord(Path(run.config.out or ""), run.config, summaries[run.name])
        for key, run in plan.teachers.items()
        if run.name in summaries
    }
    return Experiment(plan, students, teachers)


def _c6_analyses(experiment: Experiment, out: Path, log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    from kdlab.analysis.analyze import analyze_runs

    analyses = {}
    runs = experiment.runs
    teacher = experiment.teachers.get(experiment.main_teacher)
    for seed in runs.seeds:
        chosen = [
            runs.select(loss="kl", alpha=1.0, tau=3.0), runs.select(loss="kl", alpha=1.0, tau=20.0), runs.select(loss="mse"),
        ]  # fmt: skip
        folders = [str(record.path) for group in chosen for record in group if record.config.seed == seed]
        if teacher is None or len(folders) < 3:
            continue
        analyses[seed] = analyze_runs(
            folders, teacher=str(teacher.path), out=out / "analysis" / f"seed{seed}", log=log
        )
    return analyses


def _judge(
    claim: str, experiments: dict[str, Experiment], out: Path, log: Callable[[str], None]
) -> checks.ClaimResult:
    recipe = CLAIM_RECIPES[claim]
    if recipe is None:
        return checks.check_c3()
    experiment = experiments[recipe]
    runs = experiment.runs
    if claim == "C1":
        return checks.check_c1(runs)
    if claim == "C2":
        return checks.check_c2(runs)
    if claim == "C4":
        return checks.check_c4(runs)
    if claim == "C5":
        return checks.check_c5(runs, experiment.main_teacher)
    if claim == "C6":
        result = checks.check_c6(_c6_analyses(experiment, out, log))
        for name, caption in (("projection", "3-class projection"), ("penultimate_norm", "pdf of ||r||_2")):
            source = out / "analysis" / f"seed{min(runs.seeds)}" / f"{name}.png"
            if source.is_file():
                result.figures.append(
                    (f"{caption} (seed {min(runs.seeds)})", _publish(source, out, f"c6-{name}.png"))
                )
        return result
    if claim == "C7":
        return checks.check_c7(runs, experiment.teachers.get(experiment.main_teacher))
    if claim == "C8":
        # The recipe's three teachers: the students' default one (large), one distilled from another
        # teacher (large -> medium) and the remaining one (medium, trained alone).
        teachers = experiment.plan.recipe.teachers
        large = experiment.main_teacher
        derived = [name for name, entry in teachers.items() if flatten(entry).get("kd.teacher")]
        alone = [name for name in teachers if name != large and name not in derived]
        if len(derived) != 1 or len(alone) != 1:
            raise UserError(
                f"C8 needs the sequential recipe's three teachers (large, medium, medium distilled from large); "
                f"{experiment.plan.recipe.name} has {', '.join(teachers)}: do not --set other teachers"
            )
        return checks.check_c8(runs, large, alone[0], derived[0])
    if claim == "C9":
        return checks.check_c9(runs, experiment.plan.recipe.base.get("data", {}).get("label_noise"))
    raise AssertionError(claim)


def _publish(source: Path, out: Path, name: str) -> str:
    """Copy a figure into ``OUT/figures`` (what REPORT.md links); returns the relative link."""
    target = out / "figures" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"figures/{name}"


def reproduce(
    preset: str = "tiny",
    claims: str | list[str] | None = None,
    out: str | Path | None = None,
    jobs: int = 1,
    overrides: list[str] | None = None,
    seeds: int | None = None,
    log: Callable[[str], None] = print,
) -> list[checks.ClaimResult]:
    """Run (or reuse) the runs the chosen claims need, judge them, write ``OUT/REPORT.md`` + ``claims.json``.

    ``overrides`` (``--set``) edit every recipe document; ``seeds`` replaces the preset's seed count.
    """
    if preset not in PRESETS:
        raise UserError(
            f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}: choose tiny, small or paper"
        )
    chosen = PRESETS[preset]
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds} must be at least 1")
        chosen = dataclasses.replace(chosen, seeds=seeds)
    claim_list = parse_claims(",".join(claims) if isinstance(claims, list) else claims)
    out = Path(out or f"reproduce-{preset}")
    threads = torch.get_num_threads()
    if chosen.threads:
        torch.set_num_threads(chosen.threads)
    try:
        return _reproduce(chosen, claim_list, out, jobs, list(overrides or []), log)
    finally:
        torch.set_num_threads(threads)


def _reproduce(
    chosen: Preset,
    claim_list: list[str],
    out: Path,
    jobs: int,
    overrides: list[str],
    log: Callable[[str], None],
) -> list[checks.ClaimResult]:
    start = time.perf_counter()
    experiments: dict[str, Experiment] = {}
    for claim in claim_list:
        recipe = CLAIM_RECIPES[claim]
        if recipe is not None and recipe not in experiments:
            experiments[recipe] = run_experiment(recipe, chosen, out, jobs, overrides, log)
    results = [_judge(claim, experiments, out, log) for claim in claim_list]
    for folder in sorted({FOLDERS.get(name, name) for name in experiments}):
        plots = write_report(out / folder, log=log)["plots"]
        grid_result = next((r for r in results if r.claim in ("C1", "C2")), None)
        if folder == FOLDERS["grid"] and grid_result is not None:
            for name in plots:
                grid_result.figures.append(
                    (name.removesuffix(".png"), _publish(out / folder / name, out, name))
                )
    wall_time = time.perf_counter() - start
    records = {  # by folder: recipes of one folder share runs, and all share the teachers
        record.path: record
        for experiment in experiments.values()
        for record in [*experiment.students, *experiment.teachers.values()]
    }
    training_time = sum(
        r.metric("wall_time_s") for r in records.values() if not math.isnan(r.metric("wall_time_s"))
    )
    report = format_report(chosen, results, experiments, out, wall_time, training_time)
    atomic_write_text(out / "REPORT.md", report)
    atomic_write_json(
        out / "claims.json",
        {"preset": chosen.name, "wall_time_s": wall_time, "claims": [r.to_dict() for r in results]},
    )
    log(f"reproduce: wrote {out / 'REPORT.md'} ({wall_time:.0f}s)")
    for result in results:
        log(f"  {result.claim}: {result.verdict}")
    return results


def format_report(
    preset: Preset,
    results: list[checks.ClaimResult],
    experiments: dict[str, Experiment],
    out: Path,
    wall_time: float,
    training_time: float,
) -> str:
    """REPORT.md: setup, the verdict rule, a verdict table, then each claim's numbers and statistics."""
    students = len({record.path for e in experiments.values() for record in e.students})  # recipes share runs
    teachers = {record.path for e in experiments.values() for record in e.teachers.values()}
    lines = [
        f"# kdlab reproduce --preset {preset.name}",
        "",
        preset.description,
        "",
        f"Seeds per student setting: {preset.seeds}"
        + (" (with one seed every empirical verdict is inconclusive by rule)" if preset.seeds == 1 else "")
        + f". {students} student runs and {len(teachers)} teachers; this invocation took {wall_time / 60:.1f} min "
        f"(the runs' own training time, summed: {training_time / 60:.1f} min; finished runs are reused, not retrained).",
        "",
        "## How claims are judged",
        "",
        checks.VERDICT_RULE,
        "",
        "These are runs at the preset's scale: a claim that does not hold here may still hold in the paper's "
        "setting, and the other way round.",
        "",
        "## Verdicts",
        "",
        "| claim | verdict | statement |",
        "|---|---|---|",
    ]
    lines += [f"| {r.claim} | **{r.verdict}** | {r.statement} |" for r in results]
    for result in results:
        lines += ["", f"## {result.claim}: {result.verdict}", "", result.statement, ""]
        for note in result.notes:
            lines += [note, ""]
        for table in result.tables:
            lines += [table, ""]
        if result.comparisons:
            lines += ["Statistics:", ""]
            lines += [f"- {comparison.text()}" for comparison in result.comparisons]
            lines.append("")
        for caption, link in result.figures:
            lines += [f"![{caption}]({link})", ""]
    folders = sorted({FOLDERS.get(name, name) for name in experiments})
    if folders:
        lines += ["Run folders, each with its `kdlab report` (report.md, results.csv): "
                  + ", ".join(f"`{folder}/`" for folder in folders) + "; teachers in `teachers/`.", ""]  # fmt: skip
    return "\n".join(lines)
