"""``kdlab report DIR``: a sweep folder as ``report.md``, ``results.csv``, ``gates.json`` and plots.

The report opens with the regime gates (``kdlab.experiments.regime``) wherever the runs allow them: for
every teacher the runs read and every setting of CE runs (not themselves teachers) trained on that
teacher's data, G1-G3 over the CE runs' seeds; a teacher without them gets a "no gates" line.

Runs are grouped by everything in their config but the seed (and settings that do not change the
result: device, progress, output folder...); each group shows mean +- standard deviation over its
seeds of last-epoch test accuracy, test accuracy at the best-validation epoch (runs with a validation
split), best-epoch test accuracy (its epoch is chosen on the test set: shown, never plotted), train
accuracy and the logit distance to the teacher. Within each context (runs that differ only in the
loss and its hyperparameters) a grid over two hyperparameters of one loss (KL: alpha x tau) is drawn
as a heatmap of last-epoch test accuracy and as accuracy curves against the second one, and a
context holding several losses gets a comparison table, one column per loss. Which keys are loss hyperparameters,
and how a loss is labelled, come from the loss registrations (kdlab.losses).
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.analysis.plots import plot_heatmap, plot_tau_curves, tau_label
from kdlab.analysis.records import (
    RunRecord,
    find_runs,
    read_run,
    run_identity,
    run_label,
    split_diverged,
    without_copies,
)
from kdlab.analysis.stats import Stat
from kdlab.config import LossParam, format_value, identity, loss_label, loss_params
from kdlab.errors import UserError
from kdlab.experiments.regime import CE_LOSS, GATES_TEXT, Gate, check_gates, gates_table, scope_text
from kdlab.losses import LOSSES, LossSpec, loss_fields, loss_spec
from kdlab.runs import OutputFolder, RunFolder, json_text
from kdlab.teacher import FOREIGN_PREFIX, teacher_specs

METRICS = ("test_acc_last", "test_acc_at_best_val", "test_acc_best", "train_acc", "logit_distance")
TITLES = {
    "test_acc_last": "test acc last (%)", "test_acc_at_best_val": "test acc at best val (%)",
    "test_acc_best": "test acc best-on-test (%)", "train_acc": "train acc (%)", "logit_distance": "logit distance",
}  # fmt: skip
ACCURACY = "test_acc_last"  # what the plots and the comparison table show
SHOWN_KEYS = ("model", "kd.teacher", "kd.loss")


def loss_keys() -> tuple[str, ...]:
    """``kd.loss`` and every hyperparameter key of a registered loss: what a context leaves out."""
    return ("kd.loss", *(f"kd.{field}" for field in loss_fields()))


@dataclass
class Group:
    """Runs equal in everything but the seed; ``key`` holds the flattened identifying settings."""

    key: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(run.config.seed for run in self.runs)

    def stat(self, metric: str) -> Stat:
        return Stat.of([run.metric(metric) for run in self.runs])

    @property
    def context(self) -> tuple[tuple[str, str], ...]:
        """The key without the loss and its hyperparameters: runs of one context differ only in how they distil."""
        excluded = loss_keys()
        return tuple((key, repr(value)) for key, value in self.key.items() if key not in excluded)

    @property
    def spec(self) -> LossSpec:
        return loss_spec(self.key["kd.loss"])

    @property
    def label(self) -> str:
        """The loss's report label, e.g. 'KL tau=20' (from the group's first run)."""
        return loss_label(self.runs[0].config.kd)

    @property
    def params(self) -> tuple[LossParam, ...]:
        return loss_params(self.key["kd.loss"])


def teacher_name(value: Any, root: Path | None = None) -> str | None:
    """A teacher path as a short name: relative to ``root`` when inside it, else its folder name."""
    if value is None:
        return None
    names = []
    for item in teacher_specs(value):
        path = Path(item)
        try:
            names.append(str(path.resolve().relative_to(root.resolve())) if root else path.name)
        except ValueError:
            names.append(path.name)
    return "+".join(names)


def group_key(record: RunRecord, root: Path | None = None) -> dict[str, Any]:
    key = {name: value for name, value in identity(record.config).items() if name != "seed"}
    key["kd.teacher"] = teacher_name(key.get("kd.teacher"), root)
    return key  # identity() already left out the hyperparameters the loss does not read


def group_runs(records: list[RunRecord], root: Path | None = None) -> list[Group]:
    """Runs grouped by ``group_key``, groups sorted by teacher, model, loss (registration order) and its
    hyperparameters.

    A teacher is named by its folder (:func:`teacher_name`); where runs name one folder name but read
    other checkpoints (two folders ``teacher`` in different places, or a teacher trained again in place),
    the checkpoints' recorded SHA-256 tells them apart: each becomes a group of its own, named
    ``NAME (sha256 PREFIX)``, never one mean over different teachers."""
    keys = [group_key(record, root) for record in records]
    read: dict[str | None, set[str | None]] = {}
    for record, key in zip(records, keys, strict=True):
        read.setdefault(key["kd.teacher"], set()).add(record.teacher_sha256)
    groups: dict[str, Group] = {}
    for record, key in zip(records, keys, strict=True):
        name = key["kd.teacher"]
        if name is not None and len(read[name]) > 1:
            digest = record.teacher_sha256
            shown = "+".join(part[:12] for part in digest.split("+")) if digest else "not recorded"
            key["kd.teacher"] = f"{name} (sha256 {shown})"
        groups.setdefault(repr(sorted(key.items(), key=lambda item: item[0])), Group(key)).runs.append(record)

    registered = LOSSES.registered()

    def order(group: Group) -> tuple[Any, ...]:
        key = group.key
        loss = key["kd.loss"]
        settings = tuple((0, 0) if key.get(name) is None else (1, key[name]) for name in loss_keys()[1:])
        return (
            str(key.get("kd.teacher") or ""),
            key["model"],
            registered.index(loss),
            settings,
            repr(group.context),
        )

    return sorted(groups.values(), key=order)


def varying_keys(groups: list[Group]) -> list[str]:
    """SHOWN_KEYS, the loss hyperparameters that take two or more values, then every other key whose
    value differs between groups."""
    keys = sorted({key for group in groups for key in group.key})
    hyperparameters = [
        key
        for key in loss_keys()[1:]
        if len({repr(group.key[key]) for group in groups if group.key.get(key) is not None}) > 1
    ]
    others = [
        key
        for key in keys
        if key not in SHOWN_KEYS
        and key not in loss_keys()
        and len({repr(group.key.get(key)) for group in groups}) > 1
    ]
    return [*SHOWN_KEYS, *hyperparameters, *others]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return tau_label(value)
    return str(value)


def results_table(groups: list[Group], columns: list[str]) -> str:
    """Markdown: one row per group, mean ± std over seeds (metrics no run records are left out)."""
    metrics = [m for m in METRICS if any(group.stat(m).n for group in groups)]
    header = [*columns, "seeds", *[TITLES[metric] for metric in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        cells = [_cell(group.key.get(column)) for column in columns]
        cells.append(str(len(group.runs)))
        cells += [group.stat(metric).text() for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_csv(groups: list[Group], columns: list[str]) -> str:
    """CSV: one row per group; ``METRIC_mean``/``METRIC_std`` columns, the seeds and the run folders."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *columns,
            "n",
            *[f"{metric}_{part}" for metric in METRICS for part in ("mean", "std")],
            "seeds",
            "runs",
        ]
    )
    for group in groups:
        row: list[Any] = [_cell(group.key.get(column)) for column in columns]
        row.append(len(group.runs))
        for metric in METRICS:
            stat = group.stat(metric)
            row += ["" if stat.n == 0 else f"{stat.mean:.4f}", "" if stat.n == 0 else f"{stat.std:.4f}"]
        row.append(" ".join(str(seed) for seed in group.seeds))
        row.append(" ".join(str(run.path) for run in group.runs))
        writer.writerow(row)
    return buffer.getvalue()


