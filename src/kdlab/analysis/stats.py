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
        low, high = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
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
