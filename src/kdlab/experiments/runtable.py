"""``runs.csv``: every run a reproduce report reads, one row each: the evidence its claims are judged on.

A row holds a run's identity (folder, run id, the experiments that read it, the preset), its settings
(model, loss, alpha, tau, label noise, ensemble reduction), its seeds (student seed; the teacher seed
K it reads, or is), the teachers it read (names, folders, the SHA-256 of each checkpoint), its final
metrics (last-epoch test accuracy, clean-train accuracy, the logit distances C4 reads and the
penultimate distances of ``kdlab analyze`` that C6 reads), and its provenance (code commit and
whether the tree was clean, torch, device, start and finish times, wall time).

``kdlab reproduce`` writes the rows, reads them back from the CSV text and judges what it read
(``kdlab.experiments.claims.judge_all``), so ``kdlab reproduce --rejudge runs.csv`` judges exactly
what the first invocation judged: floats are written with ``repr`` (they read back bit for bit).
Written and read with the standard library's ``csv``.

Use::

    rows = rows_from_experiments(experiments, preset="small", analyses=...)
    text = csv_text(rows)            # what runs.csv holds
    rows = parse_csv(text, "runs.csv")
    row.metric("test_acc_last"), row.teacher, row.teacher_seed, row.seed
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.errors import UserError

STUDENT, TEACHER = "student", "teacher"
# Summary metrics copied per run (what the claims, gates and tables read).
RUNS_CSV = "runs.csv"  # its name beside claims.json
SUMMARY_METRICS = (
    "test_acc_last", "test_acc_at_best_val", "test_acc_best", "train_acc", "train_acc_clean_labels",
    "logit_distance", "logit_distance_centred", "logit_distance_rms", "label_noise_realised_rate",
    "epochs", "train_images", "wall_time_s",
)  # fmt: skip
# Per student of C6's analyses (kdlab analyze against its teacher, on the clean training set): the mean
# penultimate norm, the W1 distance of its norms' distribution to the teacher's, the mean distance of
# its 3-class projection to the teacher's, its agreement with the teacher (%). The teacher's own row
# holds its mean penultimate norm.
ANALYSIS_METRICS = ("penultimate_norm", "w1_to_teacher", "projection_distance", "agreement")
PROVENANCE = ("git_commit", "git_dirty", "torch", "device", "started_at", "finished_at")
COLUMNS = (  # a runs.csv whose header is not exactly these is refused
    "folder", "run", "role", "name", "experiments", "preset", "status", "diverged", "run_id",
    "model", "loss", "alpha", "tau", "ensemble", "label_noise",
    "seed", "teacher_seed", "teacher", "teacher_runs", "teacher_sha256", "last_pt_sha256",
    *SUMMARY_METRICS, *ANALYSIS_METRICS, *PROVENANCE,
)  # fmt: skip
NUMERIC = {"alpha", "tau", *SUMMARY_METRICS, *ANALYSIS_METRICS}


def _column(name: str, doc: str = "") -> Any:
    """A Row property: the text of column ``name``."""
    return property(lambda row: row.text(name), doc=doc or f"The {name} column's text.")


def _number(name: str) -> Any:
    """A Row property: column ``name`` as a float (NaN when empty)."""
    return property(lambda row: row.metric(name), doc=f"The {name} column as a float.")


@dataclass(frozen=True)
class Row:
    """One run of runs.csv: ``values`` maps every column to its text ("" = none)."""

    values: Mapping[str, str]

    folder = _column("folder")
    run = _column("run")
    role = _column("role")
    name = _column("name", "A teacher's name in its recipe (without the -tsK of its teacher seed).")
    status = _column("status")
    model = _column("model")
    loss = _column("loss")
    alpha = _number("alpha")
    tau = _number("tau")

    def text(self, column: str) -> str:
        return self.values.get(column, "")

    def metric(self, column: str) -> float:
        """A numeric column as a float (NaN when empty; ``inf`` reads as infinity)."""
        value = self.text(column)
        return float(value) if value else math.nan

    @property
    def path(self) -> str:
        """``FOLDER/RUN`` relative to the reproduce folder."""
        return f"{self.folder}/{self.run}"

    @property
    def experiments(self) -> tuple[str, ...]:
        return tuple(self.text("experiments").split())

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def seed(self) -> int:
        return int(self.text("seed"))

    @property
    def teacher_seed(self) -> int:
        """The teacher seed K a student reads (or a teacher is); 0 for a run that reads no teacher."""
        value = self.text("teacher_seed")
        return int(value) if value else 0

    @property
    def teacher(self) -> tuple[str, ...]:
        """The recipe names of the teachers it read (a student) or was distilled from (a teacher)."""
        value = self.text("teacher")
        return tuple(value.split("+")) if value else ()

    @property
    def cell(self) -> tuple[int, int]:
        """``(teacher seed, student seed)``: students are paired within a cell."""
        return (self.teacher_seed, self.seed)


def _format(value: Any) -> str:
    """A value as runs.csv writes it: floats by ``repr`` (exact round trip), None and NaN empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"a runs.csv value holds a line break: {text!r}")
    return text