def contexts(groups: list[Group]) -> dict[tuple[tuple[str, str], ...], list[Group]]:
    found: dict[tuple[tuple[str, str], ...], list[Group]] = {}
    for group in groups:
        found.setdefault(group.context, []).append(group)
    return found


def context_label(members: list[Group], shown: list[str]) -> str:
    key = members[0].key
    excluded = loss_keys()
    parts = [f"{name}={_cell(key.get(name))}" for name in shown if name not in excluded]
    return ", ".join(parts)


@dataclass
class Grid:
    """Groups of one loss and context over two hyperparameters (``rows`` may be None: one varies).

    ``means``/``stds`` ``[R, C]`` of a metric (NaN = missing); ``fixed`` labels the loss with the
    values its other hyperparameters hold in this grid.
    """

    spec: LossSpec
    rows: LossParam | None
    columns: LossParam
    row_values: list[Any]
    column_values: list[Any]
    means: np.ndarray
    stds: np.ndarray
    fixed: str


def grids(members: list[Group], metric: str = ACCURACY) -> list[Grid]:
    """Per loss of one context: the grid over its last two numeric hyperparameters that take several
    values (KL: alpha x tau), one grid per combination of its other hyperparameters."""
    found = []
    for loss in dict.fromkeys(group.key["kd.loss"] for group in members):
        groups = [group for group in members if group.key["kd.loss"] == loss]
        spec = groups[0].spec

        def value(group: Group, param: LossParam) -> Any:
            return group.key.get(f"kd.{param.field}")

        varying = [  # an axis holds numbers: an optional weight that some runs leave unset is not one
            param
            for param in groups[0].params
            if not param.is_flag
            and len({value(g, param) for g in groups}) > 1
            and all(value(g, param) is not None for g in groups)
        ]
        if not varying:
            continue
        axes = varying[-2:]
        rows, columns = (axes[0], axes[1]) if len(axes) == 2 else (None, axes[0])
        rest = [param for param in groups[0].params if param not in axes]
        subsets: dict[tuple[Any, ...], list[Group]] = {}
        for group in groups:
            subsets.setdefault(tuple(value(group, param) for param in rest), []).append(group)
        for subset in subsets.values():
            row_values = sorted({value(g, rows) for g in subset}) if rows else [None]
            column_values = sorted({value(g, columns) for g in subset})
            means = np.full((len(row_values), len(column_values)), np.nan)
            stds = np.full_like(means, np.nan)
            for group in subset:
                stat = group.stat(metric)
                index = (
                    row_values.index(value(group, rows) if rows else None),
                    column_values.index(value(group, columns)),
                )
                means[index], stds[index] = stat.mean, stat.std
            flags = [param.label for param in rest if param.is_flag and value(subset[0], param)]
            fixed = [
                f"{param.label}={format_value(value(subset[0], param))}"
                for param in rest
                if not param.is_flag and value(subset[0], param) is not None
            ]
            label = " ".join(["+".join([spec.label, *flags]), *fixed])
            found.append(Grid(spec, rows, columns, row_values, column_values, means, stds, label))
    return found


