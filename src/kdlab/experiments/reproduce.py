"""``kdlab reproduce``: run what each claim C1-C9 of shared/PAPER.md needs, then judge every claim.

Each claim reads the runs of one recipe (``kdlab.experiments.claims.CLAIMS``; C3 reads none: it is
checked exactly on the loss functions):

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
once) is trained once per teacher seed. Finished runs are reused: running ``reproduce`` again only
re-judges. Every run the claims read becomes a row of ``OUT/runs.csv``
(``kdlab.experiments.runtable``), and the claims are judged on those rows as read back from that
text: ``kdlab reproduce --rejudge runs.csv`` judges them again without the run folders and writes the
same claims.json (its ``invocation`` block aside: who judged, when, how long).

Presets: ``tiny`` (smoke test, about a minute: digits, 2 epochs, a 2 x 4 grid, one seed, one
teacher seed, so every empirical verdict is inconclusive by rule), ``small`` (protocol v2,
docs/results/small/PROTOCOL.md: the *-small recipes on Fashion-MNIST, 3 teacher seeds and 10 student
seeds, cut to fit 2 hours on 2 cores) and ``paper`` (the *-paper recipes on CIFAR-100 as they are, 3
seeds: a GPU cluster's job; use ``kdlab sweep --shard`` to spread it). The gates are
``kdlab.experiments.regime``; the statistics and verdict rule ``kdlab.experiments.claims``; the
provenance (commits, protocol check, deviations) ``kdlab.experiments.provenance``.

``publish(OUT, DEST, readme)`` (``kdlab reproduce --publish DEST --readme README.md``) copies REPORT.md,
claims.json, runs.csv and the figures to DEST and rewrites the README's claims table from claims.json.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlab.analysis.analyze import ANALYSIS_FILES
from kdlab.analysis.records import RunRecord
from kdlab.config import merge, parse_override
from kdlab.errors import UserError, did_you_mean
from kdlab.experiments import claims as checks
from kdlab.experiments import provenance
from kdlab.experiments.recipes import parse_recipe, recipe_document
from kdlab.experiments.regime import GATES_TEXT, gates_table
from kdlab.experiments.report import REPORT_FILES, write_report
from kdlab.experiments.runtable import Row, Sweep, csv_text, parse_csv, rows_from_sweeps
from kdlab.experiments.setting import Setting, load_setting
from kdlab.experiments.sweep import run_sweep
from kdlab.runs import (
    OutputFolder,
    environment,
    file_sha256,
    json_text,
    read_regular_file,
    read_user_file,
    rewrite_user_file,
)

FOLDERS = {"grid": "main", "logit-distance": "main", "penultimate": "main"}  # others: the recipe's name
C6_FIGURES = ("c6-projection.png", "c6-penultimate_norm.png")  # copied from OUT/analysis
README_START, README_END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"
RUNS_CSV = "runs.csv"
CLAIMS_FORMAT = "kdlab-claims-v2"
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
        return list(checks.CLAIMS)
    chosen = []
    for item in (part.strip().upper() for part in text.split(",")):
        if item not in checks.CLAIMS:
            raise UserError(
                f"--claims: unknown claim {item!r}: choose among {', '.join(checks.CLAIMS)}, e.g. --claims C1,C5"
            )
        if item not in chosen:
            chosen.append(item)
    return sorted(chosen, key=lambda claim: int(claim[1:]))


def run_experiment(
    experiment: str, preset: Preset, out: Path, jobs: int, overrides: list[str], log: Callable[[str], None]
) -> Sweep:
    """Sweep ``EXPERIMENT-SCALE`` adjusted by the preset into ``out/FOLDER``; records of its runs."""
    name, document = recipe_document(f"{experiment}-{preset.scale}")
    document = preset.adjust(experiment, copy.deepcopy(document))
    for text in [*preset.overrides, *overrides]:
        edit = parse_override(text)
        named = edit.get("teachers")
        if isinstance(named, dict) and set(named) - set(document.get("teachers") or {}):
            continue  # --set teachers.NAME... edits the recipes that define NAME, not the others
        document = merge(document, edit)
    recipe = parse_recipe(document, name)
    log(f"reproduce: {name} ({', '.join(recipe.claims)})")
    folder = FOLDERS.get(experiment, experiment)
    plan, summaries = run_sweep(
        recipe, out / folder, jobs=jobs, seeds=preset.seeds, teachers_dir=out / "teachers", log=log,
    )  # fmt: skip
    records = {
        run.name: RunRecord(Path(run.config.out or ""), run.config, summaries[run.name])
        for run in [*plan.teachers.values(), *plan.students]
        if run.name in summaries
    }
    return Sweep(experiment, folder, plan, records)


def reproduce(
    preset: str | None = "tiny",
    claims: str | list[str] | None = None,
    out: str | Path | None = None,
    jobs: int = 1,
    overrides: list[str] | None = None,
    seeds: int | None = None,
    log: Callable[[str], None] = print,
    setting: str | Path | None = None,
    rejudge: str | Path | None = None,
) -> list[checks.ClaimResult]:
    """Run (or reuse) the runs the chosen claims need, judge them, write ``OUT/REPORT.md``, ``claims.json``
    and ``runs.csv``.

    ``overrides`` (``--set``) edit every recipe document; ``seeds`` replaces the preset's seed count;
    ``setting`` (a setting file, kdlab.experiments.setting) replaces the preset by the user's setting;
    ``rejudge`` (a runs.csv, or the folder holding one) judges its rows instead of running anything.
    """
    if rejudge is not None:
        return rejudge_runs(rejudge, preset, claims, out, log, setting)
    chosen = choose_preset(preset or "tiny", setting)
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds} must be at least 1")
        chosen = dataclasses.replace(chosen, seeds=seeds)
    claim_list = parse_claims(",".join(claims) if isinstance(claims, list) else claims)
    out = Path(out or f"reproduce-{chosen.name}")
    check_outputs(out, chosen, claim_list)
    threads = torch.get_num_threads()
    if chosen.threads:
        torch.set_num_threads(chosen.threads)
    try:
        with OutputFolder(out, "reproduce").lock():  # one reproduce writes OUT at a time
            return _reproduce(chosen, claim_list, out, jobs, list(overrides or []), log)
    finally:
        torch.set_num_threads(threads)


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


# The figures reproduce may write into OUT/figures/ (then copied by --publish): one heatmap and one set
# of tau curves per teacher seed (-1, -2, ... when several), and the C6 figures.
FIGURE_PATTERNS = ("heatmap.png", "heatmap-*.png", "tau_curves.png", "tau_curves-*.png", *C6_FIGURES)


def figure_names(teacher_seeds: int) -> list[str]:
    suffixes = [""] if teacher_seeds == 1 else [f"-{i + 1}" for i in range(teacher_seeds)]
    plots = [f"{name}{suffix}.png" for name in ("heatmap", "tau_curves") for suffix in suffixes]
    return [f"figures/{name}" for name in (*plots, *C6_FIGURES)]


def is_figure(name: str) -> bool:
    """Whether ``name`` (relative to OUT) is a figure kdlab reproduce draws."""
    folder, _, file = name.partition("/")
    return (
        folder == "figures" and "/" not in file and any(fnmatch.fnmatchcase(file, p) for p in FIGURE_PATTERNS)
    )


def check_outputs(out: Path, preset: Preset, claim_list: list[str]) -> None:
    """Before any training: OUT and the files reproduce writes there (REPORT.md, claims.json, runs.csv,
    figures/, each sweep folder's report, the C6 analyses) may be written (``OutputFolder.check``)."""
    experiments = {checks.CLAIMS[claim].recipe for claim in claim_list} - {None}
    folders = sorted({FOLDERS.get(name, name) for name in experiments if name})
    figures = figure_names(preset.teacher_seeds)
    # The folders reproduce makes inside OUT are real folders, never links that lead elsewhere.
    made = ["figures/", "teachers/", "analysis/", *(f"{folder}/" for folder in folders)]
    OutputFolder(out, "reproduce").check(["REPORT.md", "claims.json", RUNS_CSV, *figures, *made])
    for folder in folders:
        OutputFolder(out / folder, "report").check(REPORT_FILES)
    if "C6" in claim_list:
        for cell in analysis_cells(preset):
            OutputFolder(out / "analysis", "analysis").check([f"{cell}/"])
            OutputFolder(out / "analysis" / cell, "analysis").check(ANALYSIS_FILES)


def analysis_cells(preset: Preset) -> list[str]:
    """C6's analysis folders under OUT/analysis: one per (teacher seed, student seed), ``tsK-sS``."""
    return [f"ts{k}-s{s}" for k in range(preset.teacher_seeds) for s in range(preset.seeds)]


def c6_analyses(
    sweep: Sweep, out: Path, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, float]], list[tuple[str, Path]]]:
    """``kdlab analyze`` of each (teacher seed, student seed)'s KL tau=3, KL tau=20 and MSE students against
    their teacher: the per-run numbers runs.csv holds (by run folder) and the figures of the first cell."""
    from kdlab.analysis.analyze import analyze_runs

    found: dict[str, dict[str, float]] = {}
    figures: list[tuple[str, Path]] = []
    students = [(planned, sweep.records.get(planned.name)) for planned in sweep.plan.students]
    cells = sorted(
        {(p.teacher_seed, p.config.seed) for p, record in students if record and p.teacher_seed is not None}
    )
    arms = (("kl", 3.0), ("kl", 20.0), ("mse", None))
    for teacher_seed, seed in cells:
        chosen = []
        for loss, tau in arms:
            chosen += [
                record for planned, record in students
                if record is not None and not record.diverged and (planned.teacher_seed, planned.config.seed) == (teacher_seed, seed)
                and planned.config.kd.loss == loss and (tau is None or (planned.config.kd.tau, planned.config.kd.alpha) == (tau, 1.0))
            ]  # fmt: skip
        if len(chosen) < 3:
            continue
        teacher = chosen[0].config.kd.teacher
        cell = out / "analysis" / f"ts{teacher_seed}-s{seed}"
        analysis = analyze_runs([str(r.path) for r in chosen], teacher=teacher, out=cell, log=log)
        for record in chosen:
            entry = analysis["runs"].get(str(record.path), {})
            found[str(record.path)] = {
                "penultimate_norm": entry.get("penultimate_norm", {}).get("mean", math.nan),
                "w1_to_teacher": entry.get("penultimate_norm_w1_to_teacher", math.nan),
                "projection_distance": entry.get("projection_distance_to_teacher", math.nan),
                "agreement": entry.get("agreement", math.nan),
            }
        teacher_entry = analysis["runs"].get("teacher", {})
        found[str(Path(str(teacher)))] = {
            "penultimate_norm": teacher_entry.get("penultimate_norm", {}).get("mean", math.nan)
        }
        if not figures:
            figures = [(f"{caption} (teacher seed {teacher_seed}, seed {seed})", cell / f"{name}.png")
                       for name, caption in (("projection", "3-class projection"), ("penultimate_norm", "pdf of ||r||_2"))]  # fmt: skip
    return found, figures


