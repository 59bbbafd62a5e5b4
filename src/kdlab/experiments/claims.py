"""The nine claims of shared/PAPER.md as checks with a fixed, stated statistic and verdict rule.

``CLAIMS`` is the one table: claim -> statement, the recipe whose runs it reads, its check and the
regime it must be judged in (``kdlab.experiments.regime``). ``judge`` runs one entry. Each check adds
tables and tests (``Comparison``: per-seed paired differences ``A - B`` with a predicted direction;
``Correlation``: Spearman's rho with a permutation p-value), judged by ``VERDICT_RULE`` below, which
REPORT.md quotes verbatim. Nothing here is tuned to a result: the rule, the compared runs, the
metric and the margin are fixed before any run is read. The statistics are ``kdlab.analysis.stats``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdlab.analysis.plots import tau_label
from kdlab.analysis.records import RunRecord, split_diverged
from kdlab.analysis.stats import (
    BOOTSTRAP_MIN_N,
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    PERMUTATIONS,
    Equivalence,
    Interval,
    RankCorrelation,
    Stat,
    paired_interval,
    spearman_test,
    tost,
)
from kdlab.errors import UserError
from kdlab.experiments import regime
from kdlab.experiments.recipes import SweepPlan, flatten
from kdlab.experiments.regime import Gate
from kdlab.losses import needs_teacher
from kdlab.teacher import teacher_specs

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
ABOUT_AS_GOOD, OUTSIDE = "about as good", "outside the paper's regime"
NOT_JUDGED = "not judged"  # the setting lacks what the claim needs (the reason is given)
MIN_SEEDS = 3  # fewer paired seeds: no verdict
EQUIVALENCE_MARGIN = 0.5  # accuracy points within which two settings count as "about as good"
SIGNIFICANCE = 1 - CONFIDENCE
ACC = "test_acc_last"  # the verdict metric: test accuracy of the final weights, never an epoch chosen on test
# Shown when runs hold a validation split: the test accuracy at the epoch of best validation accuracy.
VAL_ACC = "test_acc_at_best_val"
TEST_BEST = "test_acc_best"  # shown, never judged: its epoch is chosen on the test set

VERDICT_RULE = f"""\
Every test pairs the student runs of each seed (a seed fixes the data order and initial weights) and needs
at least {MIN_SEEDS} paired seeds; with fewer it is *inconclusive*. Accuracy is last-epoch test accuracy
(`{ACC}`), never an epoch chosen on the test set; tables also show the best of the seeds (the paper
reports best of 3), test accuracy at the epoch of best validation accuracy where runs hold a
validation split, and best-epoch test accuracy (chosen on test: shown, never judged).

- **Difference** `A - B` (accuracies in points, distances), per seed, with a predicted direction:
  a {100 * CONFIDENCE:g}% interval for its mean (paired t for n < {BOOTSTRAP_MIN_N}; BCa bootstrap, {BOOTSTRAP_RESAMPLES:,}
  resamples, seeded, for n >= {BOOTSTRAP_MIN_N}, with the t interval printed beside it: a bootstrap of few
  values runs narrow). *holds* if the interval lies wholly on the predicted
  side of 0, *does not hold* if wholly on the other side; for accuracies, *about as good* if two
  one-sided t tests (TOST, level {SIGNIFICANCE:g}) place the mean within ±{EQUIVALENCE_MARGIN:g} point; else *inconclusive*.
- **About as good** predicted (`~ 0`, accuracies): *holds* if TOST places the mean within
  ±{EQUIVALENCE_MARGIN:g} point, *does not hold* if the {100 * CONFIDENCE:g}% interval lies wholly outside it, else *inconclusive*.
- **Correlation**: Spearman's rho over the runs of all seeds, two-sided permutation p-value
  ({PERMUTATIONS:,} permutations, seeded; exact for small n): *holds* if p < {SIGNIFICANCE:g} with the predicted
  sign, *does not hold* if p < {SIGNIFICANCE:g} with the other sign, else *inconclusive*.