def comparison_table(context_groups: dict[Any, list[Group]], shown: list[str]) -> str | None:
    """Per context holding two or more losses: one column per loss setting (its label), last-epoch test
    accuracy. A loss is shown at the defaults of the weights its label hides (KL at alpha = 1) when it
    has such runs."""
    registered = LOSSES.registered()
    rows: list[tuple[list[Group], dict[str, Group]]] = []
    columns: dict[str, tuple[int, int]] = {}
    for members in context_groups.values():
        losses = list(dict.fromkeys(group.key["kd.loss"] for group in members))
        if len(losses) < 2:
            continue
        cells: dict[str, Group] = {}
        for loss in losses:
            groups = [group for group in members if group.key["kd.loss"] == loss]
            at_defaults = [group for group in groups if _hidden_at_defaults(group)]
            for group in at_defaults or groups:
                cells[group.label] = group
                columns.setdefault(group.label, (registered.index(loss), len(columns)))
        rows.append((members, cells))
    if not rows:
        return None
    ordered = sorted(columns, key=lambda label: columns[label])
    lines = ["| " + " | ".join(["context", *ordered]) + " |", "|" + "---|" * (len(ordered) + 1)]
    for members, cells in rows:
        values = [cells[label].stat(ACCURACY).text() if label in cells else "-" for label in ordered]
        lines.append("| " + " | ".join([context_label(members, shown), *values]) + " |")
    return "\n".join(lines)


