"""The paper's regime, declared before any run: gates a teacher and its cross-entropy student must pass
before a claim about distillation is judged on them.

The paper's teacher fits its training set (about 100% train accuracy), beats its students by
several points, and its students fit their data too (92.6-99.3% train accuracy at alpha = 1). A
study where the teacher under-fits, or where the student alone already matches the teacher, tests
something else. So claims C1, C2, C4, C5, C6 and C8 are judged only where these gates pass, and
are otherwise *outside the paper's regime*, with the failing gate and its value:

- G1: the teacher's clean-train accuracy >= 98%;
- G2: the teacher's test accuracy minus the CE student's >= 3 points;
- G3: the CE student's clean-train accuracy >= 90%.

C7 and C9 test other regimes on purpose, with their own conditions (P1: a poor teacher; N1: noisy
training labels). Every report quotes ``GATES_TEXT`` verbatim.

Use::

    from kdlab.experiments.regime import check_gates, gates_table, failing

    gates = check_gates(teacher_record, ce_student_records, scope="convnet-32 -> mlp-64")
    print(gates_table(gates))                 # markdown: gate, rule, value, threshold, passed
    if failing(gates): ...                    # the gates that did not pass
    json_ready = [gate.to_dict() for gate in gates]

A record is a :class:`kdlab.analysis.records.RunRecord` or a ``summary.json`` mapping; the CE
students are the runs of one student setting trained with cross-entropy alone (one per seed).
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdlab.analysis.records import RunRecord

if TYPE_CHECKING:
    from kdlab.experiments.evidence import Experiment
    from kdlab.experiments.runtable import Row

CE_LOSS = "ce"  # the loss of the gates' student: cross-entropy alone, no KD term
TEST_ACC = "test_acc_last"  # test accuracy of the final weights (a teacher's students read its last.pt)
TRAIN_ACC = "train_acc"  # accuracy on the clean (unaugmented) training set, at the end of training

Record = RunRecord | Mapping[str, Any]
_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class GateRule:
    """A declared gate: ``value op threshold`` must hold, ``value`` as ``measure`` says."""

    name: str
    rule: str  # what must hold, in words (quoted in reports)
    threshold: float
    op: str  # ">=" or ">"
    unit: str  # "%" or " points"

    def passes(self, value: float) -> bool:
        return not math.isnan(value) and _OPERATORS[self.op](value, self.threshold)


G1 = GateRule("G1", "teacher clean-train accuracy >= 98%", 98.0, ">=", "%")
G2 = GateRule("G2", "teacher test accuracy minus the CE student's >= 3 points", 3.0, ">=", " points")
G3 = GateRule("G3", "CE student clean-train accuracy >= 90%", 90.0, ">=", "%")
GATES = (G1, G2, G3)
# The conditions of the two claims that test other regimes on purpose.
P1 = GateRule(
    "P1", "poor teacher: CE student clean-train accuracy minus the teacher's > 0 points", 0.0, ">", " points"
)
N1 = GateRule("N1", "noisy labels: realised label-noise rate of the training set > 0%", 0.0, ">", "%")

GATES_TEXT = f"""\
Gates, declared before any run (kdlab.experiments.regime). Claims C1, C2, C4, C5, C6 and C8 are
judged only where every gate of the runs they read passes; otherwise their verdict is *outside the
paper's regime*, naming the failing gate and its value.

