"""The nine claims of shared/PAPER.md as checks with a declared primary test and verdict rule (protocol v2).

``CLAIMS`` is the one table: claim -> statement, the experiment whose runs it reads, its check and
the regime it must be judged in (``kdlab.experiments.regime``). A check reads only rows of runs.csv
(``kdlab.experiments.runtable``): what ``kdlab reproduce`` judges, ``--rejudge`` judges again.

Two sources of variance: every teacher role is trained with several teacher seeds K, and students
are paired within a teacher seed (same K, same student seed S; the arms differ in the loss or the
teacher role). A test's unit is the teacher seed: per K, the mean over its student seeds
(``kdlab.analysis.stats.teacher_means``), and the interval is Student's t over the T teacher-seed
values, which covers the teachers' variance and the students'. The interval over every (K, S) cell
as if independent (BCa from 10 cells) is shown beside it: it covers the students' variance only.

Each claim has one **primary** test, declared here before any run, that tests its words (a trend over
every grid point where the claim is a trend; C5 one per teacher/student pair, as the paper states it);
its other tests are **secondary**: shown, never decisive. Holm's correction runs across the primary
tests of a report (``judge_all``). ``VERDICT_RULE``, quoted in every report, defines each verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdlab.analysis.plots import tau_label
from kdlab.analysis.stats import (
    BOOTSTRAP_MIN_N,
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    PERMUTATIONS,
    Cells,
    Interval,
    MeanTest,
    PageTest,
    RankCorrelation,
    Stat,
    holm,
    mean_test,
    page_test,
    spearman_rho,
    spearman_test,
    student_level_interval,
    teacher_means,
)
from kdlab.errors import UserError
from kdlab.experiments import regime
from kdlab.experiments.regime import Gate
from kdlab.experiments.runtable import STUDENT, TEACHER, Row

HOLDS, FAILS, NOT_SUPPORTED = "holds", "does not hold", "not supported"
ABOUT_AS_GOOD, INCONCLUSIVE = "about as good", "inconclusive"
OUTSIDE = "outside the paper's regime"
NOT_JUDGED = "not judged"  # the setting lacks what the claim needs (the reason is given)
VERDICTS = (HOLDS, FAILS, NOT_SUPPORTED, ABOUT_AS_GOOD, INCONCLUSIVE, OUTSIDE, NOT_JUDGED)
PROTOCOL_VERSION = 2
MIN_TEACHER_SEEDS = 3  # fewer teacher seeds holding paired values: no verdict
SIGNIFICANCE = 1 - CONFIDENCE
# Predicted sizes ("margins"; docs/results/small/PROTOCOL.md section 2 gives the reasons):
ACCURACY_MARGIN = 0.25  # accuracy points: the smallest ordering the paper reports (0.25-0.32)
TREND_MARGIN = (
    0.5  # Spearman's rho of a curve against its grid order: half way from no order to a monotone one
)
DISTANCE_MARGIN = 5.0  # percent of the reference arm's distance (v1: seed-to-seed SD of W1 about 5%)
ACC = "test_acc_last"  # the verdict metric: test accuracy of the final weights, never an epoch chosen on test
# Shown when runs hold a validation split: the test accuracy at the epoch of best validation accuracy.
VAL_ACC = "test_acc_at_best_val"
TEST_BEST = "test_acc_best"  # shown, never judged: its epoch is chosen on the test set
DISTANCE = "logit_distance"

VERDICT_RULE = f"""\
Protocol v{PROTOCOL_VERSION}. Accuracy is last-epoch test accuracy (`{ACC}`), never an epoch chosen on the test set;
tables also show the best run (the paper reports best of 3), test accuracy at the epoch of best validation
accuracy and best-epoch test accuracy (chosen on test: shown, never judged).

**Unit and interval.** Every teacher role is trained with T teacher seeds; students are paired within a
teacher seed (same teacher seed K, same student seed S). A test's value is computed per teacher seed
from the mean over its student seeds; its {100 * CONFIDENCE:g}% interval is Student's t over the T teacher-seed values
(it covers the teachers' and the students' variance). Fewer than {MIN_TEACHER_SEEDS} teacher seeds: *{INCONCLUSIVE}*. Shown
beside it, never decisive: the interval over all T x S cells as if independent (t below {BOOTSTRAP_MIN_N} cells, BCa
bootstrap with {BOOTSTRAP_RESAMPLES:,} seeded resamples from {BOOTSTRAP_MIN_N}), which covers the students' variance only.