A claim *holds* when all its tests hold, *does not hold* when any does not hold, is *inconclusive*
when any is inconclusive, and *about as good* when the rest hold and at least one predicted
difference is within the margin. Before any of that, a claim whose runs fail a gate of its regime
(`kdlab.experiments.regime`) is *{OUTSIDE}*, naming the gate and its value; its numbers are still shown. Tests are not
corrected for multiplicity: read a single "holds" among many tests with that in mind."""


# --- tests ------------------------------------------------------------------------------------------


def _finite(series: dict[int, float]) -> dict[int, float]:
    return {seed: value for seed, value in series.items() if not math.isnan(value)}


@dataclass
class Comparison:
    """``A - B`` per seed against a predicted direction (``VERDICT_RULE``). ``margin`` is the equivalence
    margin (accuracies); None for quantities without one (distances), which then have no "about as good"."""

    statement: str  # e.g. "acc(MSE) - acc(KL tau=20)"
    a: dict[int, float]
    b: dict[int, float]
    expect: str  # "> 0", "< 0" or "~ 0"
    unit: str = ""
    margin: float | None = None

    def __post_init__(self) -> None:
        if self.expect not in ("> 0", "< 0", "~ 0"):
            raise ValueError(f"expect must be '> 0', '< 0' or '~ 0', not {self.expect!r}")
        if self.expect == "~ 0" and self.margin is None:
            raise ValueError("an equivalence test ('~ 0') needs a margin")

    @property
    def per_seed(self) -> dict[int, float]:
        a, b = _finite(self.a), _finite(self.b)
        return {seed: a[seed] - b[seed] for seed in sorted(a) if seed in b}

    @property
    def values(self) -> list[float]:
        return list(self.per_seed.values())

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def interval(self) -> Interval:
        return paired_interval(self.values)

    @property
    def equivalence(self) -> Equivalence | None:
        return None if self.margin is None else tost(self.values, self.margin)

    @property
    def verdict(self) -> str:
        if self.n < MIN_SEEDS:
            return INCONCLUSIVE
        interval, equivalence = self.interval, self.equivalence
        equivalent = equivalence is not None and equivalence.equivalent(SIGNIFICANCE)
        if self.expect == "~ 0":
            if equivalent:
                return HOLDS
            outside = interval.low > self.margin or interval.high < -self.margin
            return FAILS if outside else INCONCLUSIVE
        sign = 1.0 if self.expect == "> 0" else -1.0
        low, high = sorted((sign * interval.low, sign * interval.high))
        if low > 0:
            return HOLDS
        if high < 0:
            return FAILS
        return ABOUT_AS_GOOD if equivalent else INCONCLUSIVE

    def evidence(self) -> str:
        """One line: effect, interval, n."""
        if self.n < 2:
            return f"{self.statement}: {self.n} paired seed(s), no interval"
        return f"{self.statement}: {self.interval.text(unit=self.unit)}"

    def text(self) -> str:
        if not self.values:
            return f"{self.statement} (predicted {self.expect}): no paired runs -> **{INCONCLUSIVE}**"
        values = ", ".join(f"{value:+.3f}" for value in self.values)
        parts = [f"{self.statement} (predicted {self.expect}): per seed [{values}]"]
        if self.n >= 2:
            interval = self.interval
            parts.append(interval.text(digits=3, unit=self.unit))
            if interval.method == "bootstrap":  # for comparison: a bootstrap of few values runs narrow
                t = paired_interval(self.values, method="t")
                parts.append(f"t interval [{t.low:+.3f}, {t.high:+.3f}]")
        equivalence = self.equivalence
        if equivalence is not None and self.n >= 2:
            parts.append(f"TOST ±{equivalence.margin:g}: p = {equivalence.p_value:.3g}")
        if self.n < MIN_SEEDS:
            parts.append(f"fewer than {MIN_SEEDS} seeds")
        return "; ".join(parts) + f" -> **{self.verdict}**"

    def to_dict(self) -> dict[str, Any]:
        equivalence = self.equivalence
        return {
            "statement": self.statement, "expect": self.expect, "a": self.a, "b": self.b,
            "per_seed": self.per_seed, "n_seeds": self.n, "interval": self.interval.to_dict(),
            "tost": None if equivalence is None else {"margin": equivalence.margin, "p_value": equivalence.p_value},
            "verdict": self.verdict,
        }  # fmt: skip


@dataclass
class Correlation:
    """Spearman's rho of ``x`` and ``y`` pooled over ``seeds`` seeds, with a permutation p-value."""

    statement: str
    x: list[float]
    y: list[float]
    seeds: int
    expect: str  # "> 0" or "< 0"

    @property
    def n(self) -> int:
        return self.seeds

    @property
    def test(self) -> RankCorrelation:
        return spearman_test(self.x, self.y)

    @property
    def verdict(self) -> str:
        test = self.test
        if self.seeds < MIN_SEEDS or math.isnan(test.rho) or not test.p_value < SIGNIFICANCE:
            return INCONCLUSIVE
        return HOLDS if (test.rho > 0) == (self.expect == "> 0") else FAILS

    def evidence(self) -> str:
        test = self.test
        return f"{self.statement}: rho {test.rho:+.2f}, p = {test.p_value:.3g}, {test.n} runs"

    def text(self) -> str:
        test = self.test
        return (
            f"{self.statement} (predicted {self.expect}): Spearman rho {test.rho:+.3f} over {test.n} runs "
            f"from {self.seeds} seed(s), permutation p = {test.p_value:.4f} -> **{self.verdict}**"
        )

    def to_dict(self) -> dict[str, Any]:
        test = self.test
        return {
            "statement": self.statement, "expect": self.expect, "rho": test.rho, "p_value": test.p_value,
            "runs": test.n, "n_seeds": self.seeds, "verdict": self.verdict,
        }  # fmt: skip


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its tests' (``VERDICT_RULE``)."""
    if not verdicts:
        return INCONCLUSIVE
    for verdict in (FAILS, INCONCLUSIVE, ABOUT_AS_GOOD):
        if verdict in verdicts:
            return verdict
    return HOLDS


