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
once) is trained once. Finished runs are reused: running ``reproduce`` again only re-judges.
Presets: ``tiny`` (smoke test, about a minute: digits, 2 epochs, a 2 x 4 grid, one seed, so every
empirical verdict is inconclusive by rule), ``small`` (the *-small recipes on Fashion-MNIST, designed
to pass the regime gates on a CPU: docs/results/small/PROTOCOL.md) and ``paper`` (the *-paper recipes
on CIFAR-100 as they are, 3 seeds: a GPU cluster's job; use ``kdlab sweep --shard`` to spread it).
The gates are ``kdlab.experiments.regime``; the statistics and verdict rule ``kdlab.experiments.claims``.

``publish(OUT, DEST, readme)`` (``kdlab reproduce --publish DEST --readme README.md``) copies REPORT.md,
claims.json and the figures to DEST and rewrites the README's claims table from claims.json.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import subprocess
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
from kdlab.experiments.claims import Context, Experiment
from kdlab.experiments.recipes import parse_recipe, recipe_document
from kdlab.experiments.regime import GATES_TEXT, gates_table
from kdlab.experiments.report import REPORT_FILES, write_report
from kdlab.experiments.setting import Setting, load_setting
from kdlab.experiments.sweep import run_sweep
from kdlab.losses import needs_teacher
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
C6_FIGURES = ("c6-projection.png", "c6-penultimate_norm.png")  # copied from OUT/analysis by check_c6
README_START, README_END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"


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


def setting_preset(setting: Setting) -> Preset:
    """The small protocol's experiments, gates and rules on a user's setting (kdlab.experiments.setting)."""
    teachers = ", ".join(f"{role} {entry['model']}" for role, entry in setting.teachers.items())
    description = (
        f"Setting `{setting.path}` (SHA-256 `{setting.sha256[:16]}`): {setting.description or 'no description'} "
        f"Data: {setting.data.get('name')}; teachers: {teachers}; students: {', '.join(setting.students)} (the "
        f"first is the main student); imports: {', '.join(setting.imports) or 'none'}. Experiments, grids, gates and "
        "verdict rules are the small preset's (docs/results/small/PROTOCOL.md) with this setting's models and data."
    )
    return Preset(
        setting.name, "small", setting.seeds, description, setting.adjust,
        protocol="docs/results/small/PROTOCOL.md", missing=setting.missing, setting=setting,
    )  # fmt: skip


PRESETS = {
    "tiny": Preset(
        "tiny", "small", 1,
        "Smoke test: the *-small recipes shrunk to sklearn's 8x8 digits, 2 student epochs, 3 teacher epochs, "
        "a 2 x 4 alpha x tau grid, one seed; its numbers only show that the pipeline runs (one seed: every "
        "empirical verdict is inconclusive by rule, or outside the regime where a gate fails).",
        _tiny,
        threads=1,
    ),
    "small": Preset(
        "small", "small", 5,
        "The *-small recipes (Fashion-MNIST: 6,000 class-balanced training images of which 1,000 are held out "
        "for validation, the full 10,000-image test set, no augmentation; convnet-32 teachers trained 60 epochs, "
        "MLP students 30 epochs at lr 0.01) with the alpha x tau grid reduced to alpha in {0.1, 0.4, 0.7, 1.0}; "
        "teacher logits cached once per teacher (kd.cache, float16).",
        _reduce_grid([0.1, 0.4, 0.7, 1.0]),
        threads=1,
        protocol="docs/results/small/PROTOCOL.md",
        # Each teacher's logits computed once (no augmentation: one view per image), stored in float16
        # (relative rounding <= 4.9e-4) and shared by every student and seed: most of the CPU time saved.
        overrides=("kd.cache=true",),
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
) -> Experiment:
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


def reproduce(
    preset: str = "tiny",
    claims: str | list[str] | None = None,
    out: str | Path | None = None,
    jobs: int = 1,
    overrides: list[str] | None = None,
    seeds: int | None = None,
    log: Callable[[str], None] = print,
    setting: str | Path | None = None,
) -> list[checks.ClaimResult]:
    """Run (or reuse) the runs the chosen claims need, judge them, write ``OUT/REPORT.md`` + ``claims.json``.

    ``overrides`` (``--set``) edit every recipe document; ``seeds`` replaces the preset's seed count;
    ``setting`` (a setting file, kdlab.experiments.setting) replaces the preset by the user's setting.
    """
    if setting is not None:
        chosen = setting_preset(load_setting(setting))
    elif preset not in PRESETS:
        raise UserError(
            f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}: choose tiny, small or paper"
        )
    else:
        chosen = PRESETS[preset]
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


# Every figure reproduce may write (into OUT/figures/, then copied by --publish).
FIGURES = tuple(f"figures/{name}" for name in ("heatmap.png", "tau_curves.png", *C6_FIGURES))


def check_outputs(out: Path, preset: Preset, claim_list: list[str]) -> None:
    """Before any training: OUT and the files reproduce writes there (REPORT.md, claims.json,
    figures/, each sweep folder's report, the C6 analyses) may be written (``OutputFolder.check``)."""
    experiments = {checks.CLAIMS[claim].recipe for claim in claim_list} - {None}
    folders = sorted({FOLDERS.get(name, name) for name in experiments if name})
    # The folders reproduce makes inside OUT are real folders, never links that lead elsewhere.
    made = ["figures/", "teachers/", "analysis/", *(f"{folder}/" for folder in folders)]
    OutputFolder(out, "reproduce").check(["REPORT.md", "claims.json", *FIGURES, *made])
    for folder in folders:
        OutputFolder(out / folder, "report").check(REPORT_FILES)
    if "C6" in claim_list:
        for seed in range(preset.seeds):
            OutputFolder(out / "analysis", "analysis").check([f"seed{seed}/"])
            OutputFolder(out / "analysis" / f"seed{seed}", "analysis").check(ANALYSIS_FILES)


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
    skipped: dict[str, str] = {}  # claim -> why this setting cannot judge it
    for claim in claim_list:
        recipe = checks.CLAIMS[claim].recipe
        reason = chosen.missing(recipe) if recipe is not None else None
        if reason is not None:
            skipped[claim] = reason
            log(f"reproduce: {claim} not judged: {reason}")
        elif recipe is not None and recipe not in experiments:
            experiments[recipe] = run_experiment(recipe, chosen, out, jobs, overrides, log)
    context = Context(out, log)
    results = [
        checks.ClaimResult(claim, checks.CLAIMS[claim].statement, not_judged=skipped[claim])
        if claim in skipped
        else checks.judge(claim, experiments.get(checks.CLAIMS[claim].recipe or ""), context)
        for claim in claim_list
    ]
    for folder in sorted({FOLDERS.get(name, name) for name in experiments}):
        plots = write_report(out / folder, log=log)["plots"]
        grid_result = next((r for r in results if r.claim in ("C1", "C2")), None)
        if folder == FOLDERS["grid"] and grid_result is not None:
            for name in plots:
                grid_result.figures.append(
                    (name.removesuffix(".png"), context.publish(out / folder / name, name))
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
    teachers = teacher_rows(experiments)
    protocol = protocol_commit(chosen.protocol)
    report = format_report(chosen, results, experiments, teachers, protocol, wall_time, training_time)
    document = {
        "preset": chosen.name, "seeds": chosen.seeds, "wall_time_s": wall_time, "training_time_s": training_time,
        "protocol": protocol, "regime": regime_list(results), "teachers": teachers,
        "setting": None if chosen.setting is None else
        {"path": str(chosen.setting.path), "sha256": chosen.setting.sha256, "imports": chosen.setting.imports},
        "code": environment().get("git_commit"),
        "claims": [r.to_dict() for r in results],
    }  # fmt: skip
    OutputFolder(out, "reproduce").write_files(
        {"REPORT.md": report.encode(), "claims.json": json_text(document).encode()}
    )
    log(f"reproduce: wrote {out / 'REPORT.md'} ({wall_time:.0f}s)")
    for result in results:
        log(f"  {result.claim}: {result.verdict}")
    return results


def regime_list(results: list[checks.ClaimResult]) -> list[dict[str, Any]]:
    """Every distinct gate the claims were measured against, with the claims that read it."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        for gate in result.gates:
            entry = found.setdefault((gate.name, gate.scope), {**gate.to_dict(), "claims": []})
            entry["claims"].append(result.claim)
    return list(found.values())


def checkpoint_hash(path: Path) -> str | None:
    """SHA-256 of a file (None when absent)."""
    return file_sha256(path) if path.is_file() else None


def teacher_rows(experiments: dict[str, Experiment]) -> list[dict[str, Any]]:
    """Every teacher the experiments trained: model, accuracies, epochs and the hash of the ``last.pt``
    its students read."""
    teachers = {record.path: record for e in experiments.values() for record in e.teachers.values()}
    rows = []
    for path, record in sorted(teachers.items()):
        rows.append({
            "name": path.name, "model": record.config.model, "train_acc": record.metric("train_acc"),
            "test_acc_last": record.metric("test_acc_last"), "epochs": record.summary.get("epochs"),
            "train_images": record.summary.get("train_images"), "label_noise": record.config.data.label_noise,
            "kd": f"{record.config.kd.loss} from " + ", ".join(checks.teacher_names(record.config.kd.teacher))
            if needs_teacher(record.config.kd.loss) else None,
            "last_pt_sha256": checkpoint_hash(path / "checkpoints" / "last.pt"),
        })  # fmt: skip
    return rows


def protocol_commit(protocol: str | None) -> dict[str, str | None] | None:
    """The protocol document and the last commit that changed it (None outside a git checkout)."""
    if protocol is None:
        return None
    commit = None
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", protocol], cwd=root, capture_output=True, text=True, timeout=5,
        ).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return {"path": protocol, "commit": commit}


def _teachers_table(teachers: list[dict[str, Any]]) -> str:
    lines = [
        "| teacher | model | trained | train images | clean-train acc (%) | test acc last (%) | epochs | last.pt SHA-256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in teachers:
        trained = row["kd"] or "CE" + (f", {row['label_noise']} noise" if row["label_noise"] else "")
        sha = row["last_pt_sha256"]
        lines.append(
            f"| {row['name']} | {row['model']} | {trained} | {row['train_images']} | {row['train_acc']:.2f} | "
            f"{row['test_acc_last']:.2f} | {row['epochs']} | `{sha[:16] if sha else '-'}` |"
        )
    return "\n".join(lines)


def _short(info: dict[str, Any]) -> str:
    return (info.get("git_commit") or "unknown")[:12]


def run_commits(experiments: dict[str, Experiment]) -> dict[str | None, int]:
    """``{git commit: number of runs}`` over every run the experiments read (from each run's
    config.yaml ``run_info``): the code that produced the numbers, which a report names."""
    from kdlab.config import load_yaml

    paths = {record.path for e in experiments.values() for record in [*e.students, *e.teachers.values()]}
    commits: dict[str | None, int] = {}
    for path in sorted(paths):
        try:
            info = load_yaml(path / "config.yaml").get("run_info") or {}
        except UserError:
            info = {}
        commit = info.get("git_commit") if isinstance(info, dict) else None
        commits[commit] = commits.get(commit, 0) + 1
    return commits


def format_report(
    preset: Preset,
    results: list[checks.ClaimResult],
    experiments: dict[str, Experiment],
    teachers: list[dict[str, Any]],
    protocol: dict[str, str | None] | None,
    wall_time: float,
    training_time: float,
) -> str:
    """REPORT.md: setup, the gates, a verdict table, the rule, the teachers, then each claim in detail."""
    students = len({record.path for e in experiments.values() for record in e.students})  # recipes share runs
    title = (
        f"--setting {preset.setting.path.name}" if preset.setting is not None else f"--preset {preset.name}"
    )
    lines = [f"# kdlab reproduce {title}", "", preset.description, ""]
    commits = run_commits(experiments)
    if commits:
        made = ", ".join(
            f"`{commit[:12] if commit else 'unknown'}` ({count} runs)" for commit, count in commits.items()
        )
        lines += [
            f"Code: the runs were made by kdlab at commit {made}; this report by `{_short(environment())}`.",
            "",
        ]
    if protocol is not None:
        lines += [
            f"Protocol (gates, rules, presets and seeds, committed before the runs): `{protocol['path']}`, "
            f"commit `{protocol['commit'] or 'unknown'}`.",
            "",
        ]
    lines += [
        f"Seeds per student setting: {preset.seeds}. {students} student runs and {len(teachers)} teachers; this "
        f"invocation took {wall_time / 60:.1f} min (the runs' own training time, summed: {training_time / 60:.1f} min; "
        "finished runs are reused, not retrained).",
        "",
        "## The regime: gates",
        "",
        GATES_TEXT,
        "",
    ]
    unique = {(gate.name, gate.scope): gate for r in results for gate in r.gates}
    if unique:
        lines += [gates_table(list(unique.values())), ""]
    lines += [
        "## Verdicts",
        "",
        "| claim | verdict | evidence (effect, interval, n) | statement |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.claim} | **{r.verdict}** | {r.evidence()} | {r.statement} |" for r in results]
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
            "Every teacher the runs read (students read its `last.pt`; clean-train accuracy on the unaugmented "
            "training set at the end of training).",
            "",
            _teachers_table(teachers),
            "",
        ]
    for result in results:
        lines += [f"## {result.claim}: {result.verdict}", "", result.statement, ""]
        if result.gates:
            lines += [gates_table(result.gates), ""]
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


# --- publishing a run's report into the repository ---------------------------------------------------


def claims_table(claims_json: dict[str, Any]) -> str:
    """The README's claims table from a claims.json: the gates first (one row per set of runs, one column
    per gate), then one row per claim with its verdict and one-line evidence."""
    lines = []
    regime = claims_json.get("regime") or []
    if regime:
        names = list(dict.fromkeys(gate["name"] for gate in regime))
        scopes: dict[str, dict[str, str]] = {}
        for gate in regime:
            value = "n/a" if gate["value"] is None else f"{gate['value']:.2f}"
            state = "passes" if gate["passed"] else "**fails**"
            scopes.setdefault(gate["scope"], {})[gate["name"]] = f"{value} {state}"
        rules = {gate["name"]: gate["rule"] for gate in regime}
        lines += [
            "Gates: " + "; ".join(f"{name}: {rules[name]}" for name in names) + ".",
            "",
            "| runs | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for scope, cells in scopes.items():
            lines.append(f"| {scope} | " + " | ".join(cells.get(name, "") for name in names) + " |")
        lines.append("")
    lines += ["| claim | verdict | seeds | evidence (effect, interval, n) |", "|---|---|---|---|"]
    for claim in claims_json["claims"]:
        seeds = "-" if claim.get("n_seeds") is None else str(claim["n_seeds"])
        lines.append(f"| {claim['claim']} | {claim['verdict']} | {seeds} | {claim['evidence']} |")
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
    """Before any training: ``--publish DEST`` may receive REPORT.md, claims.json and figures/, and
    ``--readme`` may be rewritten. Writes nothing."""
    OutputFolder(dest, "published", flag="--publish").check(
        ["REPORT.md", "claims.json", "figures/", *FIGURES]
    )
    if readme is not None:
        check_readme(readme)


def publish(
    out: str | Path, dest: str | Path, readme: str | Path | None = None, log: Callable[[str], None] = print
) -> None:
    """Copy ``OUT/REPORT.md``, ``claims.json`` and ``figures/`` into ``dest``; with ``readme``, rewrite its
    claims table (between the markers) from claims.json. Everything is checked before the first copy:
    DEST follows ``OutputFolder``'s rules (only over files kdlab published there), the README
    ``check_readme``'s."""
    out, dest = Path(out), Path(dest)
    for name in ("REPORT.md", "claims.json"):
        if not (out / name).is_file():
            raise UserError(f"{out / name} does not exist: run kdlab reproduce --out {out} first")
    files = {name: read_regular_file(out / name) for name in ("REPORT.md", "claims.json")}
    # Only the figures kdlab made in OUT (its manifest), as it made them: a file of yours there is not copied.
    listed = OutputFolder(out, "reproduce").listed()
    for name in sorted(name for name in listed if name in FIGURES and (out / name).is_file()):
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
    log(f"reproduce: published REPORT.md, claims.json and figures to {dest}")
    if readme is not None and table is not None:
        update_readme(Path(readme), table)
        log(f"reproduce: rewrote the claims table of {readme}")