def _reproduce(
    chosen: Preset,
    claim_list: list[str],
    out: Path,
    jobs: int,
    overrides: list[str],
    log: Callable[[str], None],
) -> list[checks.ClaimResult]:
    start = time.perf_counter()
    sweeps: dict[str, Sweep] = {}
    skipped: dict[str, str] = {}  # claim -> why this setting cannot judge it
    for claim in claim_list:
        recipe = checks.CLAIMS[claim].recipe
        reason = chosen.missing(recipe) if recipe is not None else None
        if reason is not None:
            skipped[claim] = reason
            log(f"reproduce: {claim} not judged: {reason}")
        elif recipe is not None and recipe not in sweeps:
            sweeps[recipe] = run_experiment(recipe, chosen, out, jobs, overrides, log)
    analyses: dict[str, dict[str, float]] = {}
    figures: dict[str, list[tuple[str, str]]] = {}  # claim -> (caption, link)
    outputs = OutputFolder(out, "reproduce")
    if "penultimate" in sweeps:
        analyses, c6_figures = c6_analyses(sweeps["penultimate"], out, log)
        for caption, source in c6_figures:
            if source.is_file():
                outputs.copy_file(f"figures/c6-{source.name}", source)
                figures.setdefault("C6", []).append((caption, f"figures/c6-{source.name}"))
    for folder in sorted({sweep.folder for sweep in sweeps.values()}):
        plots = write_report(out / folder, log=log)["plots"]
        if folder == FOLDERS["grid"] and "grid" in sweeps:
            for name in plots:
                outputs.copy_file(f"figures/{name}", out / folder / name)
                for claim in ("C1", "C2"):
                    figures.setdefault(claim, []).append((name.removesuffix(".png"), f"figures/{name}"))
    text = csv_text(rows_from_sweeps(list(sweeps.values()), preset_label(chosen), analyses))
    rows = parse_csv(text, out / RUNS_CSV)  # judged as read back: what --rejudge reads
    results = judge_rows(rows, claim_list, skipped)
    for result in results:
        result.figures += figures.get(result.claim, [])
    wall_time = time.perf_counter() - start
    report, document = judged_outputs(chosen, results, rows, wall_time, None)
    outputs.write_files(
        {RUNS_CSV: text.encode(), "REPORT.md": report.encode(), "claims.json": json_text(document).encode()}
    )
    log(f"reproduce: wrote {out / 'REPORT.md'}, claims.json and {RUNS_CSV} ({wall_time:.0f}s)")
    for result in results:
        log(f"  {result.claim}: {result.verdict}")
    return results