**Tests.** A *difference* `A - B` (accuracy points; distances in percent of B), per teacher seed; where a
claim names several rivals, the smallest of the differences per teacher seed (A must beat each). A
*trend* over every point of a grid: per teacher seed, Spearman's rho between the grid order and the
student-seed mean of the metric (Page's L test over the T x S curves is shown beside it); the report
names the grid point where the curve peaks. A *correlation* (secondary only): Spearman's rho over the runs, with
a two-sided permutation p-value ({PERMUTATIONS:,} seeded permutations). Predicted sizes: {ACCURACY_MARGIN:g} accuracy points, rho {TREND_MARGIN:g},
{DISTANCE_MARGIN:g}% of a distance.

**One primary test per claim** (C5: one per teacher/student pair), declared before the runs; the other tests
are secondary, shown and never decisive. **Holm** across the primary tests of the report: each primary test's
two-sided t-test p-value is adjusted (Holm's step-down), and its interval is drawn at level
1 - {SIGNIFICANCE:g} * p / p_adjusted, so that it excludes 0 exactly when Holm rejects. Secondary tests use the plain
{100 * CONFIDENCE:g}% interval.

**Verdicts**, with the interval oriented so that the prediction is > 0 and m the predicted size:
- *{HOLDS}*: the interval lies above 0;
- *{FAILS}*: the interval lies below 0;
- *{NOT_SUPPORTED}*: neither, and the interval lies below m (the data exclude the predicted size, not zero);
- *{INCONCLUSIVE}*: otherwise (or too few teacher seeds);
- *{ABOUT_AS_GOOD}*, only where equality is the prediction (`~ 0`): the interval lies within (-m, +m);
  *{FAILS}* when it lies wholly outside; else *{INCONCLUSIVE}*. A directional test is never *{ABOUT_AS_GOOD}*.

A claim's verdict is its primary test's; with several primary tests (C5's pairs) the first of {FAILS},
{NOT_SUPPORTED}, {INCONCLUSIVE} that any of them has, else *{HOLDS}* ("holds in k of m pairs" is reported). Before
that, a primary test whose runs fail a gate of its regime (every teacher it reads, every teacher seed;
`kdlab.experiments.regime`) is *{OUTSIDE}*, naming the gate and its value: its numbers are still
shown, and it leaves the Holm family. A claim all of whose primary tests are outside is outside."""


# --- tests ------------------------------------------------------------------------------------------


def _finite(cells: Cells) -> Cells:
    return {cell: value for cell, value in cells.items() if not math.isnan(value)}


def mean_over(series: list[Cells]) -> Cells:
    """Per (teacher seed, student seed) cell, the mean of the series that all hold it."""
    kept = [_finite(one) for one in series]
    common = set.intersection(*(set(one) for one in kept)) if kept else set()
    return {cell: statistics.fmean(one[cell] for one in kept) for cell in sorted(common)}


def _orient(low: float, high: float, expect: str) -> tuple[float, float]:
    """``(low, high)`` of an interval turned so that the prediction reads ``> 0``."""
    return (low, high) if expect != "< 0" else (-high, -low)


@dataclass
class Test:
    """A test whose value is computed per teacher seed (``teacher_values``), with a predicted direction
    (``> 0``, ``< 0``) or equality (``~ 0``) and a predicted size ``margin`` (``VERDICT_RULE``).

    A primary test gets its Holm-adjusted p-value (``holm_p``) from ``judge_all``; its verdict reads the
    interval at the adjusted level. ``gates`` are the regime gates of the runs it reads."""

    statement: str
    expect: str
    margin: float
    unit: str = ""
    primary: bool = False
    gates: list[Gate] | None = None
    holm_p: float | None = None
    family: int = 0  # the number of primary tests Holm corrected across

    def __post_init__(self) -> None:
        if self.expect not in ("> 0", "< 0", "~ 0"):
            raise ValueError(f"expect must be '> 0', '< 0' or '~ 0', not {self.expect!r}")

    def teacher_values(self) -> dict[int, float]:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        raise NotImplementedError

    @property
    def n_teacher_seeds(self) -> int:
        return len(self.teacher_values())

    @property
    def n_student_seeds(self) -> int:
        raise NotImplementedError

    @property
    def test(self) -> MeanTest:
        """The t test over the teacher-seed values, at the plain level."""
        return mean_test(list(self.teacher_values().values()))

    @property
    def level(self) -> float:
        """The confidence of the interval the verdict reads: 1 - a * p / p_adjusted for a corrected primary
        test (it excludes 0 exactly when Holm rejects), else the plain level."""
        p, adjusted = self.test.p_value, self.holm_p
        if adjusted is None or not adjusted > 0 or not p > 0:
            return CONFIDENCE
        return 1 - SIGNIFICANCE * p / adjusted

    @property
    def interval(self) -> Interval:
        """The interval the verdict reads (Holm-adjusted for a corrected primary test)."""
        return mean_test(list(self.teacher_values().values()), self.level).interval

    @property
    def failing_gates(self) -> list[Gate]:
        return regime.failing(self.gates or [])

    @property
    def outside(self) -> bool:
        return bool(self.failing_gates)

    @property
    def statistical_verdict(self) -> str:
        """The verdict of the numbers alone (``VERDICT_RULE``), whatever the gates."""
        if self.n_teacher_seeds < MIN_TEACHER_SEEDS:
            return INCONCLUSIVE
        interval, margin = self.interval, self.margin
        if math.isnan(interval.low):
            return INCONCLUSIVE
        if self.expect == "~ 0":
            if -margin < interval.low and interval.high < margin:
                return ABOUT_AS_GOOD
            return FAILS if interval.low > margin or interval.high < -margin else INCONCLUSIVE
        low, high = _orient(interval.low, interval.high, self.expect)
        if low > 0:
            return HOLDS
        if high < 0:
            return FAILS
        return NOT_SUPPORTED if high < margin else INCONCLUSIVE

    @property
    def verdict(self) -> str:
        return OUTSIDE if self.outside else self.statistical_verdict

    def _size_note(self) -> str:
        """Why a verdict is what it is, where the words alone would mislead."""
        if self.n_teacher_seeds < MIN_TEACHER_SEEDS:
            return f"fewer than {MIN_TEACHER_SEEDS} teacher seeds"
        if self.expect == "~ 0" or self.statistical_verdict != HOLDS:
            return ""
        _, high = _orient(self.interval.low, self.interval.high, self.expect)
        return f"smaller than the predicted size {self.margin:g}{self.unit}" if high < self.margin else ""

    def interval_text(self, digits: int = 2) -> str:
        interval = self.interval
        if interval.method == "none":
            return f"mean {interval.mean:+.{digits}f}{self.unit}: no interval"
        name = (
            f"Holm {100 * interval.confidence:.2f}%" if self.holm_p is not None else f"{100 * CONFIDENCE:g}%"
        )
        return f"mean {interval.mean:+.{digits}f}{self.unit}, {name} CI [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"

    def evidence(self) -> str:
        """One line: effect, the interval the verdict reads, the corrected p, the seeds."""
        parts = [f"{self.statement}: {self.interval_text()}"]
        if self.holm_p is not None:
            parts.append(f"p = {self.test.p_value:.2g}, Holm p = {self.holm_p:.2g}")
        parts.append(f"{self.n_teacher_seeds} teacher x {self.n_student_seeds} student seeds")
        return "; ".join(parts)

    def detail(self) -> list[str]:
        """Lines of the test's own numbers (subclasses add their student-level statistics)."""
        values = ", ".join(f"{value:+.3f}" for value in self.teacher_values().values())
        lines = [f"per teacher seed [{values}]"]
        plain = self.test
        if plain.n >= 2:
            lines.append(
                plain.interval.text(digits=3, unit=self.unit).replace(", n = ", ", teacher seeds = ")
            )
            lines.append(f"t-test p = {plain.p_value:.3g}")
        if self.holm_p is not None:
            lines.append(
                f"Holm over {self.family} primary tests: p = {self.holm_p:.3g}, interval at "
                f"{100 * self.interval.confidence:.2f}%: [{self.interval.low:+.3f}, {self.interval.high:+.3f}]"
            )
        return lines

    def text(self) -> str:
        role = "primary" if self.primary else "secondary"
        size = f"predicted size {self.margin:g}{self.unit}"
        head = f"*{role}* {self.statement} (predicted {self.expect}, {size}, {self.kind})"
        note = self._size_note()
        numbers = self.statistical_verdict + (f"; {note}" if note else "")
        if not self.outside:
            return f"{head}: " + "; ".join(self.detail()) + f" -> **{numbers}**"
        gates = "; ".join(gate.text() for gate in self.failing_gates[:2])
        return (
            f"{head}: "
            + "; ".join(self.detail())
            + f" -> **{OUTSIDE}** ({gates}; the numbers alone: {numbers})"
        )

    def to_dict(self) -> dict[str, Any]:
        plain, interval = self.test, self.interval
        return {
            "statement": self.statement, "role": "primary" if self.primary else "secondary", "kind": self.kind,
            "expect": self.expect, "predicted_size": self.margin, "unit": self.unit.strip(),
            "teacher_values": {str(k): v for k, v in self.teacher_values().items()},
            "n_teacher_seeds": self.n_teacher_seeds, "n_student_seeds": self.n_student_seeds,
            "interval_95": plain.interval.to_dict(), "p_value": plain.p_value,
            "holm_p": self.holm_p, "holm_family": self.family if self.holm_p is not None else None,
            "interval": interval.to_dict(), "failing_gates": [gate.name for gate in self.failing_gates],
            "verdict": self.verdict,
        }  # fmt: skip


@dataclass
class Difference(Test):
    """``A - B`` per (teacher seed, student seed) cell; per teacher seed the mean over its student seeds.
    With several ``components`` (``(label, A, B)``) a teacher seed's value is the smallest of their
    differences (A must beat every B). ``relative``: per cell ``100 * (A - B) / B`` (distances, %)."""

    components: list[tuple[str, Cells, Cells]] = field(default_factory=list)
    relative: bool = False

    @property
    def kind(self) -> str:
        return (
            "difference" if len(self.components) == 1 else f"smallest of {len(self.components)} differences"
        )

    def differences(self, index: int = 0) -> Cells:
        """The per-cell differences of one component (cells both arms hold)."""
        _, a, b = self.components[index]
        a, b = _finite(a), _finite(b)
        if self.relative:
            return {
                cell: 100.0 * (a[cell] - b[cell]) / b[cell] for cell in sorted(a) if cell in b and b[cell]
            }
        return {cell: a[cell] - b[cell] for cell in sorted(a) if cell in b}

    def teacher_values(self) -> dict[int, float]:
        means = [teacher_means(self.differences(index)) for index in range(len(self.components))]
        if not means:
            return {}
        common = sorted(set.intersection(*(set(one) for one in means)))
        pick = max if self.expect == "< 0" else min  # the rival closest to the prediction failing
        return {teacher: pick(one[teacher] for one in means) for teacher in common}

    @property
    def n_student_seeds(self) -> int:
        cells = [cell for index in range(len(self.components)) for cell in self.differences(index)]
        return len({seed for _, seed in cells})

    def student_level(self, index: int = 0) -> Interval:
        return student_level_interval(self.differences(index))

    def detail(self) -> list[str]:
        lines = super().detail()
        for index, (label, _, _) in enumerate(self.components):
            cells = self.differences(index)
            if len(cells) >= 2:
                where = f" ({label})" if label else ""
                interval = self.student_level(index)
                lines.append(
                    f"student-level{where} [{interval.low:+.3f}, {interval.high:+.3f}] ({interval.method}, "
                    f"{len(cells)} cells; student noise only)"
                )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "components": [
                {"label": label, "cells": [[k, s, value] for (k, s), value in self.differences(i).items()],
                 "student_level_interval": self.student_level(i).to_dict()}
                for i, (label, _, _) in enumerate(self.components)
            ],
        }  # fmt: skip


@dataclass
class Trend(Test):
    """A trend over every point of an ordered grid (``points``: ``(label, cells of the metric)``): per
    teacher seed, Spearman's rho between the grid order and the curve of its student-seed means (a
    flat curve has rho 0). ``> 0``: the metric rises along the grid."""

    points: list[tuple[str, Cells]] = field(default_factory=list)
    margin: float = TREND_MARGIN

    @property
    def kind(self) -> str:
        return f"trend over {len(self.points)} grid points"

    def curves(self) -> dict[int, list[float]]:
        """Per teacher seed, its student-seed means at every grid point (seeds missing a point left out)."""
        means = [teacher_means(_finite(cells)) for _, cells in self.points]
        if not means:
            return {}
        common = sorted(set.intersection(*(set(one) for one in means)))
        return {teacher: [one[teacher] for one in means] for teacher in common}

    def teacher_values(self) -> dict[int, float]:
        if len(self.points) < 3:
            return {}
        order = list(range(len(self.points)))
        values = {}
        for teacher, curve in self.curves().items():
            rho = spearman_rho(order, curve)
            values[teacher] = 0.0 if math.isnan(rho) and max(curve) == min(curve) else rho
        return {teacher: rho for teacher, rho in values.items() if not math.isnan(rho)}

    @property
    def n_student_seeds(self) -> int:
        return len({seed for _, cells in self.points for _, seed in _finite(cells)})

    def peak(self) -> tuple[str, float] | None:
        """The grid point of the highest mean (over the teacher seeds' curves) and that mean."""
        curves = list(self.curves().values())
        if not curves:
            return None
        mean = [statistics.fmean(curve[index] for curve in curves) for index in range(len(self.points))]
        best = max(range(len(mean)), key=lambda index: mean[index])
        return self.points[best][0], mean[best]

    def peaks(self) -> dict[int, str]:
        """Per teacher seed, the grid point where its curve peaks."""
        return {k: self.points[max(range(len(c)), key=lambda i: c[i])][0] for k, c in self.curves().items()}

    def page(self) -> PageTest:
        """Page's L test over every (teacher seed, student seed) curve as a block (student-level),
        oriented so that the prediction reads as an increase."""
        cells = sorted(set.intersection(*(set(_finite(c)) for _, c in self.points))) if self.points else []
        blocks = [[_finite(c)[cell] for _, c in self.points] for cell in cells]
        if self.expect == "< 0":
            blocks = [block[::-1] for block in blocks]
        return page_test(blocks)

    def peak_text(self) -> str:
        peak = self.peak()
        if peak is None:
            return ""
        per_seed = ", ".join(f"{label}" for label in self.peaks().values())
        return f"the curve peaks at {peak[0]} ({peak[1]:.2f}); per teacher seed at {per_seed}"

    def detail(self) -> list[str]:
        lines = super().detail()
        page = self.page()
        if not math.isnan(page.p_value):
            lines.append(
                f"student-level Page's L = {page.statistic:.0f} over {page.blocks} curves, p = {page.p_value:.3g} "
                "(student noise only)"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        page, peak = self.page(), self.peak()
        return {
            **super().to_dict(),
            "points": [label for label, _ in self.points],
            "curves": {str(k): curve for k, curve in self.curves().items()},
            "peak": None if peak is None else {"point": peak[0], "mean": peak[1]},
            "peaks": {str(k): label for k, label in self.peaks().items()},
            "page": {"statistic": page.statistic, "p_value": page.p_value, "blocks": page.blocks},
        }  # fmt: skip


@dataclass
class Correlation:
    """Spearman's rho of ``x`` and ``y`` pooled over runs (student-level: secondary only), with a
    permutation p-value; predicted sign ``expect``."""

    statement: str
    x: list[float]
    y: list[float]
    seeds: int
    expect: str  # "> 0" or "< 0"
    primary: bool = False

    @property
    def test(self) -> RankCorrelation:
        return spearman_test(self.x, self.y)

    @property
    def verdict(self) -> str:
        test = self.test
        if self.seeds < MIN_TEACHER_SEEDS or math.isnan(test.rho) or not test.p_value < SIGNIFICANCE:
            return INCONCLUSIVE
        return HOLDS if (test.rho > 0) == (self.expect == "> 0") else FAILS

    def text(self) -> str:
        test = self.test
        return (
            f"*secondary* {self.statement} (predicted {self.expect}, student-level): Spearman rho {test.rho:+.3f} over "
            f"{test.n} runs, permutation p = {test.p_value:.4f} -> **{self.verdict}**"
        )

    def to_dict(self) -> dict[str, Any]:
        test = self.test
        return {
            "statement": self.statement, "role": "secondary", "kind": "rank correlation over runs",
            "expect": self.expect, "rho": test.rho, "p_value": test.p_value, "runs": test.n, "verdict": self.verdict,
        }  # fmt: skip


def accuracy_difference(statement: str, a: Cells, b: Cells, expect: str, primary: bool = False) -> Difference:
    """A Difference of accuracies (points), with the accuracy margin."""
    return Difference(statement, expect, ACCURACY_MARGIN, " pts", primary, components=[("", a, b)])


def smallest_difference(
    statement: str, components: list[tuple[str, Cells, Cells]], primary: bool = False, relative: bool = False
) -> Difference:
    """A must beat every B: per teacher seed the smallest of the differences (accuracy points, or percent)."""
    margin, unit = (DISTANCE_MARGIN, "%") if relative else (ACCURACY_MARGIN, " pts")
    return Difference(statement, "> 0", margin, unit, primary, components=components, relative=relative)


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its primary tests' (``VERDICT_RULE``); outside ones left out."""
    inside = [verdict for verdict in verdicts if verdict != OUTSIDE]
    if not verdicts:
        return INCONCLUSIVE
    if not inside:
        return OUTSIDE
    for verdict in (FAILS, NOT_SUPPORTED, INCONCLUSIVE, ABOUT_AS_GOOD):
        if verdict in inside:
            return verdict
    return HOLDS


@dataclass
class ClaimResult:
    claim: str
    statement: str
    primary: list[Test] = field(default_factory=list)
    secondary: list[Test | Correlation] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to REPORT.md)
    exact_verdict: str | None = None  # C3: decided by exact checks, not seeds
    gates: list[Gate] = field(default_factory=list)  # every gate of the runs it reads
    not_judged: str | None = None  # why the setting cannot judge this claim (no runs were made for it)
    unit: str = "pair"  # C5: what each primary test is about, in "holds in k of m pairs"

    @property
    def failing_gates(self) -> list[Gate]:
        return regime.failing(self.gates)

    @property
    def verdict(self) -> str:
        """The primary tests' verdict (``combine``); never a secondary test's."""
        if self.not_judged is not None:
            return NOT_JUDGED
        if self.exact_verdict is not None:
            return self.exact_verdict
        if not self.primary and self.failing_gates:
            return OUTSIDE
        return combine([test.verdict for test in self.primary])

    @property
    def n_teacher_seeds(self) -> int | None:
        counts = [test.n_teacher_seeds for test in self.primary]
        return min(counts) if counts else None

    @property
    def n_student_seeds(self) -> int | None:
        counts = [test.n_student_seeds for test in self.primary]
        return min(counts) if counts else None

    @property
    def decisive(self) -> Test | None:
        """The primary test that decides the verdict: the first whose verdict is the claim's."""
        for test in self.primary:
            if test.verdict == self.verdict:
                return test
        return self.primary[0] if self.primary else None

    def summary(self) -> str:
        """``holds in k of m pairs`` (several primary tests), or the trend's peak; else empty."""
        if len(self.primary) > 1:
            held = sum(test.verdict == HOLDS for test in self.primary)
            outside = sum(test.verdict == OUTSIDE for test in self.primary)
            more = f", {outside} outside the regime" if outside else ""
            return f"holds in {held} of {len(self.primary)} {self.unit}s{more}"
        if self.primary and isinstance(self.primary[0], Trend):
            return self.primary[0].peak_text()
        return ""

    def evidence(self) -> str:
        """One line for the README: the failing gate, or the deciding primary test's numbers."""
        if self.not_judged is not None:
            return self.not_judged
        if self.exact_verdict is not None:
            return "exact checks on the loss functions (float64)"
        decisive = self.decisive
        if self.verdict == OUTSIDE or decisive is None:
            failing = [gate for test in self.primary for gate in test.failing_gates] or self.failing_gates
            if not failing:
                return "no runs"
            shown = list(dict.fromkeys(f"{gate.text()} [{gate.scope}]" for gate in failing))
            more = f"; {len(shown) - 2} more failing" if len(shown) > 2 else ""
            return "; ".join(shown[:2]) + more
        summary = self.summary()
        return decisive.evidence() + (f" ({summary})" if summary else "")

    def to_dict(self) -> dict[str, Any]:
        decisive = self.decisive
        return {
            "claim": self.claim,
            "statement": self.statement,
            "verdict": self.verdict,
            "decided_by": "exact checks" if self.exact_verdict is not None else "primary tests",
            "summary": self.summary(),
            "n_teacher_seeds": self.n_teacher_seeds,
            "n_student_seeds": self.n_student_seeds,
            "primary_test": decisive.statement if decisive is not None else None,
            "holm_p": decisive.holm_p if decisive is not None else None,
            "interval": decisive.interval.to_dict() if decisive is not None else None,
            "evidence": self.evidence(),
            "gates": [gate.to_dict() for gate in self.gates],
            "failing_gates": list(dict.fromkeys(gate.name for gate in self.failing_gates)),
            "primary": [test.to_dict() for test in self.primary],
            "secondary": [test.to_dict() for test in self.secondary],
            "notes": self.notes,
        }


# --- runs: rows of runs.csv, looked up by setting ----------------------------------------------------


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


# --- tables -----------------------------------------------------------------------------------------

TITLES = {
    ACC: "test acc last (%)", VAL_ACC: "test acc at best val (%)", TEST_BEST: "test acc best-on-test (%, not judged)",
    "train_acc": "train acc (%)", "logit_distance": "logit distance", "logit_distance_centred": "centred distance",
    "logit_distance_rms": "RMS distance", "train_acc_clean_labels": "train acc, clean labels (%)",
    "penultimate_norm": "mean ||r||_2", "w1_to_teacher": "W1 to teacher", "projection_distance": "projection distance",
    "agreement": "agreement (%)",
}  # fmt: skip
DEFAULT_METRICS = (ACC, VAL_ACC, TEST_BEST, "train_acc")


def accuracy_table(
    rows: list[tuple[str, dict[str, Any]]], runs: Runs, metrics: tuple[str, ...] = DEFAULT_METRICS
) -> str:
    """Markdown: one row per ``(label, match)``, mean ± sd over its runs (every teacher seed and student
    seed) of each metric; the verdict metric also gets its best run. Metrics no run records are left out."""
    metrics = tuple(metric for metric in metrics if runs.has(metric))
    titles = []
    for metric in metrics:
        titles.append(TITLES[metric])
        if metric == ACC:
            titles.append("best run (%)")
    lines = ["| run | runs | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(titles)]
    for label, match in rows:
        cells = []
        for metric in metrics:
            stat = runs.stat(metric, **match)
            cells.append(stat.text())
            if metric == ACC:
                cells.append(stat.best_text())
        lines.append(f"| {label} | {len(runs.select(**match))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(runs: Runs, metric: str, alphas: list[float], taus: list[float]) -> str:
    """Markdown alpha (rows) x tau (columns) of a KL grid, mean ± sd over runs."""
    lines = [
        "| alpha \\ tau | " + " | ".join(tau_label(t) for t in taus) + " |",
        "|---|" + "---|" * len(taus),
    ]
    for alpha in alphas:
        cells = [runs.stat(metric, loss="kl", alpha=alpha, tau=tau).text() for tau in taus]
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set(values: Iterable[float]) -> str:
    return "{" + ", ".join(tau_label(value) for value in values) + "}"


# --- the checks -------------------------------------------------------------------------------------
# Each fills in a ClaimResult from an experiment's rows: tables, the primary test(s), secondary tests.


def check_c1(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    alphas, all_taus = runs.values("alpha", loss="kl"), runs.values("tau", loss="kl")
    taus = [tau for tau in all_taus if tau > 1]
    result.tables += [
        f"{TITLES[ACC]}:\n\n" + grid_table(runs, ACC, alphas, all_taus),
        "Train accuracy (%, clean training set, end of training):\n\n"
        + grid_table(runs, "train_acc", alphas, all_taus),
    ]
    if len(alphas) < 3 or not taus:
        result.notes.append("the trend needs at least three alphas and one tau > 1: no verdict")
    over = _set(taus)

    def curve(metric: str) -> list[tuple[str, Cells]]:
        return [
            (f"alpha={alpha:g}", mean_over([runs.cells(metric, loss="kl", alpha=alpha, tau=t) for t in taus]))
            for alpha in alphas
        ]

    result.primary.append(Trend(
        f"test acc over alpha in {_set(alphas)} (mean over tau in {over})", "> 0", TREND_MARGIN, primary=True,
        points=curve(ACC),
    ))  # fmt: skip
    result.secondary.append(Trend(
        f"train acc over alpha in {_set(alphas)} (mean over tau in {over})", "< 0", TREND_MARGIN, points=curve("train_acc"),
    ))  # fmt: skip
    if len(alphas) >= 2:
        low, high = alphas[0], alphas[-1]
        (_, a), (_, b) = curve(ACC)[-1], curve(ACC)[0]
        result.secondary.append(
            accuracy_difference(
                f"test acc(alpha={high:g}) - test acc(alpha={low:g}), mean over tau in {over}", a, b, "> 0"
            )
        )


def check_c2(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    kl = {"loss": "kl", "alpha": 1.0}
    taus = runs.values("tau", **kl)
    result.tables.append(accuracy_table([(f"KL tau={tau_label(t)}", {**kl, "tau": t}) for t in taus], runs))
    points = [(f"tau={tau_label(t)}", runs.cells(**kl, tau=t)) for t in taus]
    trend = Trend(
        f"test acc over tau in {_set(taus)} at alpha = 1", "> 0", TREND_MARGIN, primary=True, points=points
    )
    result.primary.append(trend)
    result.secondary.append(Difference(
        "acc(tau=inf) - acc(tau=20) at alpha = 1", "~ 0", ACCURACY_MARGIN, " pts",
        components=[("", runs.cells(**kl, tau=math.inf), runs.cells(**kl, tau=20.0))],
    ))  # fmt: skip
    finite_taus = [tau for tau in taus if tau != math.inf]
    if len(finite_taus) >= 2:
        low, high = finite_taus[0], finite_taus[-1]
        result.secondary.append(accuracy_difference(
            f"acc(tau={high:g}) - acc(tau={low:g}) at alpha = 1", runs.cells(**kl, tau=high), runs.cells(**kl, tau=low),
            "> 0",
        ))  # fmt: skip
    peak = trend.peak()
    if peak is not None:
        result.notes.append(f"Where the curve peaks: {trend.peak_text()}.")


# C3 is exact: the theorem's limits on the loss functions, no runs.
def _limit_check(
    name: str, taus: tuple[float, ...], errors: list[float], first_order: bool
) -> tuple[str, str, bool]:
    """``(check, errors, passed)``: errors must shrink along ``taus`` and end below 1e-6 relative; with
    ``first_order`` (tau -> inf, error O(1/tau)) by at least 5x per decade and below 1e-3 instead."""
    ratios = [
        before / after if after > 0 else math.inf
        for before, after in zip(errors[:-1], errors[1:], strict=True)
    ]
    if first_order:
        passed = all(ratio >= 5 for ratio in ratios) and errors[-1] < 1e-3
    else:
        passed = all(ratio >= 1 for ratio in ratios) and errors[-1] < 1e-6
    taus_text = ", ".join(f"{tau:g}" for tau in taus)
    return f"{name}, relative error at tau = {taus_text}", ", ".join(f"{e:.2e}" for e in errors), passed


def check_c3(result: ClaimResult, experiment: Experiment | None, context: Context) -> None:
    """The theorem's limits and gradients, checked in float64 on random logits (B = 64, K = 100)."""
    from kdlab.losses import kd_loss, kl_div, label_matching, logit_matching

    generator = torch.Generator().manual_seed(0)
    batch, classes = 64, 100
    student = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, classes, (batch,), generator=generator)
    onehot = torch.nn.functional.one_hot

    def gradient(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        logits = student.clone().requires_grad_(True)
        loss_fn(logits).backward()
        return logits.grad

    def relative(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return ((a - b).abs().max() / b.abs().max()).item()

    # tau -> inf: tau^2 KL -> (1/2K) ||centred(s - t)||^2; its gradient -> (1/K)[(s - t) - mean(s - t)] / B.
    large = (1e2, 1e3, 1e4)
    diff = student - teacher
    centred_grad = (diff - diff.mean(dim=1, keepdim=True)) / classes / batch
    matching = logit_matching(student, teacher)
    # tau -> 0: tau KL -> max_j s_j - s[argmax t]; its gradient -> (onehot(argmax s) - onehot(argmax t)) / B.
    small = (1e-2, 1e-3, 1e-4)
    label = label_matching(student, teacher)
    label_grad = (onehot(student.argmax(1), classes) - onehot(teacher.argmax(1), classes)).double() / batch
    checks = [
        _limit_check("tau^2 KL vs logit matching (tau = inf)", large,
                     [relative(kl_div(student, teacher, tau), matching) for tau in large], True),
        _limit_check("its gradient vs (1/K)[(s-t) - mean(s-t)]", large,
                     [relative(gradient(lambda s, t=tau: kl_div(s, teacher, t)), centred_grad) for tau in large], True),
        _limit_check("tau KL vs label matching (tau = 0)", small,
                     [relative(kl_div(student, teacher, tau) / tau, label) for tau in small], False),
        _limit_check("gradient of tau KL vs onehot(argmax s) - onehot(argmax t)", small,
                     [relative(gradient(lambda s, t=tau: kl_div(s, teacher, t) / t), label_grad) for tau in small], False),
    ]  # fmt: skip
    # Closed form: the gradient of kd_loss is [(1 - alpha)(p_s(1) - y) + alpha tau (p_s(tau) - p_t(tau))] / B.
    settings = ((0.5, 4.0), (0.9, 20.0), (1.0, 1.0), (0.1, 3.0))
    closed = []
    for alpha, tau in settings:
        soft = (student / tau).softmax(1) - (teacher / tau).softmax(1)
        expected = (
            (1 - alpha) * (student.softmax(1) - onehot(targets, classes)) + alpha * tau * soft
        ) / batch
        got = gradient(lambda s, a=alpha, t=tau: kd_loss(s, teacher, targets, a, t))
        closed.append((got - expected).abs().max().item())
    checks.append((
        "autograd vs closed-form gradient of kd_loss, max abs error at (alpha, tau) = "
        + ", ".join(f"({a:g}, {t:g})" for a, t in settings),
        ", ".join(f"{e:.1e}" for e in closed), max(closed) < 1e-12,
    ))  # fmt: skip
    rows = [f"| {name} | {values} | {'yes' if passed else 'NO'} |" for name, values, passed in checks]
    result.tables.append("| check | value | passed |\n|---|---|---|\n" + "\n".join(rows))
    result.notes.append(
        "Float64, random logits (B = 64, K = 100, N(0, 9)). Rule: the tau -> inf errors shrink at least 5x per "
        "decade of tau (first order in 1/tau is predicted) and end below 1e-3; the tau -> 0 errors (exponentially "
        "small in the top-2 logit gap over tau) shrink and end below 1e-6; autograd matches the closed-form "
        "gradient to 1e-12."
    )
    result.exact_verdict = HOLDS if all(passed for _, _, passed in checks) else FAILS


def check_c4(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    from kdlab.losses import needs_teacher

    runs = experiment.runs
    kl = {"loss": "kl", "alpha": 1.0}
    taus = runs.values("tau", **kl)
    rows = [(f"KL tau={tau_label(t)}", {**kl, "tau": t}) for t in taus]
    rows += [("MSE", {"loss": "mse"}), ("CE (no KD term)", {"loss": "ce"})]
    distances = (DISTANCE, "logit_distance_centred", "logit_distance_rms")
    result.tables.append(accuracy_table(rows, runs, (*distances, ACC, "train_acc")))
    result.notes.append(
        "Distances to the teacher's logits on the clean training set, means over its images: `||z_s - z_t||_2` "
        "(the claim's), the mean-centred `||(z_s - mean z_s) - (z_t - mean z_t)||_2` (what KL at tau = inf "
        "matches: KL is blind to the logits' mean) and the RMS `sqrt(mean_k (z_s - z_t)^2)` (what MSE minimises)."
    )
    points = [(f"tau={tau_label(t)}", runs.cells(DISTANCE, **kl, tau=t)) for t in taus]
    result.primary.append(Trend(
        f"logit distance over tau in {_set(taus)} at alpha = 1", "< 0", TREND_MARGIN, primary=True, points=points,
    ))  # fmt: skip
    mse = runs.cells(DISTANCE, loss="mse")
    result.secondary.append(smallest_difference(
        "distance(KL) - distance(MSE), the closest KL tau",
        [(f"tau={tau_label(t)}", runs.cells(DISTANCE, **kl, tau=t), mse) for t in taus], relative=True,
    ))  # fmt: skip
    students = [row for row in runs.records if needs_teacher(row.loss)]
    result.secondary.append(Correlation(
        "logit distance vs test accuracy, the distilled students of this experiment",
        [row.metric(DISTANCE) for row in students], [row.metric(ACC) for row in students],
        len({row.teacher_seed for row in students}), "< 0",
    ))  # fmt: skip


def check_c5(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs, main = experiment.runs, experiment.main_teacher
    single = (main,)
    models = runs.values("model", teacher=single)
    rows = []
    for model in models:
        rows += [(f"{model} {label}", {"model": model, "teacher": single, **match}) for label, match in
                 (("CE", {"loss": "ce"}), ("KL tau=20", {"loss": "kl", "tau": 20.0}),
                  ("MSE", {"loss": "mse"}))]  # fmt: skip
        result.primary.append(accuracy_difference(
            f"{main} -> {model}: acc(MSE) - acc(KL tau=20)",
            runs.cells(model=model, teacher=single, loss="mse"), runs.cells(model=model, teacher=single, loss="kl", tau=20.0),
            "> 0", primary=True,
        ))  # fmt: skip
        result.primary[-1].gates = pair_gates(experiment, single, model)
    ensembles = sorted({row.teacher for row in runs.records if len(row.teacher) > 1})
    if not ensembles:
        result.notes.append(
            'No ensemble teacher was run: the claim\'s "with ensemble teachers" is not judged here.'
        )
    for members in ensembles:
        for model in runs.values("model", teacher=members):
            name = "+".join(members)
            rows += [(f"ensemble {name} -> {model} {label}", {"teacher": members, "model": model, **match})
                     for label, match in (("KL tau=20", {"loss": "kl", "tau": 20.0}), ("MSE", {"loss": "mse"}))]  # fmt: skip
            result.primary.append(accuracy_difference(
                f"ensemble {name} -> {model}: acc(MSE) - acc(KL tau=20)",
                runs.cells(teacher=members, model=model, loss="mse"),
                runs.cells(teacher=members, model=model, loss="kl", tau=20.0), "> 0", primary=True,
            ))  # fmt: skip
            result.primary[-1].gates = pair_gates(experiment, members, model)
        reductions = sorted({row.text("ensemble") for row in runs.select(teacher=members)})
        result.notes.append(
            f"Ensemble teacher {'+'.join(members)}: the {' / '.join(reductions)} of its members' logits "
            "(`kd.ensemble`; the official code sums them)."
        )
    if models:
        result.secondary.append(accuracy_difference(
            f"acc(MSE) - acc(KL tau=20), mean over the {len(models)} students of {main}",
            mean_over([runs.cells(model=m, teacher=single, loss="mse") for m in models]),
            mean_over([runs.cells(model=m, teacher=single, loss="kl", tau=20.0) for m in models]), "> 0",
        ))  # fmt: skip
    result.gates = list({(g.name, g.scope): g for test in result.primary for g in test.gates or []}.values())
    result.tables.insert(0, accuracy_table(rows, runs))


C6_ARMS = (("KL tau=3", {"loss": "kl", "alpha": 1.0, "tau": 3.0}), ("KL tau=20", {"loss": "kl", "alpha": 1.0, "tau": 20.0}),
           ("MSE", {"loss": "mse"}))  # fmt: skip


def check_c6(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    result.notes.append(
        "Per student (`kdlab analyze` against its own teacher seed, clean training set): W1 = earth mover's distance "
        "between its ||r||_2 distribution and the teacher's; projection distance = mean over the three classes' "
        "training images of the distance between the student's and the teacher's projected points (each in its "
        "own template plane). Smaller = closer to the teacher. Differences in percent of the MSE student's."
    )
    metrics = ("penultimate_norm", "w1_to_teacher", "projection_distance", "agreement")
    result.tables.append(accuracy_table(list(C6_ARMS), runs, metrics))
    norms = [
        f"| {name} (teacher seed {seed}) | {row.metric('penultimate_norm'):.3f} |"
        for (name, seed), row in sorted(experiment.teachers.items())
    ]
    if norms:
        result.tables.append("| teacher | mean ||r||_2 |\n|---|---|\n" + "\n".join(norms))
    mse = {key: runs.cells(key, **C6_ARMS[2][1]) for key in ("w1_to_teacher", "projection_distance")}
    for index, (key, name) in enumerate(
        (("w1_to_teacher", "W1 to teacher"), ("projection_distance", "projection distance"))
    ):
        components = [(label, runs.cells(key, **match), mse[key]) for label, match in C6_ARMS[:2]]
        test = smallest_difference(
            f"{name}(KL) - {name}(MSE), the closest KL tau", components, index == 0, True
        )
        (result.primary if index == 0 else result.secondary).append(test)
        for label, a, b in components:
            result.secondary.append(
                smallest_difference(f"{name}({label}) - {name}(MSE)", [("", a, b)], relative=True)
            )


def check_c7(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    taus = runs.values("tau", loss="kl", alpha=1.0)
    rows = [(f"KL tau={tau_label(t)}", {"loss": "kl", "tau": t}) for t in taus]
    rows += [("MSE", {"loss": "mse"}), ("CE", {"loss": "ce"})]
    result.tables.append(accuracy_table(rows, runs))
    small = runs.cells(loss="kl", tau=1.0)
    rivals = [("KL tau=inf", runs.cells(loss="kl", tau=math.inf)), ("MSE", runs.cells(loss="mse"))]
    result.primary.append(smallest_difference(
        "acc(KL tau=1) - acc(rival), the better of KL tau=inf and MSE", [(label, small, b) for label, b in rivals], True,
    ))  # fmt: skip
    for label, other in rivals:
        result.secondary.append(accuracy_difference(f"acc(KL tau=1) - acc({label})", small, other, "> 0"))


def sequential_teachers(experiment: Experiment) -> tuple[str, str, str]:
    """``(large, medium, medium distilled from large)``: among the teachers the students read, the one
    distilled from another, the one it was distilled from, and the remaining one."""
    names = experiment.read()
    distilled = {
        name: row.teacher for (name, _), row in experiment.teachers.items() if name in names and row.teacher
    }
    if len(names) != 3 or len(distilled) != 1:
        raise UserError(
            f"C8 needs the sequential recipe's three teachers (large, medium, medium distilled from large); its students "
            f"read {', '.join(names) or 'none'}: do not --set other teachers"
        )
    derived, (large,) = next(iter(distilled.items()))
    medium = next(name for name in names if name not in (derived, large))
    return large, medium, derived


def check_c8(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    large, medium, medium_from_large = sequential_teachers(experiment)
    paths = {
        f"{medium} -> student": (medium,),
        f"{large} -> {medium} -> student": (medium_from_large,),
        f"{large} -> student": (large,),
    }
    rows = [(label, {"teacher": names, "loss": "kl"}) for label, names in paths.items()]
    result.tables.append(accuracy_table([*rows, ("CE (no teacher)", {"loss": "ce"})], runs))
    (first, a), (second, b), (third, c) = [
        (label, runs.cells(teacher=names, loss="kl")) for label, names in paths.items()
    ]
    steps = [(f"{first} vs {second}", a, b), (f"{second} vs {third}", b, c)]
    result.primary.append(smallest_difference("the chain's order: the smaller of its two steps", steps, True))
    result.secondary += [
        accuracy_difference(f"acc({first}) - acc({second})", a, b, "> 0"),
        accuracy_difference(f"acc({second}) - acc({third})", b, c, "> 0"),
    ]


def check_c9(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    noise = sorted({row.text("label_noise") for row in runs.records} - {""})
    result.notes.append(
        f"Training labels of teacher and students: {', '.join(noise) or 'no'} noise; the test set is clean. Small tau = "
        "the mean of the tau = 0.5 and tau = 1 accuracies per run pair, or the one of them the runs hold."
    )
    taus = runs.values("tau", loss="kl")
    rows = [(f"KL tau={tau_label(t)}", {"loss": "kl", "tau": t}) for t in taus]
    rows += [("MSE", {"loss": "mse"}), ("CE", {"loss": "ce"})]
    result.tables.append(accuracy_table(rows, runs, (*DEFAULT_METRICS, "train_acc_clean_labels")))
    small_taus = [tau for tau in (0.5, 1.0) if runs.select(loss="kl", tau=tau)] or [0.5, 1.0]
    small = mean_over([runs.cells(loss="kl", tau=t) for t in small_taus])
    name = f"KL tau={tau_label(small_taus[0])}" if len(small_taus) == 1 else "KL small tau"
    rivals = [("KL tau=inf", runs.cells(loss="kl", tau=math.inf)), ("MSE", runs.cells(loss="mse"))]
    result.primary.append(smallest_difference(
        f"acc({name}) - acc(rival), the better of KL tau=inf and MSE", [(label, small, b) for label, b in rivals], True,
    ))  # fmt: skip
    for label, other in rivals:
        result.secondary.append(accuracy_difference(f"acc({name}) - acc({label})", small, other, "> 0"))


# --- regimes: the gates of every teacher each claim reads, per teacher seed ---------------------------


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
    ce = experiment.runs.select(loss=regime.CE_LOSS, model=model)
    gates: list[Gate] = []
    for name in names:
        seeds = experiment.teacher_seeds(name)
        if not seeds:
            where = f"{experiment.folder}/: teacher {name}: not trained"
            gates += [Gate.measure(rule, math.nan, where) for rule in regime.GATES]
        for seed in seeds:
            teacher = experiment.teachers[(name, seed)]
            gates += regime.check_gates(teacher, ce, _scope(experiment, teacher, ce, len(seeds) > 1))
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
    ce = experiment.runs.select(loss=regime.CE_LOSS)
    gates = []
    for name in experiment.read():
        seeds = experiment.teacher_seeds(name)
        if not seeds:
            gates.append(
                Gate.measure(regime.P1, math.nan, f"{experiment.folder}/: poor teacher {name}: not trained")
            )
        for seed in seeds:
            teacher = experiment.teachers[(name, seed)]
            gates += regime.check_poor_teacher(teacher, ce, _scope(experiment, teacher, ce, len(seeds) > 1))
    return gates


def label_noise_condition(experiment: Experiment) -> list[Gate]:
    students = experiment.runs.records
    return regime.check_label_noise(students, f"{experiment.folder}/: {len(students)} student runs")


# --- the claim table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim of shared/PAPER.md: the experiment whose runs it reads (None: checked exactly), the
    check that fills its result (its primary test declared there), and the regime its runs must be in
    (None: the check sets each primary test's gates itself, as C5 does per pair)."""

    id: str
    statement: str
    recipe: str | None
    check: Callable[[ClaimResult, Experiment | None, Context], None]
    regime: Callable[[Experiment], list[Gate]] | None = None
    primary: str = ""  # the declared primary test, in words (PROTOCOL.md quotes it)


CLAIMS: dict[str, Claim] = {claim.id: claim for claim in (
    Claim("C1", "Higher alpha gives higher test and lower train accuracy (tau > 1).", "grid", check_c1, read_regime,
          "trend of test accuracy over every alpha of the grid (mean over tau > 1), rho > 0"),
    Claim("C2", "At alpha = 1, test accuracy rises with tau; tau = inf is about as good as tau = 20.", "grid",
          check_c2, read_regime, "trend of test accuracy over every tau of the grid at alpha = 1, rho > 0"),
    Claim("C3", "The two limits of the theorem hold (checked numerically, exactly).", None, check_c3,
          primary="exact checks in float64 (no runs, no Holm)"),
    Claim("C4", "Larger tau gives a smaller logit distance ||z_s - z_t||_2 on the training set, but KL never reaches "
          "full logit matching; MSE gets closest. Logit matching correlates with accuracy.", "logit-distance",
          check_c4, read_regime, "trend of the logit distance over every tau of the grid at alpha = 1, rho < 0"),
    Claim("C5", "MSE beats KL across teacher/student pairs and with ensemble teachers.", "pairs", check_c5,
          primary="per teacher/student pair (each student model, and the ensemble): acc(MSE) - acc(KL tau=20) > 0"),
    Claim("C6", "MSE students' penultimate representations follow the teacher's more closely (pdf of ||r||_2; 3-class "
          "projection onto the plane of the class templates).", "penultimate", check_c6, read_regime,
          "W1 between the ||r||_2 distributions: KL minus MSE, the closer of KL tau=3 and tau=20, in % of MSE's, > 0"),
    Claim("C7", "With a poorly trained teacher, label matching (small tau) is preferable (tested: KL tau = 1 against "
          "tau = inf and MSE).", "poor-teacher", check_c7, poor_teacher_condition,
          "acc(KL tau=1) minus the better of KL tau=inf and MSE, > 0"),
    Claim("C8", "Sequential distillation: medium -> small beats large -> medium -> small, which beats large -> small.",
          "sequential", check_c8, read_regime, "the smaller of the chain's two steps, > 0"),
    Claim("C9", "Under label noise in the training set, KL with small tau (0.5 or 1) beats tau = inf and MSE.",
          "label-noise", check_c9, label_noise_condition,
          "acc(KL small tau: the mean of tau 0.5 and 1, or the one the runs hold) minus the better of KL tau=inf and "
          "MSE, > 0"),
)}  # fmt: skip


def judge(claim_id: str, experiment: Experiment | None, context: Context | None = None) -> ClaimResult:
    """Run one claim's check on its experiment's rows and measure its regime (no Holm: ``judge_all``)."""
    claim = CLAIMS[claim_id]
    result = ClaimResult(claim.id, claim.statement)
    if claim.recipe is not None and experiment is None:
        result.not_judged = f"no runs of its experiment ({claim.recipe}) were made or read"
        return result
    claim.check(result, experiment, context or Context())
    if claim.regime is not None and experiment is not None:
        result.gates = claim.regime(experiment)
        for test in result.primary:
            if test.gates is None:
                test.gates = result.gates
    if experiment is not None and experiment.diverged:
        named = "; ".join(f"{row.run} ({_diverged_text(row)})" for row in experiment.diverged)
        result.notes.append(
            f"left out of every table and test: {len(experiment.diverged)} run(s) that diverged: {named}"
        )
    return result


def _diverged_text(row: Row) -> str:
    return row.text("diverged") or "diverged"


def holm_family(results: list[ClaimResult]) -> list[Test]:
    """The primary tests Holm corrects across: those of judged claims, inside their regime, with enough
    teacher seeds for a p-value."""
    return [
        test
        for result in results
        if result.not_judged is None and result.exact_verdict is None
        for test in result.primary
        if not test.outside
        and test.n_teacher_seeds >= MIN_TEACHER_SEEDS
        and not math.isnan(test.test.p_value)
    ]


def apply_holm(results: list[ClaimResult]) -> list[Test]:
    """Set every family member's Holm-adjusted p-value (``kdlab.analysis.stats.holm``); returns the family."""
    family = holm_family(results)
    for test, adjusted in zip(family, holm([test.test.p_value for test in family]), strict=True):
        test.holm_p, test.family = adjusted, len(family)
    return family


def judge_all(
    claim_list: list[str], experiments: dict[str, Experiment], skipped: dict[str, str] | None = None
) -> list[ClaimResult]:
    """Every chosen claim judged on its experiment (``skipped``: claim -> why the setting cannot judge
    it), then Holm across the primary tests of them all."""
    skipped = skipped or {}
    results = []
    for claim in claim_list:
        if claim in skipped:
            results.append(ClaimResult(claim, CLAIMS[claim].statement, not_judged=skipped[claim]))
        else:
            results.append(judge(claim, experiments.get(CLAIMS[claim].recipe or "")))
    apply_holm(results)
    return results