def _hidden_at_defaults(group: Group) -> bool:
    kd = group.runs[0].config.kd
    return all(getattr(kd, param.field) == param.default for param in group.params if param.hide_default)


# --- regime gates ----------------------------------------------------------------------------------


@dataclass
class GateCheck:
    """G1-G3 of one teacher against the CE runs of one student setting (one per seed)."""

    teacher: RunRecord
    students: list[RunRecord]
    gates: list[Gate]

    def to_dicts(self) -> list[dict[str, Any]]:
        runs = {"teacher": str(self.teacher.path), "ce_runs": [str(run.path) for run in self.students]}
        return [{**gate.to_dict(), **runs} for gate in self.gates]


def _data(record: RunRecord) -> dict[str, Any]:
    """The ``data.*`` settings that make a run's data (runtime settings such as the data folder left out)."""
    return {key: value for key, value in identity(record.config).items() if key.startswith("data.")}


def find_teacher(spec: str, records: list[RunRecord]) -> tuple[RunRecord | None, str]:
    """The finished run of one teacher spec (a run folder, or a checkpoint inside one), looked up among
    ``records`` first (a sweep folder moved with its teachers inside), then on disk; else None and why."""
    if spec.startswith(FOREIGN_PREFIX):
        return None, "foreign weights, not a kdlab run (no clean-train accuracy)"
    path = Path(spec)
    for folder in [path, path.parent.parent] if path.is_file() else [path]:  # RUN/checkpoints/last.pt
        for record in records:
            if record.config.out == str(folder) or record.path.resolve() == folder.resolve():
                return record, ""
        if RunFolder(folder).is_finished() and RunFolder(folder).config_path.is_file():
            found = read_run(folder)
            return (None, f"{spec} {found.diverged_text()}") if found.diverged else (found, "")
    return None, f"{spec} is not a finished run folder (no summary.json there)"


def regime_gates(records: list[RunRecord], root: Path | None = None) -> tuple[list[GateCheck], list[str]]:
    """The regime gates wherever the runs allow: for every teacher the runs read (ensemble members one
    by one) and every setting of CE runs trained on that teacher's data (same ``data.*``), the gates of
    ``kdlab.experiments.regime``. A CE setting is a report group without its teacher: its model and every
    other key. Returns the checks and one "no gates" line per teacher (or for the folder) that has none."""
    specs = list(dict.fromkeys(spec for r in records for spec in teacher_specs(r.config.kd.teacher)))
    if not specs:
        return [], [f"no gates: none of the {len(records)} runs reads a teacher (the gates compare a teacher "
                    "with its CE students)"]  # fmt: skip
    teachers = {spec: find_teacher(spec, records) for spec in specs}
    teacher_paths = {found.path.resolve() for found, _ in teachers.values() if found is not None}
    ce_runs = [r for r in records if r.config.kd.loss == CE_LOSS and r.path.resolve() not in teacher_paths]
    if not ce_runs:
        return [], [f"no gates: no CE student (a run with kd.loss {CE_LOSS}, not itself a teacher) among the "
                    f"{len(records)} runs: add one trained on the teacher's data"]  # fmt: skip
    checks: list[GateCheck] = []
    missing: list[str] = []
    names = {spec: teacher_name(spec, root) for spec in teachers}
    for spec, (teacher, reason) in teachers.items():
        name = names[spec] if list(names.values()).count(names[spec]) == 1 else spec  # two folders 'teacher'
        if teacher is None:
            missing.append(f"no gates for teacher {name}: {reason}")
            continue
        data = _data(teacher)
        matching = [run for run in ce_runs if _data(run) == data]
        if not matching:
            differing = sorted(
                {
                    key
                    for run in ce_runs
                    for key in {*data, *_data(run)}
                    if _data(run).get(key) != data.get(key)
                }
            )
            missing.append(
                f"no gates for teacher {name}: no CE student trained on its data (the CE runs differ in "
                + ", ".join(f"{key} (teacher: {_cell(data.get(key))})" for key in differing)
                + ")"
            )
            continue
        settings: dict[str, tuple[dict[str, Any], list[RunRecord]]] = {}
        for run in matching:
            key = {k: v for k, v in group_key(run, root).items() if k != "kd.teacher"}
            settings.setdefault(repr(sorted(key.items())), (key, []))[1].append(run)
        keys = [key for key, _ in settings.values()]
        shown = [  # what tells this teacher's CE settings of one model apart (usually nothing)
            k
            for k in sorted({k for key in keys for k in key})
            if k != "model" and len({repr(key.get(k)) for key in keys}) > 1
        ]
        for _, (key, runs) in sorted(settings.items()):
            detail = "".join(f", {k}={_cell(key.get(k))}" for k in shown)
            scope = scope_text(name, teacher.config.model, runs, detail)
            checks.append(GateCheck(teacher, runs, check_gates(teacher, runs, scope)))
    return checks, missing


