"""Statistics of per-seed results, on ``scipy.stats``: summaries, paired intervals, equivalence, rank correlation.

Everything here is a pure function of numbers; the verdict rules that read these statistics live in
``kdlab.experiments.claims``. Random resampling (bootstrap, permutations) uses a generator seeded
with ``SEED``, so the same numbers always give the same result.

- :class:`Stat`: mean, sample standard deviation and best value over seeds (NaN values dropped).
- :func:`paired_interval`: a ``CONFIDENCE`` interval for the mean of per-seed paired differences:
  Student's t for ``n < BOOTSTRAP_MIN_N``, a BCa bootstrap of the mean from ``BOOTSTRAP_MIN_N`` on.
- :func:`tost`: two one-sided t tests against an equivalence margin ``(-m, +m)``.
- :func:`spearman_test`: Spearman's rho with a two-sided permutation p-value (exact when the
  number of orderings is at most ``PERMUTATIONS``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
# Below 10 values a bootstrap interval of the mean under-covers (it resamples few distinct values and
# cannot see the tails); Student's t is used there, the bootstrap only from 10 values on.
BOOTSTRAP_MIN_N = 10
BOOTSTRAP_RESAMPLES = 10_000
PERMUTATIONS = 10_000
SEED = 0


def finite(values: Sequence[float]) -> list[float]:
    """The values that are not NaN, as floats (infinities are kept: they are numbers)."""
    return [float(value) for value in values if not math.isnan(float(value))]


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one value) and best (largest) value over seeds."""

    mean: float
    std: float
    n: int
    best: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = finite(values)
        if not values:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values), max(values))

    def text(self, digits: int = 2) -> str:
        """``mean ± std`` (just the mean for one value; ``-`` for none)."""
        if self.n == 0:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"

    def best_text(self, digits: int = 2) -> str:
        return "-" if self.n == 0 else f"{self.best:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """A confidence interval for the mean of ``n`` values; ``method`` is ``t``, ``bootstrap`` or
    ``none`` (fewer than two values: the bounds are NaN)."""

    mean: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = CONFIDENCE

    def text(self, digits: int = 2, unit: str = "") -> str:
        if self.method == "none":
            return f"mean {self.mean:+.{digits}f}{unit}, n = {self.n}: no interval"
        return (
            f"mean {self.mean:+.{digits}f}{unit}, {100 * self.confidence:g}% CI [{self.low:+.{digits}f}, "
            f"{self.high:+.{digits}f}] ({self.method}, n = {self.n})"
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
            "method": self.method, "confidence": self.confidence,
        }  # fmt: skip


def t_intervals(
    values: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Student's t over the last axis of ``values`` ``[..., n]`` (n >= 2, no NaN), vectorised over the
    rest: ``(mean, low, high, p)``, the interval ``mean -+ t(1/2 + confidence/2, n - 1) * sd / sqrt(n)``
    and the two-sided p-value of ``mean = 0`` (``scipy.stats.t``; what ``ttest_1samp`` computes). Equal
    values give the point interval and p = 0 (p = 1 when they are 0)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    se = values.std(axis=-1, ddof=1) / math.sqrt(n)
    quantile = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * scipy_stats.t.sf(np.abs(mean / se), n - 1)
    flat = se == 0
    p = np.where(flat, np.where(mean == 0, 1.0, 0.0), p)
    return mean, mean - quantile * se, mean + quantile * se, p


def paired_interval(
    differences: Sequence[float], confidence: float = CONFIDENCE, seed: int = SEED, method: str | None = None
) -> Interval:
    """Confidence interval for the mean of per-seed differences ``A_s - B_s`` (NaNs dropped).

    ``n < BOOTSTRAP_MIN_N``: Student's t with ``n - 1`` degrees of freedom (``scipy.stats.ttest_1samp``).
    From ``BOOTSTRAP_MIN_N`` on: the BCa bootstrap of the mean (``scipy.stats.bootstrap``,
    ``BOOTSTRAP_RESAMPLES`` resamples, generator seeded with ``seed``). Equal differences (zero
    spread) give the point interval ``[d, d]``. ``method`` (``"t"`` or ``"bootstrap"``) overrides the choice.
    """
    values = np.asarray(finite(differences), dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "none", confidence)
    method = method or ("t" if n < BOOTSTRAP_MIN_N else "bootstrap")
    if np.ptp(values) == 0:
        return Interval(mean, mean, mean, n, method, confidence)
    if method == "t":
        _, low, high, _ = t_intervals(values, confidence)
    else:
        result = scipy_stats.bootstrap(
            (values,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
            method="BCa", rng=np.random.default_rng(seed),
        )  # fmt: skip
        low, high = result.confidence_interval
    return Interval(mean, float(low), float(high), n, method, confidence)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of ``|mean| < margin``: ``p_value`` is the larger of the two one-sided
    p-values (NaN with fewer than two values)."""

    margin: float
    p_value: float
    n: int

    def equivalent(self, level: float = 1 - CONFIDENCE) -> bool:
        return self.p_value < level