- **{G1.name}**: {G1.rule} (the paper's teacher: about 100%).
- **{G2.name}**: {G2.rule} (the teacher must have something to teach).
- **{G3.name}**: {G3.rule} (the paper's students: 92.6-99.3% at alpha = 1).

Test accuracy is last-epoch (`{TEST_ACC}`); clean-train accuracy is measured once at the end on the
unaugmented training set (`{TRAIN_ACC}`); CE student values are means over its seeds. C7 and C9 test
other regimes on purpose and are judged where their own condition holds: **{P1.name}** ({P1.rule}) and
**{N1.name}** ({N1.rule})."""


@dataclass(frozen=True)
class Gate:
    """One gate measured on runs: ``passed`` is ``value op threshold`` (False when ``value`` is NaN)."""

    name: str
    value: float
    threshold: float
    passed: bool
    rule: str = ""
    op: str = ">="
    unit: str = ""
    scope: str = ""  # what it was measured on, e.g. "convnet-32 -> mlp-64 (3 seeds)"

    @classmethod
    def measure(cls, rule: GateRule, value: float, scope: str = "") -> Gate:
        return cls(rule.name, value, rule.threshold, rule.passes(value), rule.rule, rule.op, rule.unit, scope)

    def text(self) -> str:
        """``G2 = 4.12 points (>= 3): passed``."""
        value = "n/a" if math.isnan(self.value) else f"{self.value:.2f}"
        state = "passed" if self.passed else "FAILED"
        return f"{self.name} = {value}{self.unit} ({self.op} {self.threshold:g}): {state}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": None if math.isnan(self.value) else self.value,
            "threshold": self.threshold, "passed": self.passed, "op": self.op, "rule": self.rule,
            "scope": self.scope,
        }  # fmt: skip


def metric(record: Record, key: str) -> float:
    """A numeric summary value of a record (NaN when absent or not a number): a RunRecord, a row of
    runs.csv (``kdlab.experiments.runtable.Row``) or a summary mapping."""
    if not isinstance(record, Mapping):
        return record.metric(key)
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _mean(records: Sequence[Record], key: str) -> float:
    values = [value for value in (metric(r, key) for r in records) if not math.isnan(value)]
    return statistics.fmean(values) if values else math.nan


def check_gates(teacher: Record, ce_students: Sequence[Record], scope: str = "") -> list[Gate]:
    """G1, G2 and G3 for one teacher and the CE runs (one per seed) of one student setting."""
    if not scope:
        scope = f"teacher and {len(ce_students)} CE student run(s)"
    student_test, student_train = _mean(ce_students, TEST_ACC), _mean(ce_students, TRAIN_ACC)
    return [
        Gate.measure(G1, metric(teacher, TRAIN_ACC), scope),
        Gate.measure(G2, metric(teacher, TEST_ACC) - student_test, scope),
        Gate.measure(G3, student_train, scope),
    ]


def check_poor_teacher(teacher: Record, ce_students: Sequence[Record], scope: str = "") -> list[Gate]:
    """P1 (C7's condition): the teacher fits the training set worse than the CE student alone does."""
    return [Gate.measure(P1, _mean(ce_students, TRAIN_ACC) - metric(teacher, TRAIN_ACC), scope)]


def check_label_noise(students: Sequence[Record], scope: str = "") -> list[Gate]:
    """N1 (C9's condition): the training labels were noisy (mean realised rate over the runs, in %)."""
    return [Gate.measure(N1, 100.0 * _mean(students, "label_noise_realised_rate"), scope)]


def scope_text(teacher: str, teacher_model: str, ce_students: Sequence[RunRecord], detail: str = "") -> str:
    """``convnet-32-b (convnet-32) -> mlp-64 CE, 3 seeds``: what a set of gates was measured on (the
    teacher's name, its model when they differ, the CE students' model(s), ``detail`` and their seeds)."""
    models = ", ".join(sorted({record.config.model for record in ce_students})) or "no CE student"
    seeds = len({record.config.seed for record in ce_students})
    teacher_text = teacher if teacher == teacher_model else f"{teacher} ({teacher_model})"
    return f"{teacher_text} -> {models} CE{detail}, {seeds} seed{'s' * (seeds != 1)}"


def failing(gates: Sequence[Gate]) -> list[Gate]:
    return [gate for gate in gates if not gate.passed]


def gates_table(gates: Sequence[Gate]) -> str:
    """Markdown: one row per gate (scope, gate, rule, value, threshold, passed)."""
    lines = ["| runs | gate | rule | value | threshold | passed |", "|---|---|---|---|---|---|"]
    for gate in gates:
        value = "n/a" if math.isnan(gate.value) else f"{gate.value:.2f}"
        lines.append(
            f"| {gate.scope} | {gate.name} | {gate.rule} | {value} | {gate.op} {gate.threshold:g} | "
            f"{'yes' if gate.passed else '**no**'} |"
        )
    return "\n".join(lines)


# --- the gates of every teacher a claim reads, per teacher seed (on an experiment of runs.csv) ---------------------------


def _scope(experiment: Experiment, teacher: Row, ce_students: list[Row], several_seeds: bool) -> str:
    """``pairs/: convnet-32-b [ts1] (convnet-32) -> mlp-64 CE, 10 seeds``: the students' folder, the teacher's
    name (its teacher seed when there are several; its model when it differs), the CE students' model
    and seeds."""
    name = teacher.name + (f" [ts{teacher.teacher_seed}]" if several_seeds else "")
    text = name if teacher.name == teacher.model else f"{name} ({teacher.model})"
    models = ", ".join(sorted({row.model for row in ce_students})) or "no CE student"
    seeds = len({row.seed for row in ce_students})
    return f"{experiment.folder}/: {text} -> {models} CE, {seeds} seed{'s' * (seeds != 1)}"


def teacher_gates(experiment: Experiment, names: Iterable[str], model: str) -> list[Gate]:
    """G1-G3 of every teacher seed of each named teacher against the CE students of ``model``."""
    ce = experiment.runs.select(loss=CE_LOSS, model=model)
    gates: list[Gate] = []
    for name in names:
        seeds = experiment.teacher_seeds(name)
        if not seeds:
            where = f"{experiment.folder}/: teacher {name}: not trained"
            gates += [Gate.measure(rule, math.nan, where) for rule in GATES]
        for seed in seeds:
            teacher = experiment.teachers[(name, seed)]
            gates += check_gates(teacher, ce, _scope(experiment, teacher, ce, len(seeds) > 1))
    return gates


def pair_gates(experiment: Experiment, names: tuple[str, ...], model: str) -> list[Gate]:
    """The gates of one teacher/student pair (an ensemble: each member) of C5."""
    return teacher_gates(experiment, names, model)


def read_regime(experiment: Experiment) -> list[Gate]:
    """Every teacher its distilled students read, at every teacher seed, against the CE students of each
    student model that reads it."""
    from kdlab.losses import needs_teacher

    pairs = dict.fromkeys(
        (name, row.model) for row in experiment.students if needs_teacher(row.loss) for name in row.teacher
    )
    return [gate for name, model in pairs for gate in teacher_gates(experiment, (name,), model)]


def poor_teacher_condition(experiment: Experiment) -> list[Gate]:
    """P1 for every teacher seed of the poor teacher."""
    ce = experiment.runs.select(loss=CE_LOSS)
    gates = []
    for name in experiment.read():
        seeds = experiment.teacher_seeds(name)
        if not seeds:
            gates.append(
                Gate.measure(P1, math.nan, f"{experiment.folder}/: poor teacher {name}: not trained")
            )
        for seed in seeds:
            teacher = experiment.teachers[(name, seed)]
            gates += check_poor_teacher(teacher, ce, _scope(experiment, teacher, ce, len(seeds) > 1))
    return gates


def label_noise_condition(experiment: Experiment) -> list[Gate]:
    students = experiment.runs.records
    return check_label_noise(students, f"{experiment.folder}/: {len(students)} student runs")