def gates_section(checks: list[GateCheck], missing: list[str]) -> str:
    """Markdown: the gates' text (``GATES_TEXT``, verbatim) and table, then a line per teacher without gates."""
    lines = ["## The regime: gates\n"]
    if checks:
        lines += [GATES_TEXT + "\n", gates_table([gate for check in checks for gate in check.gates]) + "\n"]
    lines += [line + "\n" for line in missing]
    return "\n".join(lines)


REPORT_FILES = ("report.md", "results.csv", "gates.json")  # and the plots, named by what they show


def write_report(
    folder: str | Path, out: str | Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write report.md, results.csv, gates.json and plots for the runs under ``folder`` (into ``out``,
    default ``folder``): all made in memory, then written together through ``OutputFolder`` (nothing
    is written unless every one of them may be). Runs that diverged are listed in a section of their
    own and counted in no table, mean, plot or gate."""
    folder = Path(folder)
    out = Path(out) if out else folder
    outputs = OutputFolder(out, "report")
    outputs.check()  # the folder, before reading the runs: --out a file, read-only, a dangling link
    records, copies = without_copies(find_runs(folder))  # a backup of a run is not a second seed
    records, diverged = split_diverged(records)  # a diverged run is named, never averaged
    if not records and not diverged:
        raise UserError(f"{folder} holds no finished runs (no summary.json found): run a sweep into it first")
    groups = group_runs(records, folder)
    columns = varying_keys(groups)
    checks, missing = regime_gates(records, folder)
    gates = [entry for check in checks for entry in check.to_dicts()]
    files = {
        "results.csv": results_csv(groups, columns).encode(),
        "gates.json": json_text({"gates": gates, "no_gates": missing}).encode(),
    }
    sections = [
        f"# kdlab report: {folder}\n",
        gates_section(checks, missing),
        "## Results\n",
        f"{len(records)} finished runs{f' ({len(copies)} copies of them not counted: see below)' if copies else ''} "
        f"in {len(groups)} groups"
        + (f" and {len(diverged)} diverged (below, in no mean)" if diverged else "")
        + " (mean ± standard deviation over seeds; "
        "last = final-epoch test accuracy, at best val = at the epoch of best validation accuracy, best-on-test = "
        "best epoch chosen on the test set, shown for comparison with papers that report it). Logit distance: mean "
        "`||z_s - z_t||_2` on the clean training set.\n",
        results_table(groups, columns) + "\n",
    ]
    if copies:
        sections.append(copies_section(copies, folder))
    plots = []
    by_context = contexts(groups)
    found = [(members, grid) for members in by_context.values() for grid in grids(members)]
    for index, (members, grid) in enumerate(found):
        suffix = "" if len(found) == 1 else f"-{index + 1}"
        label = f"{grid.fixed}, {context_label(members, columns)}"
        rows, cols = grid.rows, grid.columns
        if rows is not None and len(grid.row_values) >= 2 and len(grid.column_values) >= 2:
            name = f"heatmap{suffix}.png"
            files[name] = plot_heatmap(
                grid.means, grid.row_values, grid.column_values, f"last-epoch test accuracy (%)\n{_wrap(label)}",
                None, ylabel=rows.name, xlabel=cols.name,
            )  # fmt: skip
            plots.append((f"{rows.name} x {cols.name}: {label}", name))
        curves = {
            (f"{rows.name}={format_value(row)}" if rows else grid.fixed): (
                [
                    grid.column_values[j]
                    for j in range(len(grid.column_values))
                    if np.isfinite(grid.means[i, j])
                ],
                [grid.means[i, j] for j in range(len(grid.column_values)) if np.isfinite(grid.means[i, j])],
                [grid.stds[i, j] for j in range(len(grid.column_values)) if np.isfinite(grid.means[i, j])],
            )
            for i, row in enumerate(grid.row_values)
        }
        if len(grid.column_values) >= 2:
            name = f"{cols.name}_curves{suffix}.png"
            files[name] = plot_tau_curves(
                curves, f"last-epoch test accuracy against {cols.name}\n{_wrap(label)}", xlabel=cols.name
            )
            plots.append((f"accuracy against {cols.name}: {label}", name))
    table = comparison_table(by_context, columns)
    if table:
        sections += [
            "## Losses compared (last-epoch test accuracy; each loss at the default of the weights its label "
            "hides, e.g. KL at alpha = 1)\n",
            table + "\n",
        ]
    if diverged:
        sections += [
            "## Diverged runs (not in any table, mean or plot)\n",
            diverged_table(diverged, folder) + "\n",
        ]
    for title, name in plots:
        sections.append(f"## {title}\n\n![{title}]({name})\n")
    files["report.md"] = "\n".join(sections).encode()  # last: a report.md is never ahead of its plots
    outputs.write_files(files)
    for check in checks:
        log(f"gates ({check.gates[0].scope}): " + "; ".join(gate.text() for gate in check.gates))
    for line in missing:
        log(line)
    for record in diverged:
        log(f"diverged: {record.path}: {record.diverged_text()}")
    for copy, original in copies:
        log(f"report: {copy.path} is a copy of {original.path} (one run): counted once")
    log(f"report: wrote {out / 'report.md'}, {out / 'results.csv'} and {out / 'gates.json'}")
    return {
        "runs": len(records), "groups": len(groups), "plots": [name for _, name in plots], "gates": gates,
        "diverged": [str(record.path) for record in diverged], "copies": [str(copy.path) for copy, _ in copies],
    }  # fmt: skip


def diverged_table(records: list[RunRecord], root: Path) -> str:
    """Markdown: one row per diverged run: its folder (relative to ``root``), model, loss, seed, and
    where and why it stopped."""
    lines = ["| run | model | loss | seed | what happened |", "|---|---|---|---|---|"]
    for record in records:
        cells = [
            _relative(record.path, root),
            record.config.model,
            run_label(record.config),
            str(record.config.seed),
            record.diverged_text(),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def copies_section(copies: list[tuple[RunRecord, RunRecord]], root: Path) -> str:
    """Markdown: the folders left out as copies of another run (same run id and settings)."""
    lines = [
        "## Copies, counted once\n",
        f"{len(copies)} folder(s) hold a run already counted (the same run id and settings, e.g. a backup made "
        "with `cp -r`); each run counts once, as one seed:\n",
    ]
    for copy, original in copies:
        lines.append(f"- `{_relative(copy.path, root)}` is a copy of `{_relative(original.path, root)}` "
                     f"(run {run_identity(original)[:12]})")  # fmt: skip
    return "\n".join(lines) + "\n"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _wrap(text: str, width: int = 70) -> str:
    return textwrap.fill(text, width)