def judge_rows(
    rows: list[Row], claim_list: list[str], skipped: dict[str, str] | None = None
) -> list[checks.ClaimResult]:
    """The chosen claims judged on runs.csv's rows (Holm across their primary tests)."""
    return checks.judge_all(claim_list, checks.experiments_from_rows(rows), skipped)


def _runs_csv(source: str | Path) -> tuple[Path, bytes, list[Row]]:
    """``--rejudge``'s runs.csv (a file, or the folder holding one): its path, bytes and rows, of one preset."""
    path = Path(source)
    path = path / RUNS_CSV if path.is_dir() else path
    if not path.exists():
        raise UserError(
            f"--rejudge {path} does not exist: pass the runs.csv kdlab reproduce wrote (beside claims.json)"
        )
    data = read_regular_file(path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UserError(
            f"--rejudge {path} is not a text file: pass the runs.csv kdlab reproduce wrote"
        ) from None
    rows = parse_csv(text, path)
    if not rows:
        raise UserError(f"--rejudge {path} holds no runs: pass the runs.csv kdlab reproduce wrote")
    named = sorted({row.text("preset") for row in rows})
    if len(named) != 1:
        raise UserError(
            f"--rejudge {path} mixes the runs of presets {', '.join(named)}: judge one preset's runs.csv"
        )
    return path, data, rows


def rejudged_preset(source: str | Path) -> str:
    """The preset (or ``setting:NAME``) whose runs a runs.csv holds."""
    return _runs_csv(source)[2][0].text("preset")


def rejudge_runs(
    source: str | Path,
    preset: str | None,
    claims: str | list[str] | None,
    out: str | Path | None,
    log: Callable[[str], None] = print,
    setting: str | Path | None = None,
) -> list[checks.ClaimResult]:
    """``kdlab reproduce --rejudge runs.csv``: judge the rows of a runs.csv again (no run folder read, no
    run trained) and write REPORT.md, claims.json and a copy of runs.csv into OUT. The preset (or
    setting) is the one the rows name; ``preset`` must agree with it when given."""
    path, data, rows = _runs_csv(source)
    named = rows[0].text("preset")
    if named.startswith("setting:") and setting is None:
        raise UserError(
            f"--rejudge {path} holds runs of setting {named.removeprefix('setting:')}: pass its setting file with "
            "--setting"
        )
    if setting is not None:
        chosen = choose_preset("", setting)
    elif named not in PRESETS:
        raise UserError(f"--rejudge {path} names preset {named!r}, which this kdlab does not have: choose a runs.csv "
                        "of tiny, small or paper")  # fmt: skip
    elif preset is not None and preset != named:
        raise UserError(
            f"--rejudge {path} holds runs of preset {named}, not {preset}: drop --preset, or pass --preset {named}"
        )
    else:
        chosen = PRESETS[named]
    if preset_label(chosen) != named:
        raise UserError(
            f"--rejudge {path} holds runs of {named}, not of setting {chosen.name}: pass the setting file they "
            "were made with"
        )
    claim_list = parse_claims(",".join(claims) if isinstance(claims, list) else claims)
    out = Path(out or f"reproduce-{chosen.name}")
    outputs = OutputFolder(out, "reproduce")
    outputs.check(["REPORT.md", "claims.json", RUNS_CSV], {RUNS_CSV: data})
    start = time.perf_counter()
    skipped = {}
    for claim in claim_list:
        recipe = checks.CLAIMS[claim].recipe
        reason = chosen.missing(recipe) if recipe is not None else None
        if reason is not None:
            skipped[claim] = reason
    results = judge_rows(rows, claim_list, skipped)
    wall_time = time.perf_counter() - start
    report, document = judged_outputs(chosen, results, rows, wall_time, str(path))
    outputs.write_files(
        {RUNS_CSV: data, "REPORT.md": report.encode(), "claims.json": json_text(document).encode()}
    )
    log(f"reproduce: rejudged {len(rows)} runs of {path} into {out / 'claims.json'}")
    for result in results:
        log(f"  {result.claim}: {result.verdict}")
    return results


# --- what a judging writes: claims.json and REPORT.md --------------------------------------------------


def judged_outputs(
    preset: Preset, results: list[checks.ClaimResult], rows: list[Row], wall_time: float, rejudged: str | None
) -> tuple[str, dict[str, Any]]:
    """``(REPORT.md text, claims.json document)``. Everything in claims.json but its ``invocation`` block
    is computed from the rows, the protocol's git history and the code's rules: a rejudge of the same
    runs.csv writes it again byte for byte."""
    root = provenance.repository()
    runs = provenance.runs_provenance(rows)
    protocol = None
    if preset.protocol is not None:
        stamps = [provenance.RunStamp.of(row) for row in rows]
        protocol = provenance.check_protocol(root, preset.protocol, stamps)
        protocol["deviations"] = provenance.deviations(
            root, protocol["commit"], [c["commit"] for c in runs["commits"]]
        )
    caveat = None
    if protocol is not None and protocol["status"] != provenance.PASSED:
        caveat = f"protocol check {protocol['status']}"
    judge_env = environment()
    judging = {
        "commit": judge_env.get("git_commit"), "dirty": judge_env.get("git_dirty"), "torch": judge_env.get("torch"),
        "wall_time_s": wall_time, "rejudged_from": rejudged,
        # What this invocation's preset (and --seeds) declared: a rejudge does not know a --seeds of the run.
        "declared": {"teacher_seeds": preset.teacher_seeds, "student_seeds": preset.seeds},
        "rule_changes_since_protocol": [] if protocol is None else provenance.deviations(
            root, protocol["commit"], [judge_env.get("git_commit")], provenance.RULE_PATHS),
    }  # fmt: skip
    family = [test for result in results for test in result.primary if test.holm_p is not None]
    document = {
        "format": CLAIMS_FORMAT, "protocol_version": checks.PROTOCOL_VERSION, "preset": preset.name,
        "observed": {
            "teacher_seeds": len({row.teacher_seed for row in rows if row.role == "teacher"}),
            "student_seeds": len({row.seed for row in rows if row.role == "student"}),
        },
        "protocol": protocol, "runs": runs, "holm_family": len(family),
        "regime": regime_list(results), "teachers": teacher_rows(rows),
        "setting": None if preset.setting is None else
        {"path": str(preset.setting.path), "sha256": preset.setting.sha256, "imports": preset.setting.imports},
        "claims": [{**result.to_dict(), "caveat": caveat if reads_runs(result) else None} for result in results],
        "invocation": judging,
    }  # fmt: skip
    report = format_report(preset, results, rows, document)
    return report, document


def reads_runs(result: checks.ClaimResult) -> bool:
    """Whether a verdict rests on runs (a protocol check that fails concerns it): not C3's exact checks, not
    a claim the setting cannot judge."""
    return result.not_judged is None and result.exact_verdict is None


def regime_list(results: list[checks.ClaimResult]) -> list[dict[str, Any]]:
    """Every distinct gate the claims were measured against, with the claims that read it."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        for gate in result.gates:
            entry = found.setdefault((gate.name, gate.scope), {**gate.to_dict(), "claims": []})
            if result.claim not in entry["claims"]:
                entry["claims"].append(result.claim)
    return list(found.values())


def checkpoint_hash(path: Path) -> str | None:
    """SHA-256 of a file (None when absent)."""
    return file_sha256(path) if path.is_file() else None


def teacher_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """Every teacher the claims read (from its runs.csv row): model, teacher seed, accuracies, epochs and
    the hash of the ``last.pt`` its students read."""
    found = []
    for row in sorted(
        (r for r in rows if r.role == "teacher"), key=lambda r: (r.name, r.teacher_seed, r.run)
    ):
        found.append({
            "name": row.run, "role": row.name, "teacher_seed": row.teacher_seed, "seed": row.seed, "model": row.model,
            "train_acc": row.metric("train_acc"), "test_acc_last": row.metric("test_acc_last"),
            "epochs": row.metric("epochs"), "train_images": row.metric("train_images"),
            "label_noise": row.text("label_noise") or None,
            "kd": f"{row.loss} from " + ", ".join(row.teacher) if row.teacher else None,
            "last_pt_sha256": row.text("last_pt_sha256") or None,
        })  # fmt: skip
    return found


def _teachers_table(teachers: list[dict[str, Any]]) -> str:
    lines = [
        "| teacher | model | teacher seed (seed) | trained | train images | clean-train acc (%) | test acc last (%) "
        "| epochs | last.pt SHA-256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in teachers:
        trained = row["kd"] or "CE" + (f", {row['label_noise']} noise" if row["label_noise"] else "")
        sha = row["last_pt_sha256"]
        lines.append(
            f"| {row['name']} | {row['model']} | {row['teacher_seed']} ({row['seed']}) | {trained} | "
            f"{row['train_images']:.0f} | {row['train_acc']:.2f} | {row['test_acc_last']:.2f} | {row['epochs']:.0f} | "
            f"`{sha[:16] if sha else '-'}` |"
        )
    return "\n".join(lines)


def _minutes(seconds: float | None) -> str:
    return "unknown" if seconds is None or seconds != seconds else f"{seconds / 60:.1f} min"


def provenance_lines(document: dict[str, Any]) -> list[str]:
    """REPORT.md's provenance section: code, versions, devices, times, the protocol check, deviations."""
    runs, protocol, judging = document["runs"], document["protocol"], document["invocation"]
    judged_by = (judging["commit"] or "unknown")[:12]
    state = {True: "uncommitted changes", False: "clean", None: "state unknown"}[judging["dirty"]]
    lines = [
        "## Provenance",
        "",
        f"- Runs: {runs['count']} (students and teachers), made by the code at "
        f"{provenance.describe_commits(runs['commits'])}; torch {', '.join(runs['torch'])}; "
        f"device {', '.join(runs['devices'])}.",
        f"- Wall time of the runs: {_minutes(runs['elapsed_s'])} from the first start ({runs['first_start'] or 'unknown'}) "
        f"to the last finish ({runs['last_finish'] or 'unknown'}), across invocations; each run's own wall time "
        f"summed: {_minutes(runs['summed_run_wall_time_s'])} (students trained in lockstep each count their group's "
        "time).",
        f"- This invocation ({'judging only' if judging['rejudged_from'] else 'training what was missing, then judging'}): "
        f"code `{judged_by}` ({state}), torch {judging['torch']}, "
        f"{judging['wall_time_s']:.1f} s"
        + (
            f", rejudged from `{judging['rejudged_from']}` (no run folder read)"
            if judging["rejudged_from"]
            else ""
        )
        + ".",
    ]
    if protocol is not None:
        commit = (protocol["commit"] or "unknown")[:12]
        lines.append(
            f"- Protocol `{protocol['path']}` at commit `{commit}` ({protocol['committed_at'] or 'unknown'}); "
            f"check: **{protocol['status']}**: {protocol['text']}."
        )
        deviations = protocol["deviations"]
        lines.append(
            f"- Deviations: {len(deviations)} commit(s) between the protocol and the runs' code touch "
            f"{', '.join(provenance.DEVIATION_PATHS)}" + (":" if deviations else ".")
        )
        lines += [
            f"  - `{entry['commit'][:12]}` {entry['time']}: {entry['subject']} ({', '.join(entry['files'])})"
            for entry in deviations
        ]
        changed = judging["rule_changes_since_protocol"]
        if changed:
            lines.append(
                f"- The rules changed after the protocol, up to the judging code: {len(changed)} commit(s):"
            )
            lines += [
                f"  - `{entry['commit'][:12]}` {entry['time']}: {entry['subject']}" for entry in changed
            ]
    return [*lines, ""]


def format_report(
    preset: Preset, results: list[checks.ClaimResult], rows: list[Row], document: dict[str, Any]
) -> str:
    """REPORT.md: setup and provenance, the gates, a verdict table, the rule, the teachers, then each claim."""
    students = sum(row.role == "student" for row in rows)
    teachers = document["teachers"]
    title = (
        f"--setting {preset.setting.path.name}" if preset.setting is not None else f"--preset {preset.name}"
    )
    lines = [f"# kdlab reproduce {title}", ""]
    protocol = document["protocol"]
    if protocol is not None and protocol["status"] != provenance.PASSED:
        lines += [
            f"> **PROTOCOL CHECK {protocol['status'].upper()}: {protocol['text']}.** Every verdict below carries this.",
            "",
        ]
    lines += [preset.description, ""]
    declared, observed = document["invocation"]["declared"], document["observed"]
    lines += [
        f"Judged under protocol v{checks.PROTOCOL_VERSION} (`kdlab.experiments.claims`). Declared by the preset: "
        f"{declared['teacher_seeds']} teacher seed(s) per teacher, {declared['student_seeds']} student seed(s) paired "
        f"within each; found in the runs: {observed['teacher_seeds']} and {observed['student_seeds']}. "
        f"{students} student runs and {len(teachers)} teacher runs were read (runs.csv beside this file "
        f"holds every one; `kdlab reproduce --rejudge runs.csv` judges them again). Holm's correction ran across "
        f"{document['holm_family']} primary test(s).",
        "",
        *provenance_lines(document),
        "## The regime: gates",
        "",
        GATES_TEXT,
        "",
    ]
    unique = {(gate.name, gate.scope): gate for r in results for gate in r.gates}
    if unique:
        failing = [gate for gate in unique.values() if not gate.passed]
        if failing:
            lines += ["Failing gates:", ""]
            lines += [f"- {gate.text()} [{gate.scope}]" for gate in failing]
            lines.append("")
        lines += [gates_table(list(unique.values())), ""]
    caveat = (
        " (protocol check not passed)"
        if protocol is not None and protocol["status"] != provenance.PASSED
        else ""
    )
    lines += [
        "## Verdicts",
        "",
        "Each verdict rests on the claim's primary test(s) only; secondary tests are in each claim's section.",
        "",
        "| claim | verdict | primary test: effect, interval, Holm p, seeds | statement |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.claim} | **{r.verdict}**{caveat if reads_runs(r) else ''} | {r.evidence()} | {r.statement} |"
        for r in results
    ]
    lines += [
        "",
        "## How claims are judged",
        "",
        checks.VERDICT_RULE,
        "",
        "These are runs at the preset's scale: a claim that does not hold here may still hold in the paper's "
        "setting, and the other way round.",
        "",
    ]
    if teachers:
        lines += [
            "## Teachers",
            "",
            "Every teacher the runs read, at every teacher seed (students read its `last.pt`; clean-train accuracy "
            "on the unaugmented training set at the end of training).",
            "",
            _teachers_table(teachers),
            "",
        ]
    for result in results:
        lines += [f"## {result.claim}: {result.verdict}", "", result.statement, ""]
        primary = checks.CLAIMS[result.claim].primary
        if primary:
            lines += [f"Primary test (declared): {primary}.", ""]
        if result.gates:
            lines += [gates_table(result.gates), ""]
        summary = result.summary()
        if summary:
            lines += [f"Summary: {summary}.", ""]
        for note in result.notes:
            lines += [note, ""]
        for table in result.tables:
            lines += [table, ""]
        tests = [*result.primary, *result.secondary]
        if tests:
            lines += ["Statistics:", ""]
            lines += [f"- {test.text()}" for test in tests]
            lines.append("")
        for caption, link in result.figures:
            lines += [f"![{caption}]({link})", ""]
    folders = sorted({row.folder for row in rows if row.role == "student"})
    if folders:
        lines += ["Run folders (not committed; runs.csv holds what the claims read), each with its `kdlab report`: "
                  + ", ".join(f"`{folder}/`" for folder in folders) + "; teachers in `teachers/`.", ""]  # fmt: skip
    return "\n".join(lines)


# --- publishing a run's report into the repository ---------------------------------------------------


def _worst_gates(regime: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{scope: {gate: "value passes|**fails**"}}``, the teacher seeds of one scope (``[tsK]``) folded into
    one row holding each gate's worst value (the lowest: every gate is ``value >= or > threshold``)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for gate in regime:
        scope = re.sub(r" \[ts\d+\]", "", gate["scope"])
        grouped.setdefault(scope, {}).setdefault(gate["name"], []).append(gate)
    cells: dict[str, dict[str, str]] = {}
    for scope, gates in grouped.items():
        for name, measured in gates.items():
            values = [gate["value"] for gate in measured if gate["value"] is not None]
            value = "n/a" if len(values) < len(measured) else f"{min(values):.2f}"
            state = "passes" if all(gate["passed"] for gate in measured) else "**fails**"
            worst = f" (worst of {len(measured)})" if len(measured) > 1 else ""
            cells.setdefault(scope, {})[name] = f"{value} {state}{worst}"
    return cells


def claims_table(claims_json: dict[str, Any]) -> str:
    """The README's claims table from a claims.json: the gates first (one row per set of runs, the teacher
    seeds of a teacher folded into their worst value; one column per gate), then one row per claim with
    its verdict, its seeds (teacher x student) and its primary test's one-line evidence. Reads the
    claims.json of protocol v1 too (one seed count per claim)."""
    lines = []
    regime = claims_json.get("regime") or []
    if regime:
        names = list(dict.fromkeys(gate["name"] for gate in regime))
        rules = {gate["name"]: gate["rule"] for gate in regime}
        lines += [
            "Gates: " + "; ".join(f"{name}: {rules[name]}" for name in names) + ".",
            "",
            "| runs | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for scope, cells in _worst_gates(regime).items():
            lines.append(f"| {scope} | " + " | ".join(cells.get(name, "") for name in names) + " |")
        lines.append("")
    version = claims_json.get("protocol_version", 1)
    lines += [
        "| claim | verdict | seeds (teacher x student) | evidence: primary test, effect, interval, Holm p |",
        "|---|---|---|---|",
    ]
    for claim in claims_json["claims"]:
        if version >= 2:
            teachers, students = claim.get("n_teacher_seeds"), claim.get("n_student_seeds")
            seeds = "-" if teachers is None else f"{teachers} x {students}"
        else:
            seeds = "-" if claim.get("n_seeds") is None else f"1 x {claim['n_seeds']}"
        verdict = claim["verdict"] + (f" ({claim['caveat']})" if claim.get("caveat") else "")
        lines.append(f"| {claim['claim']} | {verdict} | {seeds} | {claim['evidence']} |")
    return "\n".join(lines)


def check_readme(readme: str | Path) -> tuple[str, str, str]:
    """The README's text split around its claims table, ``(before, table, after)``, markers excluded:
    a one-line UserError unless it is a regular file kdlab may rewrite in place (not a link, FIFO or
    device; see ``kdlab.runs.read_user_file``) holding each marker once, the start marker first."""
    readme = Path(readme)
    text, _ = read_user_file(readme, "--readme")
    starts, ends = text.count(README_START), text.count(README_END)
    need = f"--readme {readme} needs one {README_START} and one {README_END} line around its claims table"
    if starts != 1 or ends != 1:
        raise UserError(f"{need} (it holds {starts} and {ends}): put each marker there once")
    if text.index(README_END) < text.index(README_START):
        raise UserError(f"{need}, in this order (its end marker comes first): swap them")
    before, rest = text.split(README_START)
    table, after = rest.split(README_END)
    return before, table, after


def update_readme(readme: str | Path, table: str) -> None:
    """Replace what lies between the README's claims-table markers with ``table``: the file is edited
    in place, atomically, keeping its mode; everything outside the markers is kept byte for byte."""
    readme = Path(readme)
    before, old_table, after = check_readme(readme)
    text = f"{before}{README_START}{old_table}{README_END}{after}"
    rewrite_user_file(readme, text, f"{before}{README_START}\n{table}\n{README_END}{after}", "--readme")


def check_publish(dest: str | Path, readme: str | Path | None = None) -> None:
    """Before any training: ``--publish DEST`` may receive REPORT.md, claims.json, runs.csv and figures/
    (any figure name kdlab draws, whatever the number of teacher seeds), and ``--readme`` may be
    rewritten. Writes nothing."""
    target = OutputFolder(dest, "published", flag="--publish")
    target.check(["REPORT.md", "claims.json", RUNS_CSV, "figures/", *figure_names(1)])
    figures = Path(dest) / "figures"
    if figures.is_dir() and not figures.is_symlink():  # heatmap-2.png, ...: checked like the others
        target.check(
            [
                f"figures/{entry.name}"
                for entry in sorted(figures.iterdir())
                if is_figure(f"figures/{entry.name}")
            ]
        )
    if readme is not None:
        check_readme(readme)


def publish(
    out: str | Path, dest: str | Path, readme: str | Path | None = None, log: Callable[[str], None] = print
) -> None:
    """Copy ``OUT/REPORT.md``, ``claims.json``, ``runs.csv`` and ``figures/`` into ``dest``; with ``readme``, rewrite its
    claims table (between the markers) from claims.json. Everything is checked before the first copy:
    DEST follows ``OutputFolder``'s rules (only over files kdlab published there), the README
    ``check_readme``'s."""
    out, dest = Path(out), Path(dest)
    for name in ("REPORT.md", "claims.json"):
        if not (out / name).is_file():
            raise UserError(f"{out / name} does not exist: run kdlab reproduce --out {out} first")
    files = {name: read_regular_file(out / name) for name in ("REPORT.md", "claims.json")}
    if (out / RUNS_CSV).is_file():  # the evidence: claims.json is recomputed from it by --rejudge
        files[RUNS_CSV] = read_regular_file(out / RUNS_CSV)
    # Only the figures kdlab made in OUT (its manifest), as it made them: a file of yours there is not copied.
    listed = OutputFolder(out, "reproduce").listed()
    for name in sorted(name for name in listed if is_figure(name) and (out / name).is_file()):
        data = read_regular_file(out / name)
        if hashlib.sha256(data).hexdigest() != listed[name]["sha256"]:
            raise UserError(
                f"{out / name} was changed since kdlab reproduce wrote it, and --publish copies only kdlab's "
                f"own figures: run kdlab reproduce --out {out} again to redraw it"
            )
        files[name] = data
    target = OutputFolder(dest, "published", flag="--publish")
    target.check(files, files)
    table = None
    if readme is not None:
        check_readme(readme)
        try:
            table = claims_table(json.loads(files["claims.json"]))
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{out / 'claims.json'} is damaged (not the claims kdlab reproduce writes): run kdlab reproduce "
                f"--out {out} again"
            ) from None
    target.write_files(files)
    log(f"reproduce: published {', '.join(name for name in files if '/' not in name)} and figures to {dest}")
    if readme is not None and table is not None:
        update_readme(Path(readme), table)
        log(f"reproduce: rewrote the claims table of {readme}")