def make_row(values: Mapping[str, Any]) -> Row:
    """A Row from Python values (columns not given are empty); unknown columns are a bug."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not runs.csv columns: {sorted(unknown)}")
    return Row({column: _format(values.get(column)) for column in COLUMNS})


def csv_text(rows: Iterable[Row]) -> str:
    """runs.csv: the header, then the rows sorted by folder and run."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in sorted(rows, key=lambda r: (r.folder, r.run)):
        writer.writerow([row.text(column) for column in COLUMNS])
    return buffer.getvalue()


def parse_csv(text: str, where: str | Path) -> list[Row]:
    """The rows of a runs.csv text; a one-line UserError when it is not one kdlab wrote."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise UserError(
            f"{where} is not a runs.csv of this kdlab (its header is not the {len(COLUMNS)} columns kdlab writes): "
            "pass the runs.csv that kdlab reproduce wrote beside claims.json"
        )
    rows = []
    for number, fields in enumerate(reader, start=2):
        if len(fields) != len(COLUMNS):
            raise UserError(
                f"{where}: line {number} has {len(fields)} fields, not {len(COLUMNS)}: the file is damaged; "
                "take it again from the reproduce folder or from git"
            )
        row = Row(dict(zip(COLUMNS, fields, strict=True)))
        for column in NUMERIC:
            try:
                row.metric(column)
            except ValueError:
                raise UserError(
                    f"{where}: line {number}, column {column} holds {row.text(column)[:40]!r}, not a number: the "
                    "file is damaged; take it again from the reproduce folder or from git"
                ) from None
        for column in ("seed", "teacher_seed"):
            if row.text(column) and not row.text(column).isdigit():
                raise UserError(
                    f"{where}: line {number}, column {column} holds {row.text(column)[:40]!r}, not a seed: the "
                    "file is damaged; take it again from the reproduce folder or from git"
                )
        if row.role not in (STUDENT, TEACHER) or not row.text("seed"):
            raise UserError(
                f"{where}: line {number} is neither a student nor a teacher row with a seed: the file is "
                "damaged; take it again from the reproduce folder or from git"
            )
        rows.append(row)
    return rows


# --- rows from run folders ----------------------------------------------------------------------------


@dataclass
class Sweep:
    """One experiment's sweep as reproduce ran it: its recipe key (``grid``), its folder under the
    reproduce folder (``main``), its plan and the records of its finished runs by planned name."""

    key: str
    folder: str
    plan: Any  # kdlab.experiments.recipes.SweepPlan
    records: dict[str, Any]  # planned run name -> kdlab.analysis.records.RunRecord


def _run_info(path: Path) -> dict[str, Any]:
    """The ``run_info`` block of a run's config.yaml (versions, commit, device, start time); {} if none."""
    from kdlab.config import load_yaml

    try:
        info = load_yaml(path / "config.yaml").get("run_info")
    except UserError:
        return {}
    return info if isinstance(info, dict) else {}


