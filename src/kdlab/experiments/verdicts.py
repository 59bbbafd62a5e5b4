"""The tests and the verdict rule of protocol v2 (docs/results/small/PROTOCOL.md, sections 2-5).

A test's unit is the teacher seed: every teacher role is trained with several teacher seeds K, and
students are paired within a teacher seed (same K, same student seed S; the arms differ in the loss
or the teacher role). Per K, the mean over its student seeds (``kdlab.analysis.stats.teacher_means``);
the interval is Student's t over the T teacher-seed values, which covers the teachers' variance and
the students'. The interval over every (K, S) cell as if independent (BCa from 10 cells) is shown
beside it: it covers the students' variance only.

Three kinds of test: a ``Difference`` (``A - B``, or the smallest of several), a ``Trend`` (Spearman's
rho between a grid's order and a curve, per teacher seed) and a ``Correlation`` (over runs; secondary
only). A claim's ``ClaimResult`` holds its primary test(s), declared in ``kdlab.experiments.claims``
before any run, and its secondary tests (shown, never decisive). ``apply_holm`` corrects across the
primary tests of a report. ``VERDICT_RULE``, quoted in every report, defines each verdict.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

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
    holm,
    mean_test,
    page_test,
    spearman_rho,
    spearman_test,
    student_level_interval,
    teacher_means,
)
from kdlab.experiments import regime
from kdlab.experiments.evidence import ACC
from kdlab.experiments.regime import Gate

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