@dataclass
class ClaimResult:
    claim: str
    statement: str
    comparisons: list[Comparison | Correlation] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to REPORT.md)
    exact_verdict: str | None = None  # C3: decided by exact checks, not seeds
    gates: list[Gate] = field(default_factory=list)  # the regime its runs were measured in
    not_judged: str | None = None  # why the setting cannot judge this claim (no runs were made for it)

    @property
    def failing_gates(self) -> list[Gate]:
        return regime.failing(self.gates)

    @property
    def verdict(self) -> str:
        if self.not_judged is not None:
            return NOT_JUDGED
        if self.exact_verdict is not None:
            return self.exact_verdict
        if self.failing_gates:
            return OUTSIDE
        return combine([comparison.verdict for comparison in self.comparisons])

    @property
    def n_seeds(self) -> int | None:
        """The fewest seeds any of its tests had (None for C3)."""
        counts = [comparison.n for comparison in self.comparisons]
        return min(counts) if counts else None

    @property
    def decisive(self) -> Comparison | Correlation | None:
        """The test that decides the verdict: the first whose own verdict is the claim's (the first
        test when all hold), so that a one-line summary never shows a test that went the other way."""
        verdict = self.verdict
        for comparison in self.comparisons:
            if comparison.verdict == verdict:
                return comparison
        return self.comparisons[0] if self.comparisons else None

    def evidence(self) -> str:
        """One line for the README: the failing gate, or the deciding test's effect, interval and n."""
        if self.not_judged is not None:
            return self.not_judged
        if self.exact_verdict is not None:
            return "exact checks on the loss functions (float64)"
        if self.failing_gates:
            shown = [f"{gate.text()} [{gate.scope}]" for gate in self.failing_gates]
            more = f"; {len(shown) - 2} more failing" if len(shown) > 2 else ""
            return "; ".join(shown[:2]) + more
        if self.decisive is None:
            return "no runs"
        others = len(self.comparisons) - 1
        more = f" (+{others} other test{'s' if others > 1 else ''} in REPORT.md)" if others else ""
        return self.decisive.evidence() + more

    def to_dict(self) -> dict[str, Any]:
        first = self.decisive
        return {
            "claim": self.claim,
            "statement": self.statement,
            "verdict": self.verdict,
            "n_seeds": self.n_seeds,
            "interval": first.interval.to_dict() if isinstance(first, Comparison) else None,
            "evidence": self.evidence(),
            "gates": [gate.to_dict() for gate in self.gates],
            "failing_gates": [gate.name for gate in self.failing_gates],
            "tests": [comparison.to_dict() for comparison in self.comparisons],
            "notes": self.notes,
        }


# --- run lookup -------------------------------------------------------------------------------------


def teacher_names(config_teacher: Any) -> tuple[str, ...]:
    """The folder names of a ``kd.teacher`` setting (one name, or an ensemble's in order)."""
    return tuple(Path(spec).name for spec in teacher_specs(config_teacher))