def tost(differences: Sequence[float], margin: float) -> Equivalence:
    """TOST with one-sample t tests: ``H0: mean <= -margin`` (alternative greater) and ``H0: mean >= margin``
    (alternative less). Equal differences strictly inside the margin give p = 0, else p = 1."""
    values = np.asarray(finite(differences), dtype=np.float64)
    n = len(values)
    if n < 2:
        return Equivalence(margin, math.nan, n)
    if np.ptp(values) == 0:
        return Equivalence(margin, 0.0 if abs(values[0]) < margin else 1.0, n)
    lower = scipy_stats.ttest_1samp(values, -margin, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(values, margin, alternative="less").pvalue
    return Equivalence(margin, float(max(lower, upper)), n)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho over ``n`` pairs with a two-sided permutation p-value (NaN when a side is constant)."""

    rho: float
    p_value: float
    n: int


def spearman_test(
    x: Sequence[float], y: Sequence[float], permutations: int = PERMUTATIONS, seed: int = SEED
) -> RankCorrelation:
    """Spearman's rho of the pairs ``(x_i, y_i)`` (pairs with a NaN dropped) and its two-sided
    permutation p-value (``scipy.stats.permutation_test``, pairings permuted; exact when ``n!`` is at
    most ``permutations``, else ``permutations`` random orderings from a generator seeded with ``seed``)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]
    n = len(pairs)
    if n < 3:
        return RankCorrelation(math.nan, math.nan, n)
    xs, ys = (np.array(side) for side in zip(*pairs, strict=True))
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return RankCorrelation(math.nan, math.nan, n)
    y_ranks = scipy_stats.rankdata(ys)
    y_centred = (y_ranks - y_ranks.mean()) / np.linalg.norm(y_ranks - y_ranks.mean())

    def rho(x_ranks: np.ndarray, axis: int = -1) -> np.ndarray:
        # Pearson correlation of ranks = Spearman's rho; vectorised over resamples along ``axis``.
        centred = x_ranks - x_ranks.mean(axis=axis, keepdims=True)
        return (centred * y_centred).sum(axis=axis) / np.linalg.norm(centred, axis=axis)

    result = scipy_stats.permutation_test(
        (scipy_stats.rankdata(xs),), rho, permutation_type="pairings", n_resamples=permutations,
        alternative="two-sided", vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    observed = float(scipy_stats.spearmanr(xs, ys).statistic)
    return RankCorrelation(observed, float(result.pvalue), n)


# --- two sources of variance: teacher seeds and student seeds ---------------------------------------


@dataclass(frozen=True)
class MeanTest:
    """A t test of ``mean = 0`` over ``n`` values: the two-sided ``p_value`` and the ``interval`` at
    ``interval.confidence``. Equal values give the point interval and p = 0 (p = 1 when they are 0);
    fewer than two values give NaN."""

    interval: Interval
    p_value: float

    @property
    def n(self) -> int:
        return self.interval.n


def mean_test(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanTest:
    """Student's t over ``values`` (NaNs dropped): the two-sided p-value of ``mean = 0`` and the interval
    at ``confidence`` (``t_intervals``; the interval ``paired_interval(values, method="t")`` gives)."""
    kept = np.asarray(finite(values), dtype=np.float64)
    if len(kept) < 2:
        return MeanTest(paired_interval(kept, confidence, method="t"), math.nan)
    mean, low, high, p = t_intervals(kept, confidence)
    if np.ptp(kept) == 0:
        low = high = mean  # exactly, not mean -+ 0 * quantile
    return MeanTest(Interval(float(mean), float(low), float(high), len(kept), "t", confidence), float(p))


Cells = dict[tuple[int, int], float]  # (teacher seed, student seed) -> value


def teacher_means(cells: Cells) -> dict[int, float]:
    """``{teacher seed: mean of its student seeds' values}`` (NaN values dropped; a teacher seed with
    none left out). With students paired within a teacher seed, each mean carries one draw of the
    teacher's variance and 1/S of the students': the teacher means are independent, the cells are not."""
    grouped: dict[int, list[float]] = {}
    for (teacher, _), value in sorted(cells.items()):
        if not math.isnan(value):
            grouped.setdefault(teacher, []).append(value)
    return {teacher: statistics.fmean(values) for teacher, values in grouped.items()}


def teacher_level_test(cells: Cells, confidence: float = CONFIDENCE) -> MeanTest:
    """The t test over the teacher seeds' means (``teacher_means``): an interval that covers both the
    teacher-to-teacher and the student-to-student variance, with ``T - 1`` degrees of freedom."""
    return mean_test(list(teacher_means(cells).values()), confidence)


def student_level_interval(cells: Cells, confidence: float = CONFIDENCE) -> Interval:
    """``paired_interval`` over every cell as if independent (t below ``BOOTSTRAP_MIN_N`` cells, BCa
    from there): it covers the student seeds' variance only, and runs narrow when teachers differ."""
    return paired_interval(list(cells.values()), confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order. With ``p_(1) <= ... <= p_(m)`` sorted,
    ``adjusted_(j) = max over i <= j of min(1, (m - i + 1) * p_(i))``; a test is rejected at level
    ``a`` when its adjusted p-value is below ``a`` (family-wise error <= a, any dependence)."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of the pairs (``scipy.stats.spearmanr``; NaN when fewer than 3 pairs or a side is
    constant, NaN pairs dropped)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan
    xs, ys = (np.array(side) for side in zip(*pairs, strict=True))
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan
    return float(scipy_stats.spearmanr(xs, ys).statistic)


@dataclass(frozen=True)
class PageTest:
    """Page's L test of an increasing trend over ``k`` ordered treatments in ``blocks`` blocks."""

    statistic: float
    p_value: float
    blocks: int


def page_test(blocks: Sequence[Sequence[float]]) -> PageTest:
    """``scipy.stats.page_trend_test`` (one-sided: the columns' values increase in their order) over the
    complete rows of ``blocks`` (rows with a NaN dropped); NaN with fewer than 2 rows or 3 columns."""
    rows = [list(map(float, row)) for row in blocks if not any(math.isnan(float(v)) for v in row)]
    if len(rows) < 2 or len(rows[0]) < 3:
        return PageTest(math.nan, math.nan, len(rows))
    result = scipy_stats.page_trend_test(np.array(rows))
    return PageTest(float(result.statistic), float(result.pvalue), len(rows))
