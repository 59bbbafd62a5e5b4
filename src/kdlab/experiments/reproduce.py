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
seeds: a GPU cluster's job; use ``kdlab sweep --shard`` to spread it).

One concept per module: the presets ``kdlab.experiments.presets``; the claims and their primary tests
``kdlab.experiments.claims``; the tests and verdict rule ``kdlab.experiments.verdicts``; the runs a
claim reads ``kdlab.experiments.evidence``; the gates ``kdlab.experiments.regime``; the report's tables
``kdlab.experiments.tables``; claims.json and REPORT.md ``kdlab.experiments.claims_report``; the
provenance (commits, protocol check, deviations) ``kdlab.experiments.provenance``; ``--publish`` and
``--readme`` ``kdlab.experiments.publish``. This module runs the sweeps and judges.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdlab.analysis.analyze import ANALYSIS_FILES
from kdlab.analysis.records import RunRecord
from kdlab.config import merge, parse_override
from kdlab.errors import UserError
from kdlab.experiments.claims import CLAIMS, judge_all
from kdlab.experiments.claims_report import judged_outputs
from kdlab.experiments.evidence import experiments_from_rows
from kdlab.experiments.presets import PRESETS, Preset, choose_preset, parse_claims, preset_label
from kdlab.experiments.publish import figure_names
from kdlab.experiments.recipes import parse_recipe, recipe_document
from kdlab.experiments.report import REPORT_FILES, write_report
from kdlab.experiments.runtable import RUNS_CSV, Row, Sweep, csv_text, parse_csv, rows_from_sweeps
from kdlab.experiments.sweep import run_sweep
from kdlab.experiments.verdicts import ClaimResult
from kdlab.runs import OutputFolder, json_text, read_regular_file

FOLDERS = {"grid": "main", "logit-distance": "main", "penultimate": "main"}  # others: the recipe's name


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
    preset: str | None = None,  # None: tiny, or with rejudge the preset its rows name
    claims: str | list[str] | None = None,
    out: str | Path | None = None,
    jobs: int = 1,
    overrides: list[str] | None = None,
    seeds: int | None = None,
    log: Callable[[str], None] = print,
    setting: str | Path | None = None,
    rejudge: str | Path | None = None,
) -> list[ClaimResult]:
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


def check_outputs(out: Path, preset: Preset, claim_list: list[str]) -> None:
    """Before any training: OUT and the files reproduce writes there (REPORT.md, claims.json, runs.csv,
    figures/, each sweep folder's report, the C6 analyses) may be written (``OutputFolder.check``)."""
    experiments = {CLAIMS[claim].recipe for claim in claim_list} - {None}
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
) -> list[ClaimResult]:
    start = time.perf_counter()
    sweeps: dict[str, Sweep] = {}
    skipped: dict[str, str] = {}  # claim -> why this setting cannot judge it
    for claim in claim_list:
        recipe = CLAIMS[claim].recipe
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
) -> list[ClaimResult]:
    """The chosen claims judged on runs.csv's rows (Holm across their primary tests)."""
    return judge_all(claim_list, experiments_from_rows(rows), skipped)


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
) -> list[ClaimResult]:
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
        recipe = CLAIMS[claim].recipe
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
