"""The evidence a claim reads: rows of runs.csv (``kdlab.experiments.runtable``), grouped by experiment.

``experiments_from_rows`` groups a runs.csv by experiment: its students, and every teacher they read
by ``(name, teacher seed)``. ``Runs`` looks students up by loss, alpha, tau, model and teacher, and
gives a metric per ``(teacher seed, student seed)`` cell, the unit the tests of
``kdlab.experiments.verdicts`` pair on. The metric names the claims read are defined here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.analysis.stats import Cells, Stat
from kdlab.errors import UserError
from kdlab.experiments.runtable import STUDENT, TEACHER, Row

ACC = "test_acc_last"  # the verdict metric: test accuracy of the final weights, never an epoch chosen on test
# Shown when runs hold a validation split: the test accuracy at the epoch of best validation accuracy.
VAL_ACC = "test_acc_at_best_val"
TEST_BEST = "test_acc_best"  # shown, never judged: its epoch is chosen on the test set
DISTANCE = "logit_distance"


class Runs:
    """Finished student runs, looked up by loss, alpha, tau, model and teacher (recipe names)."""

    def __init__(self, rows: list[Row]) -> None:
        self.records = rows

    def select(self, **match: Any) -> list[Row]:
        def fields(row: Row) -> dict[str, Any]:
            return {
                "loss": row.loss, "alpha": row.alpha, "tau": row.tau, "model": row.model, "teacher": row.teacher,
            }  # fmt: skip

        return [row for row in self.records if all(fields(row)[k] == v for k, v in match.items())]

    def cells(self, metric: str = ACC, **match: Any) -> Cells:
        """``{(teacher seed, student seed): metric}`` of the matching runs (one run per cell)."""
        selected = self.select(**match)
        cells = [row.cell for row in selected]
        if len(set(cells)) != len(cells):
            raise UserError(
                f"several runs of one seed match {match}: a claim compares one run per teacher seed and seed; drop "
                "the --set that adds runs differing only in keys the claim does not look at"
            )
        return {row.cell: row.metric(metric) for row in sorted(selected, key=lambda r: r.cell)}

    def stat(self, metric: str = ACC, **match: Any) -> Stat:
        return Stat.of(list(self.cells(metric, **match).values()))

    def values(self, key: str, **match: Any) -> list[Any]:
        """Distinct values of ``key`` (loss, alpha, tau, model) among matching runs, sorted."""
        return sorted({getattr(row, key) for row in self.select(**match)})

    def has(self, metric: str) -> bool:
        return any(not math.isnan(row.metric(metric)) for row in self.records)

    @property
    def seeds(self) -> list[int]:
        return sorted({row.seed for row in self.records})


@dataclass
class Experiment:
    """One experiment's runs (rows of runs.csv): its students and the teachers they read, by
    ``(name, teacher seed)``."""

    key: str
    students: list[Row]
    teachers: dict[tuple[str, int], Row]

    @property
    def runs(self) -> Runs:
        """The students that finished as asked: a diverged run has no result to compare."""
        return Runs([row for row in self.students if not row.diverged])

    @property
    def diverged(self) -> list[Row]:
        """The students whose loss became NaN or inf: named in every claim they leave out."""
        return [row for row in self.students if row.diverged]

    @property
    def folder(self) -> str:
        return self.students[0].folder if self.students else self.key

    def read(self) -> list[str]:
        """The teacher names its students read (ensemble members one by one), in order of appearance."""
        return list(dict.fromkeys(name for row in self.students for name in row.teacher))

    @property
    def main_teacher(self) -> str | None:
        """The teacher read alone by the most students (C5's single teacher)."""
        counts: dict[str, int] = {}
        for row in self.students:
            if len(row.teacher) == 1:
                counts[row.teacher[0]] = counts.get(row.teacher[0], 0) + 1
        return max(counts, key=lambda name: counts[name]) if counts else None

    def teacher_seeds(self, name: str) -> list[int]:
        return sorted(seed for teacher, seed in self.teachers if teacher == name)


def experiments_from_rows(rows: Iterable[Row]) -> dict[str, Experiment]:
    """The experiments of a runs.csv: per experiment key, its student rows and every teacher row it read."""
    rows = list(rows)
    found: dict[str, Experiment] = {}
    for row in rows:
        for key in row.experiments:
            experiment = found.setdefault(key, Experiment(key, [], {}))
            if row.role == STUDENT:
                experiment.students.append(row)
            elif row.role == TEACHER:
                experiment.teachers[(row.name, row.teacher_seed)] = row
    return found


@dataclass
class Context:
    """How a check logs (checks read rows only: they write nothing)."""

    out: Path | None = None
    log: Callable[[str], None] = print