class Runs:
    """Finished student runs of one experiment, looked up by loss, alpha, tau, model and teacher."""

    def __init__(self, records: list[RunRecord]) -> None:
        self.records = records

    def select(self, **match: Any) -> list[RunRecord]:
        def matches(record: RunRecord) -> bool:
            config = record.config
            fields = {
                "loss": config.kd.loss, "alpha": config.kd.alpha, "tau": config.kd.tau,
                "model": config.model, "teacher": teacher_names(config.kd.teacher),
            }  # fmt: skip
            return all(fields[key] == value for key, value in match.items())

        return [record for record in self.records if matches(record)]

    def per_seed(self, metric: str = ACC, **match: Any) -> dict[int, float]:
        selected = self.select(**match)
        seeds = [record.config.seed for record in selected]
        if len(set(seeds)) != len(seeds):
            raise UserError(
                f"several runs of one seed match {match}: a claim compares one run per seed; drop the --set "
                "that adds runs differing only in keys the claim does not look at"
            )
        return {
            record.config.seed: record.metric(metric)
            for record in sorted(selected, key=lambda r: r.config.seed)
        }

    def stat(self, metric: str = ACC, **match: Any) -> Stat:
        return Stat.of(list(self.per_seed(metric, **match).values()))

    def values(self, key: str, **match: Any) -> list[Any]:
        """Distinct values of ``key`` (loss, alpha, tau, model) among matching runs, sorted."""
        getters = {
            "loss": lambda c: c.kd.loss,
            "alpha": lambda c: c.kd.alpha,
            "tau": lambda c: c.kd.tau,
            "model": lambda c: c.model,
        }
        return sorted({getters[key](record.config) for record in self.select(**match)})

    def has(self, metric: str) -> bool:
        return any(not math.isnan(record.metric(metric)) for record in self.records)

    @property
    def seeds(self) -> list[int]:
        return sorted({record.config.seed for record in self.records})


@dataclass
class Experiment:
    """One recipe's sweep: its plan, its finished student runs and its finished teachers (by name)."""

    plan: SweepPlan
    students: list[RunRecord]
    teachers: dict[str, RunRecord]

    @property
    def runs(self) -> Runs:
        """The students that finished as asked: a diverged run has no result to compare."""
        return Runs(split_diverged(self.students)[0])

    @property
    def diverged(self) -> list[RunRecord]:
        """The students whose loss became NaN or inf: named in every claim they leave out."""
        return split_diverged(self.students)[1]

    @property
    def main_teacher(self) -> str:
        """The teacher the recipe's students read unless an entry says otherwise."""
        return str(self.plan.recipe.base.get("kd", {}).get("teacher"))

    def teacher(self, name: str | None = None) -> RunRecord | None:
        return self.teachers.get(name or self.main_teacher)


@dataclass
class Context:
    """Where a check may write (analyses, figures) and how it logs."""

    out: Path
    log: Callable[[str], None] = print

    def publish(self, source: Path, name: str) -> str:
        """Copy a figure into ``OUT/figures`` (what REPORT.md links; through OUT's ``OutputFolder``,
        never over a file kdlab did not write); returns the relative link."""
        from kdlab.runs import OutputFolder

        OutputFolder(self.out, "reproduce").copy_file(f"figures/{name}", source)
        return f"figures/{name}"


# --- tables -----------------------------------------------------------------------------------------

TITLES = {
    ACC: "test acc last (%)", VAL_ACC: "test acc at best val (%)", TEST_BEST: "test acc best-on-test (%, not judged)",
    "train_acc": "train acc (%)", "logit_distance": "logit distance", "logit_distance_centred": "centred distance",
    "logit_distance_rms": "RMS distance", "train_acc_clean_labels": "train acc, clean labels (%)",
}  # fmt: skip
DEFAULT_METRICS = (ACC, VAL_ACC, TEST_BEST, "train_acc")