def _common(record: Any, preset: str) -> dict[str, Any]:
    """The columns every row fills from its run folder: settings, summary metrics, provenance."""
    from kdlab.runs import FINISHED

    config, summary = record.config, record.summary
    inputs = summary.get("inputs") if isinstance(summary.get("inputs"), dict) else {}
    info = _run_info(record.path)
    values: dict[str, Any] = {
        "preset": preset, "status": summary.get("status", FINISHED), "run_id": inputs.get("run_id"),
        "diverged": record.diverged_text() if record.diverged else None,
        "model": config.model, "loss": config.kd.loss, "alpha": float(config.kd.alpha), "tau": float(config.kd.tau),
        "label_noise": config.data.label_noise, "seed": config.seed,
        **{name: record.metric(name) for name in SUMMARY_METRICS},
        "git_commit": info.get("git_commit"), "git_dirty": info.get("git_dirty"), "torch": info.get("torch"),
        "device": info.get("device"), "started_at": info.get("started_at"), "finished_at": summary.get("finished_at"),
    }  # fmt: skip
    return values


def _teacher_columns(record: Any, roles: Mapping[str, str]) -> dict[str, Any]:
    """``teacher`` (recipe names), ``teacher_runs`` (folders) and ``teacher_sha256`` (of each checkpoint
    read, as the run recorded it: :attr:`RunRecord.teacher_sha256`) of a run that reads teachers; empty
    for one that reads none."""
    from kdlab.config import teacher_specs

    config = record.config
    specs = teacher_specs(config.kd.teacher) if config.kd.teacher else []
    if not specs:
        return {}
    folders = [Path(spec).name for spec in specs]
    digest = record.teacher_sha256
    return {
        "teacher": "+".join(roles.get(folder, folder) for folder in folders),
        "teacher_runs": "+".join(folders),
        "teacher_sha256": digest if digest and digest.count("+") + 1 == len(folders) else None,
        "ensemble": config.kd.ensemble if len(folders) > 1 else None,
    }


def rows_from_sweeps(
    sweeps: list[Sweep], preset: str, analyses: Mapping[str, Mapping[str, float]] | None = None
) -> list[Row]:
    """One row per run the sweeps read (a run of one folder read by several experiments once, naming
    them all); ``analyses`` maps a run's folder (as a string) to its ANALYSIS_METRICS."""
    from kdlab.runs import file_sha256

    analyses = analyses or {}
    found: dict[str, dict[str, Any]] = {}
    for sweep in sweeps:
        roles = {name: run.role for name, run in sweep.plan.teachers.items()}
        for planned in sweep.plan.teachers.values():
            record = sweep.records.get(planned.name)
            if record is None:
                continue
            key = str(record.path)
            entry = found.get(key)
            if entry is None:
                name = Path(planned.name).name
                entry = found[key] = {
                    **_common(record, preset), "folder": Path(planned.name).parent.name, "run": name,
                    "role": TEACHER, "name": planned.role or name, "teacher_seed": planned.teacher_seed,
                    **_teacher_columns(record, roles),
                    "last_pt_sha256": file_sha256(last) if (last := record.path / "checkpoints" / "last.pt").is_file()
                    else None,
                    **analyses.get(key, {}), "experiments": [],
                }  # fmt: skip
            entry["experiments"].append(sweep.key)
        for planned in sweep.plan.students:
            record = sweep.records.get(planned.name)
            if record is None:
                continue
            key = str(record.path)
            entry = found.get(key)
            if entry is None:
                entry = found[key] = {
                    **_common(record, preset), "folder": sweep.folder, "run": planned.name, "role": STUDENT,
                    "teacher_seed": planned.teacher_seed, **_teacher_columns(record, roles),
                    **analyses.get(key, {}), "experiments": [],
                }  # fmt: skip
            entry["experiments"].append(sweep.key)
    for entry in found.values():
        entry["experiments"] = " ".join(dict.fromkeys(entry["experiments"]))
    return [make_row(entry) for entry in found.values()]