def accuracy_table(
    rows: list[tuple[str, dict[str, Any]]], runs: Runs, metrics: tuple[str, ...] = DEFAULT_METRICS
) -> str:
    """Markdown: one row per ``(label, match)``, mean ± sd over seeds of each metric; the verdict metric
    also gets its best of the seeds. Metrics no run records (e.g. no validation split) are left out."""
    metrics = tuple(metric for metric in metrics if runs.has(metric))
    titles = []
    for metric in metrics:
        titles.append(TITLES[metric])
        if metric == ACC:
            titles.append("best of seeds (%)")
    lines = ["| run | seeds | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(titles)]
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
    """Markdown alpha (rows) x tau (columns) of a KL grid, mean ± sd over seeds."""
    lines = [
        "| alpha \\ tau | " + " | ".join(tau_label(t) for t in taus) + " |",
        "|---|" + "---|" * len(taus),
    ]
    for alpha in alphas:
        cells = [runs.stat(metric, loss="kl", alpha=alpha, tau=tau).text() for tau in taus]
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_over(series: list[dict[int, float]]) -> dict[int, float]:
    """Per seed, the mean of the series that all have that seed."""
    seeds = set.intersection(*(set(_finite(one)) for one in series)) if series else set()
    return {seed: statistics.fmean(one[seed] for one in series) for seed in sorted(seeds)}


def accuracy_difference(statement: str, a: dict[int, float], b: dict[int, float], expect: str) -> Comparison:
    """A Comparison of accuracies (points), with the equivalence margin."""
    return Comparison(statement, a, b, expect, " pts", EQUIVALENCE_MARGIN)


# --- the checks -------------------------------------------------------------------------------------
# Each fills in a ClaimResult from an experiment's runs: tables, tests (Comparison, Correlation), notes.


def check_c1(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    alphas, all_taus = runs.values("alpha", loss="kl"), runs.values("tau", loss="kl")
    taus = [tau for tau in all_taus if tau > 1]
    result.tables += [
        f"{TITLES[ACC]}:\n\n" + grid_table(runs, ACC, alphas, all_taus),
        "Train accuracy (%, clean training set, end of training):\n\n"
        + grid_table(runs, "train_acc", alphas, all_taus),
    ]
    if len(alphas) < 2 or not taus:
        result.notes.append("the grid needs at least two alphas and one tau > 1")
        return
    low, high = alphas[0], alphas[-1]
    over = "{" + ", ".join(tau_label(t) for t in taus) + "}"
    for metric, expect, name in ((ACC, "> 0", "test acc"), ("train_acc", "< 0", "train acc")):
        a = _mean_over([runs.per_seed(metric, loss="kl", alpha=high, tau=t) for t in taus])
        b = _mean_over([runs.per_seed(metric, loss="kl", alpha=low, tau=t) for t in taus])
        statement = f"{name}(alpha={high:g}) - {name}(alpha={low:g}), mean over tau in {over}"
        result.comparisons.append(accuracy_difference(statement, a, b, expect))


def check_c2(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    kl = {"loss": "kl", "alpha": 1.0}
    taus = runs.values("tau", **kl)
    result.tables.append(accuracy_table([(f"KL tau={tau_label(t)}", {**kl, "tau": t}) for t in taus], runs))
    finite_taus = [tau for tau in taus if tau != math.inf]
    if len(finite_taus) >= 2:
        low, high = finite_taus[0], finite_taus[-1]
        result.comparisons.append(accuracy_difference(
            f"acc(tau={high:g}) - acc(tau={low:g}) at alpha = 1",
            runs.per_seed(**kl, tau=high), runs.per_seed(**kl, tau=low), "> 0",
        ))  # fmt: skip
    result.comparisons.append(accuracy_difference(
        "acc(tau=inf) - acc(tau=20) at alpha = 1", runs.per_seed(**kl, tau=math.inf), runs.per_seed(**kl, tau=20.0), "~ 0",
    ))  # fmt: skip


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


DISTANCE = "logit_distance"


def check_c4(result: ClaimResult, experiment: Experiment, context: Context) -> None:
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
    if len(taus) >= 2:
        low, high = taus[0], taus[-1]
        result.comparisons.append(Comparison(
            f"distance(KL tau={tau_label(low)}) - distance(KL tau={tau_label(high)})",
            runs.per_seed(DISTANCE, **kl, tau=low), runs.per_seed(DISTANCE, **kl, tau=high), "> 0",
        ))  # fmt: skip
    by_tau = [_finite(runs.per_seed(DISTANCE, **kl, tau=t)) for t in taus]
    closest_kl = {
        seed: min(one[seed] for one in by_tau)
        for seed in runs.seeds
        if by_tau and all(seed in one for one in by_tau)
    }
    result.comparisons.append(
        Comparison(
            "min over tau of distance(KL) - distance(MSE)",
            closest_kl,
            runs.per_seed(DISTANCE, loss="mse"),
            "> 0",
        )
    )
    students = [record for record in runs.records if needs_teacher(record.config.kd.loss)]
    result.comparisons.append(Correlation(
        "logit distance vs test accuracy, the distilled students of this experiment",
        [record.metric(DISTANCE) for record in students], [record.metric(ACC) for record in students],
        len({record.config.seed for record in students}), "< 0",
    ))  # fmt: skip


def check_c5(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs, main = experiment.runs, experiment.main_teacher
    single = (main,)
    models = runs.values("model", teacher=single)
    rows = []
    for model in models:
        rows += [(f"{model} {label}", {"model": model, "teacher": single, **match}) for label, match in
                 (("CE", {"loss": "ce"}), ("KL tau=20", {"loss": "kl", "tau": 20.0}), ("MSE", {"loss": "mse"}))]  # fmt: skip
    result.comparisons.append(accuracy_difference(
        f"acc(MSE) - acc(KL tau=20), mean over the {len(models)} students of {main}",
        _mean_over([runs.per_seed(model=m, teacher=single, loss="mse") for m in models]),
        _mean_over([runs.per_seed(model=m, teacher=single, loss="kl", tau=20.0) for m in models]),
        "> 0",
    ))  # fmt: skip
    ensembles = sorted({teacher_names(r.config.kd.teacher) for r in runs.records} - {single}, key=len)
    for members in (m for m in ensembles if len(m) > 1):
        rows += [(f"ensemble {'+'.join(members)} {label}", {"teacher": members, **match}) for label, match in
                 (("KL tau=20", {"loss": "kl", "tau": 20.0}), ("MSE", {"loss": "mse"}))]  # fmt: skip
        result.comparisons.append(accuracy_difference(
            f"acc(MSE) - acc(KL tau=20), ensemble of {len(members)}",
            runs.per_seed(teacher=members, loss="mse"), runs.per_seed(teacher=members, loss="kl", tau=20.0), "> 0",
        ))  # fmt: skip
        reductions = sorted({r.config.kd.ensemble for r in runs.select(teacher=members)})
        result.notes.append(
            f"Ensemble teacher {'+'.join(members)}: the {' / '.join(reductions)} of its members' logits "
            "(`kd.ensemble`; the official code sums them)."
        )
    result.tables.insert(0, accuracy_table(rows, runs))


def _c6_analyses(experiment: Experiment, context: Context) -> dict[int, dict[str, Any]]:
    """``kdlab analyze`` of each seed's KL tau=3, KL tau=20 and MSE students against the teacher."""
    from kdlab.analysis.analyze import analyze_runs

    analyses = {}
    runs, teacher = experiment.runs, experiment.teacher()
    for seed in runs.seeds:
        chosen = [
            runs.select(loss="kl", alpha=1.0, tau=3.0), runs.select(loss="kl", alpha=1.0, tau=20.0), runs.select(loss="mse"),
        ]  # fmt: skip
        folders = [str(record.path) for group in chosen for record in group if record.config.seed == seed]
        if teacher is None or len(folders) < 3:
            continue
        analyses[seed] = analyze_runs(
            folders, teacher=str(teacher.path), out=context.out / "analysis" / f"seed{seed}", log=context.log
        )
    return analyses


def check_c6(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    analyses = _c6_analyses(experiment, context)
    result.notes.append(
        "Per student: W1 = earth mover's distance between its ||r||_2 distribution and the teacher's; projection "
        "distance = mean over the three classes' training images of the distance between the student's and the "
        "teacher's projected points (each in its own template plane). Smaller = closer to the teacher."
    )
    lines = [
        "| seed | run | mean ||r||_2 | W1 to teacher | projection distance | agreement (%) |",
        "|---|---|---|---|---|---|",
    ]
    metrics: dict[str, dict[str, dict[int, float]]] = {}
    for seed, analysis in sorted(analyses.items()):
        for name, entry in analysis["runs"].items():
            norm = entry.get("penultimate_norm", {}).get("mean", math.nan)
            if name == "teacher":
                lines.append(f"| {seed} | teacher | {norm:.3f} | - | - | - |")
                continue
            w1 = entry.get("penultimate_norm_w1_to_teacher", math.nan)
            gap = entry.get("projection_distance_to_teacher", math.nan)
            metrics.setdefault(entry["label"], {}).setdefault("w1", {})[seed] = w1
            metrics[entry["label"]].setdefault("projection", {})[seed] = gap
            lines.append(
                f"| {seed} | {entry['label']} | {norm:.3f} | {w1:.3f} | {gap:.3f} | {entry.get('agreement', math.nan):.2f} |"
            )
    result.tables.append("\n".join(lines))
    mse = metrics.get("MSE", {})
    for tau in (3, 20):
        kl = metrics.get(f"KL tau={tau}", {})
        for key, name in (("w1", "W1 to teacher"), ("projection", "projection distance")):
            result.comparisons.append(
                Comparison(f"{name}(KL tau={tau}) - {name}(MSE)", kl.get(key, {}), mse.get(key, {}), "> 0")
            )
    if analyses:
        seed = min(analyses)
        for name, caption in (("projection", "3-class projection"), ("penultimate_norm", "pdf of ||r||_2")):
            source = context.out / "analysis" / f"seed{seed}" / f"{name}.png"
            if source.is_file():
                result.figures.append((f"{caption} (seed {seed})", context.publish(source, f"c6-{name}.png")))


def check_c7(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    taus = runs.values("tau", loss="kl", alpha=1.0)
    rows = [(f"KL tau={tau_label(t)}", {"loss": "kl", "tau": t}) for t in taus]
    rows += [("MSE", {"loss": "mse"}), ("CE", {"loss": "ce"})]
    result.tables.append(accuracy_table(rows, runs))
    small = runs.per_seed(loss="kl", tau=1.0)
    for label, other in (
        ("KL tau=inf", runs.per_seed(loss="kl", tau=math.inf)),
        ("MSE", runs.per_seed(loss="mse")),
    ):
        result.comparisons.append(accuracy_difference(f"acc(KL tau=1) - acc({label})", small, other, "> 0"))


def sequential_teachers(experiment: Experiment) -> tuple[str, str, str]:
    """``(large, medium, medium distilled from large)``: the recipe's default teacher, the teacher trained
    alone and the one distilled from another."""
    teachers = experiment.plan.recipe.teachers
    large = experiment.main_teacher
    derived = [name for name, entry in teachers.items() if flatten(entry).get("kd.teacher")]
    alone = [name for name in teachers if name != large and name not in derived]
    if len(derived) != 1 or len(alone) != 1:
        raise UserError(
            f"C8 needs the sequential recipe's three teachers (large, medium, medium distilled from large); "
            f"{experiment.plan.recipe.name} has {', '.join(teachers)}: do not --set other teachers"
        )
    return large, alone[0], derived[0]


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
        (label, runs.per_seed(teacher=names, loss="kl")) for label, names in paths.items()
    ]
    result.comparisons += [
        accuracy_difference(f"acc({first}) - acc({second})", a, b, "> 0"),
        accuracy_difference(f"acc({second}) - acc({third})", b, c, "> 0"),
    ]


def check_c9(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    noise = experiment.plan.recipe.base.get("data", {}).get("label_noise")
    result.notes.append(
        f"Training labels of teacher and students: {noise or 'no'} noise; the test set is clean. Small tau = "
        "the mean of the tau = 0.5 and tau = 1 accuracies, per seed."
    )
    taus = runs.values("tau", loss="kl")
    rows = [(f"KL tau={tau_label(t)}", {"loss": "kl", "tau": t}) for t in taus]
    rows += [("MSE", {"loss": "mse"}), ("CE", {"loss": "ce"})]
    result.tables.append(accuracy_table(rows, runs, (*DEFAULT_METRICS, "train_acc_clean_labels")))
    small = _mean_over([runs.per_seed(loss="kl", tau=t) for t in (0.5, 1.0)])
    for label, other in (
        ("KL tau=inf", runs.per_seed(loss="kl", tau=math.inf)),
        ("MSE", runs.per_seed(loss="mse")),
    ):
        result.comparisons.append(
            accuracy_difference(f"acc(KL small tau) - acc({label})", small, other, "> 0")
        )


# --- regimes: the gates each claim's runs must pass ---------------------------------------------------


def _scope(teacher: RunRecord, students: list[RunRecord]) -> str:
    """``pairs/: convnet-32-b (convnet-32) -> mlp-64 CE, 3 seeds``: the students' folder, the teacher's name
    (and model when they differ), the CE students' model and seeds."""
    folder = f"{students[0].path.parent.name}/: " if students else ""
    return folder + regime.scope_text(teacher.path.name, teacher.config.model, students)


def _gates(experiment: Experiment, teacher_name: str, **match: Any) -> list[Gate]:
    """G1-G3 of one teacher of the experiment against its CE students matching ``match``."""
    teacher = experiment.teacher(teacher_name)
    students = experiment.runs.select(loss="ce", **match)
    if teacher is None:
        return [Gate.measure(rule, math.nan, f"teacher {teacher_name}: not trained") for rule in regime.GATES]
    return regime.check_gates(teacher, students, _scope(teacher, students))


def main_regime(experiment: Experiment) -> list[Gate]:
    """The recipe's teacher and its CE students (every seed)."""
    return _gates(experiment, experiment.main_teacher)


def pairs_regime(experiment: Experiment) -> list[Gate]:
    """Every student model against the main teacher, and each other (ensemble member) teacher against
    the base student model."""
    main, runs = experiment.main_teacher, experiment.runs
    gates = [
        gate for model in runs.values("model", loss="ce") for gate in _gates(experiment, main, model=model)
    ]
    base_model = experiment.plan.recipe.base.get("model")
    for name in experiment.plan.recipe.teachers:
        if name != main:
            gates += _gates(experiment, name, model=base_model)
    return gates


def poor_teacher_condition(experiment: Experiment) -> list[Gate]:
    teacher, students = experiment.teacher(), experiment.runs.select(loss="ce")
    if teacher is None:
        return [Gate.measure(regime.P1, math.nan, "poor teacher: not trained")]
    return regime.check_poor_teacher(teacher, students, _scope(teacher, students))


def label_noise_condition(experiment: Experiment) -> list[Gate]:
    students = experiment.runs.records
    return regime.check_label_noise(students, f"{len(students)} student runs")


# --- the claim table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim of shared/PAPER.md: the recipe whose runs it reads (None: checked exactly), the check
    that fills its result, and the regime (gates) its runs must be in to be judged."""

    id: str
    statement: str
    recipe: str | None
    check: Callable[[ClaimResult, Experiment | None, Context], None]
    regime: Callable[[Experiment], list[Gate]] | None = None


CLAIMS: dict[str, Claim] = {claim.id: claim for claim in (
    Claim("C1", "Higher alpha gives higher test and lower train accuracy (tau > 1).", "grid", check_c1, main_regime),
    Claim("C2", "At alpha = 1, test accuracy rises with tau; tau = inf is about as good as tau = 20.", "grid",
          check_c2, main_regime),
    Claim("C3", "The two limits of the theorem hold (checked numerically, exactly).", None, check_c3),
    Claim("C4", "Larger tau gives a smaller logit distance ||z_s - z_t||_2 on the training set, but KL never reaches "
          "full logit matching; MSE gets closest. Logit matching correlates with accuracy.", "logit-distance",
          check_c4, main_regime),
    Claim("C5", "MSE beats KL across teacher/student pairs and with ensemble teachers.", "pairs", check_c5,
          pairs_regime),
    Claim("C6", "MSE students' penultimate representations follow the teacher's more closely (pdf of ||r||_2; 3-class "
          "projection onto the plane of the class templates).", "penultimate", check_c6, main_regime),
    Claim("C7", "With a poorly trained teacher, label matching (small tau) is preferable (tested: KL tau = 1 against "
          "tau = inf and MSE).", "poor-teacher", check_c7, poor_teacher_condition),
    Claim("C8", "Sequential distillation: medium -> small beats large -> medium -> small, which beats large -> small.",
          "sequential", check_c8, main_regime),
    Claim("C9", "Under label noise in the training set, KL with small tau (0.5 or 1) beats tau = inf and MSE.",
          "label-noise", check_c9, label_noise_condition),
)}  # fmt: skip


def judge(claim_id: str, experiment: Experiment | None, context: Context) -> ClaimResult:
    """Run one claim's check on its experiment's runs and measure its regime."""
    claim = CLAIMS[claim_id]
    result = ClaimResult(claim.id, claim.statement)
    claim.check(result, experiment, context)
    if claim.regime is not None and experiment is not None:
        result.gates = claim.regime(experiment)
    if experiment is not None and experiment.diverged:
        named = "; ".join(f"{record.path.name} ({record.diverged_text()})" for record in experiment.diverged)
        result.notes.append(
            f"left out of every table and test: {len(experiment.diverged)} run(s) that diverged: {named}"
        )
    return result
