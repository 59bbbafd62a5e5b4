"""Verdicts (protocol v2): the statistics (kdlab.analysis.stats) against hand-computed values and a
coverage simulation with two variance sources, each branch of the verdict rule on synthetic teacher-seed
values, Holm's correction, trends and peaks, the regime gates of every teacher a claim reads, and the
claim table on synthetic rows of runs.csv."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kdlab.analysis.stats import (
    Stat,
    holm,
    mean_test,
    page_test,
    paired_interval,
    spearman_test,
    student_level_interval,
    t_intervals,
    teacher_level_test,
    teacher_means,
    tost,
)
from kdlab.errors import UserError
from kdlab.experiments.claims import CLAIMS, judge, judge_all
from kdlab.experiments.evidence import experiments_from_rows
from kdlab.experiments.publish import claims_table, update_readme
from kdlab.experiments.regime import GATES_TEXT, check_gates, failing, gates_table
from kdlab.experiments.runtable import make_row
from kdlab.experiments.verdicts import (
    ABOUT_AS_GOOD,
    ACCURACY_MARGIN,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    OUTSIDE,
    VERDICTS,
    ClaimResult,
    Correlation,
    Difference,
    Trend,
    accuracy_difference,
    apply_holm,
    combine,
)

# --- statistics ------------------------------------------------------------------------------------


def test_stat_mean_sd_and_best_of_seeds():
    stat = Stat.of([80.0, 82.0, math.nan, 84.0])
    assert (stat.mean, stat.std, stat.n, stat.best) == (82.0, 2.0, 3, 84.0)
    assert stat.text() == "82.00 ± 2.00" and stat.best_text() == "84.00"
    assert Stat.of([70.0]).text() == "70.00" and Stat.of([]).text() == "-"


def test_paired_t_interval_matches_the_closed_form():
    differences = [1.0, 1.1, 1.3]
    interval = paired_interval(differences)
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t_975_2 = 4.302652729911275  # Student's t, 2 degrees of freedom, 97.5th percentile (tables)
    assert interval.method == "t" and interval.n == 3
    assert interval.mean == pytest.approx(mean)
    assert interval.low == pytest.approx(mean - t_975_2 * sd / math.sqrt(3), rel=1e-9)
    assert interval.high == pytest.approx(mean + t_975_2 * sd / math.sqrt(3), rel=1e-9)
    assert paired_interval([0.7, 0.7, 0.7]).low == paired_interval([0.7, 0.7, 0.7]).high == pytest.approx(0.7)
    single = paired_interval([2.0, math.nan])
    assert single.method == "none" and math.isnan(single.low)


def test_bootstrap_interval_from_ten_seeds_is_seeded():
    differences = [1.0, 1.1, 1.3, 0.2, 0.5, 0.9, 0.7, 1.2, 0.4, 0.8]
    first, second = paired_interval(differences), paired_interval(differences)
    assert first == second and first.method == "bootstrap" and first.n == 10
    mean = sum(differences) / 10
    assert first.low < mean < first.high
    assert first.low > 0.2 and first.high < 1.3  # the mean of ten values moves less than the values
    assert paired_interval(differences[:9]).method == "t"  # below ten values: Student's t


def test_tost_is_two_one_sided_t_tests():
    differences = [0.1, -0.1, 0.2, 0.05]
    n = len(differences)
    mean = sum(differences) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    lower = scipy_stats.t.sf((mean + 0.5) / se, n - 1)  # H0: mean <= -0.5
    upper = scipy_stats.t.cdf((mean - 0.5) / se, n - 1)  # H0: mean >= +0.5
    result = tost(differences, 0.5)
    assert result.p_value == pytest.approx(max(lower, upper), rel=1e-9) and result.equivalent()
    assert not tost([0.4, 0.6, 0.5], 0.5).equivalent()  # centred on the margin itself
    assert tost([0.2, 0.2, 0.2], 0.5).p_value == 0.0 and tost([0.6, 0.6], 0.5).p_value == 1.0


def test_spearman_with_exact_and_seeded_permutation_p_values():
    assert spearman_test([1, 2, 2, 3], [1, 2, 3, 4]).rho == pytest.approx(0.9486832980505138)  # ties averaged
    perfect = spearman_test([1, 2, 3, 4], [10, 20, 25, 40])
    # 4! = 24 orderings, all enumerated: only the identity and its reverse reach |rho| = 1.
    assert perfect.rho == pytest.approx(1.0) and perfect.p_value == pytest.approx(2 / 24)
    x = [1.0, 2, 3, 4, 5, 6, 7, 8]
    weak = spearman_test(x, [3.0, 1, 4, 8, 2, 6, 5, 7])
    assert weak.rho == pytest.approx(4 / 7) and weak.p_value == pytest.approx(0.154, abs=0.01)
    assert weak == spearman_test(x, [3.0, 1, 4, 8, 2, 6, 5, 7])  # seeded
    assert math.isnan(spearman_test([1, 1, 1], [1, 2, 3]).rho)


# --- two variance sources: teacher seeds and student seeds -----------------------------------------


def test_the_t_test_over_teacher_means_matches_the_closed_form():
    cells = {(0, 0): 1.0, (0, 1): 1.2, (1, 0): 0.7, (1, 1): 0.9, (2, 0): 1.4, (2, 1): math.nan, (2, 2): 1.2}
    assert teacher_means(cells) == {0: pytest.approx(1.1), 1: pytest.approx(0.8), 2: pytest.approx(1.3)}
    test = teacher_level_test(cells)
    values = [1.1, 0.8, 1.3]
    mean, sd = sum(values) / 3, math.sqrt(sum((v - 1.0666666666666667) ** 2 for v in values) / 2)
    t = mean / (sd / math.sqrt(3))
    assert test.p_value == pytest.approx(2 * scipy_stats.t.sf(t, 2), rel=1e-9)  # two-sided, 2 df
    assert test.interval.low == pytest.approx(mean - 4.302652729911275 * sd / math.sqrt(3), rel=1e-9)
    assert test.n == 3 and test.interval.method == "t"
    assert mean_test([0.5, 0.5, 0.5]).p_value == 0.0 and mean_test([0.0, 0.0]).p_value == 1.0
    assert math.isnan(mean_test([1.0]).p_value)
    assert student_level_interval(cells).n == 6  # every finite cell, as if independent


def test_the_teacher_level_interval_covers_the_true_mean_with_both_variance_sources():
    """10,000 simulated experiments (T = 3 teacher seeds, S = 10 student seeds, teacher SD 0.3, student SD
    0.5, true mean 0.2): the 95% t interval over teacher means covers 0.2 in 93-97% of them; the interval
    over the 30 cells as if independent covers far less: it ignores the teachers' variance. Vectorised
    (``t_intervals``, which ``teacher_level_test`` runs); the first 200 also through ``teacher_level_test``."""
    generator = np.random.default_rng(2024)
    experiments, teachers, students, true_mean = 10_000, 3, 10, 0.2
    teacher_effects = generator.normal(0.0, 0.3, (experiments, teachers, 1))
    values = true_mean + teacher_effects + generator.normal(0.0, 0.5, (experiments, teachers, students))
    _, low, high, _ = t_intervals(values.mean(axis=2))
    coverage = float(np.mean((low <= true_mean) & (true_mean <= high)))
    assert 0.93 <= coverage <= 0.97, coverage
    _, naive_low, naive_high, _ = t_intervals(values.reshape(experiments, teachers * students))
    naive = float(np.mean((naive_low <= true_mean) & (true_mean <= naive_high)))
    assert naive < 0.85, naive
    for index in range(200):
        cells = {(k, s): float(values[index, k, s]) for k in range(teachers) for s in range(students)}
        interval = teacher_level_test(cells).interval
        assert (interval.low, interval.high) == (pytest.approx(low[index]), pytest.approx(high[index]))


def test_holm_adjusts_against_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept at 0.06 (step-down)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_page_trend_test_is_scipys_on_complete_blocks():
    blocks = [[1.0, 2.0, 3.0], [1.5, 2.5, 2.0], [0.5, 1.0, 2.0], [1.0, math.nan, 3.0]]
    page = page_test(blocks)
    expected = scipy_stats.page_trend_test(np.array(blocks[:3]))
    assert page.blocks == 3 and page.statistic == expected.statistic and page.p_value == expected.pvalue
    assert math.isnan(page_test([[1.0, 2.0, 3.0]]).p_value)


# --- the verdict rule, branch by branch ----------------------------------------------------------------


def cells_of(teacher_values: list[float], students: int = 2) -> dict[tuple[int, int], float]:
    """Cells whose teacher-seed means are ``teacher_values`` (student seeds spread +-0.1 around them)."""
    spread = [0.1 * (2 * s - (students - 1)) / max(students - 1, 1) for s in range(students)]
    return {(k, s): value + spread[s] for k, value in enumerate(teacher_values) for s in range(students)}


def difference(teacher_values: list[float], expect: str = "> 0") -> Difference:
    """``A - B`` whose per-teacher-seed means are ``teacher_values`` (B = 80 everywhere)."""
    a = {cell: 80.0 + value for cell, value in cells_of(teacher_values).items()}
    b = dict.fromkeys(a, 80.0)
    if expect == "~ 0":
        return Difference("d", "~ 0", ACCURACY_MARGIN, " pts", components=[("", a, b)])
    return accuracy_difference("d", a, b, expect)


V1_C5 = [-0.083, -0.110, -0.333, +0.097, -0.097]  # v1's C5 per seed: mean -0.105, 95% CI [-0.295, +0.084]


@pytest.mark.parametrize(
    ("values", "expect", "verdict"),
    [
        ([1.0, 1.2, 0.9], "> 0", HOLDS),  # t interval [0.65, 1.41]: above 0
        ([1.0, 1.2, 0.9], "< 0", FAILS),  # wholly on the other side
        ([-1.0, -1.2, -0.9], "< 0", HOLDS),
        ([1.0, -0.8, 0.3], "> 0", INCONCLUSIVE),  # spans 0 and the predicted size
        ([0.05, -0.02, 0.01, 0.03], "> 0", NOT_SUPPORTED),  # [-0.03, +0.07]: excludes +0.25, not 0
        (V1_C5, "> 0", NOT_SUPPORTED),  # the C5: "MSE is better" is not supported
        ([0.05, -0.02, 0.01, 0.03], "~ 0", ABOUT_AS_GOOD),  # equality predicted: within +-0.25
        ([1.5, 1.6, 1.55], "~ 0", FAILS),  # wholly beyond +0.25
        ([0.2, 0.9, -0.1], "~ 0", INCONCLUSIVE),
        ([5.0, 5.1], "> 0", INCONCLUSIVE),  # two teacher seeds: no verdict, however large
        ([0.8, 1.1, 0.6, 1.3, -0.9], "> 0", INCONCLUSIVE),
    ],
)
def test_difference_verdicts(values, expect, verdict):
    assert difference(values, expect).verdict == verdict


def test_a_directional_test_is_never_about_as_good_and_a_small_effect_says_so():
    interval = difference(V1_C5).interval
    assert (interval.low, interval.high) == (
        pytest.approx(-0.2949, abs=1e-3),
        pytest.approx(0.0837, abs=1e-3),
    )
    verdicts = {difference(values, expect).verdict for values in ([0.05, 0.02, 0.01], V1_C5, [0.1, 0.12, 0.11])
                for expect in ("> 0", "< 0")}  # fmt: skip
    assert ABOUT_AS_GOOD not in verdicts
    small = difference([0.1, 0.11, 0.12])  # holds, but the whole interval lies below the predicted 0.25
    assert small.verdict == HOLDS and "smaller than the predicted size 0.25 pts" in small.text()
    assert "**holds; smaller than the predicted size" in small.text()


def test_holm_moves_the_interval_so_that_it_excludes_zero_exactly_when_holm_rejects():
    test = difference([0.3, 0.5, 0.4])  # t = 6.93 with 2 df: p = 0.0202
    assert test.test.p_value == pytest.approx(0.0202, abs=1e-4) and test.verdict == HOLDS
    for adjusted in (0.03, 0.0499, 0.0501, 0.101):
        test.holm_p = adjusted
        assert (test.interval.low > 0) == (adjusted < 0.05)
        assert test.interval.confidence == pytest.approx(1 - 0.05 * 0.0202 / adjusted, abs=1e-4)
    assert test.verdict == INCONCLUSIVE  # adjusted p 0.101: the interval at 99% reaches below 0


def test_a_trend_is_tested_over_every_grid_point_and_the_report_says_where_it_peaks():
    """The issue's C2: the curve peaks at tau = 3 and falls to tau = inf (v1 means per tau); per teacher
    seed rho is about 0, so the rise is not supported, where v1's tau=20-vs-tau=1 test said holds."""
    taus = ["tau=1", "tau=3", "tau=5", "tau=20", "tau=inf"]
    v1 = [84.18, 84.79, 84.66, 84.49, 84.30]
    jitter = [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -0.26, 0.0, 0.0], [0.07, -0.19, 0.0, -0.29, 0.0]]
    points = [(label, {(k, 0): v1[j] + jitter[k][j] for k in range(3)}) for j, label in enumerate(taus)]
    peaked = Trend("acc over tau", "> 0", points=points)
    assert peaked.teacher_values() == {0: pytest.approx(0.0), 1: pytest.approx(0.1), 2: pytest.approx(-0.1)}
    assert peaked.peak() == ("tau=3", pytest.approx((2 * 84.79 + 84.60) / 3))
    assert peaked.peaks() == {0: "tau=3", 1: "tau=3", 2: "tau=5"}
    assert peaked.peak_text() == "the curve peaks at tau=3 (84.73); per teacher seed at tau=3, tau=3, tau=5"
    assert peaked.verdict == NOT_SUPPORTED  # [-0.25, +0.25]: excludes rho 0.5, not 0
    rising = [
        (label, {(k, 0): 83.0 + 0.5 * j - 0.01 * k * (j == 4) for k in range(3)})
        for j, label in enumerate(taus)
    ]
    trend = Trend("acc over tau", "> 0", points=rising)
    assert trend.teacher_values() == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0}) and trend.verdict == HOLDS
    flat = Trend("flat", "> 0", points=[(label, {(k, 0): 80.0 for k in range(3)}) for label in taus])
    assert flat.teacher_values() == {0: 0.0, 1: 0.0, 2: 0.0} and flat.verdict == NOT_SUPPORTED


def test_correlation_verdicts():
    x = [1.0, 2, 3, 4, 5, 6, 7, 8]
    noisy = [v + 0.1 * (-1) ** i for i, v in enumerate(x)]
    assert Correlation("c", x, noisy, seeds=3, expect="> 0").verdict == HOLDS
    assert Correlation("c", x, noisy, seeds=3, expect="< 0").verdict == FAILS
    assert Correlation("c", x, noisy, seeds=2, expect="> 0").verdict == INCONCLUSIVE  # too few teacher seeds
    assert Correlation("c", x, [3.0, 1, 4, 8, 2, 6, 5, 7], seeds=3, expect="> 0").verdict == INCONCLUSIVE


def test_a_claims_verdict_rests_on_its_primary_tests_only():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, NOT_SUPPORTED, INCONCLUSIVE]) == NOT_SUPPORTED
    assert combine([INCONCLUSIVE, FAILS]) == FAILS
    assert (
        combine([OUTSIDE, HOLDS]) == HOLDS and combine([OUTSIDE]) == OUTSIDE and combine([]) == INCONCLUSIVE
    )
    holds, fails = difference([1.0, 1.2, 0.9]), difference([-1.0, -1.2, -0.9])
    holds.primary = True
    result = ClaimResult("C7", "s", primary=[holds], secondary=[fails])
    assert result.verdict == HOLDS and result.decisive is holds  # a failing secondary test changes nothing
    entry = result.to_dict()
    assert entry["decided_by"] == "primary tests" and entry["primary_test"] == "d"
    assert [test["role"] for test in entry["primary"] + entry["secondary"]] == ["primary", "secondary"]
    assert (entry["n_teacher_seeds"], entry["n_student_seeds"]) == (3, 2)
    teacher = {"train_acc": 99.5, "test_acc_last": 88.0}
    weak = [{"train_acc": 95.0, "test_acc_last": 86.5}, {"train_acc": 94.0, "test_acc_last": 86.0}]
    holds.gates = check_gates(teacher, weak, scope="t -> s")
    assert result.verdict == OUTSIDE  # G2 = 88 - 86.25 = 1.75 < 3: the numbers do not matter
    assert result.evidence() == "G2 = 1.75 points (>= 3): FAILED [t -> s]"
    assert set(VERDICTS) >= {HOLDS, FAILS, NOT_SUPPORTED, ABOUT_AS_GOOD, INCONCLUSIVE, OUTSIDE, "not judged"}


# --- the regime gates ------------------------------------------------------------------------------


def test_gates_measure_teacher_and_ce_students():
    teacher = {"train_acc": 98.0, "test_acc_last": 88.0}  # exactly at G1's threshold: passes
    students = [{"train_acc": 91.0, "test_acc_last": 84.0}, {"train_acc": 89.0, "test_acc_last": 85.0}]
    g1, g2, g3 = check_gates(teacher, students, scope="convnet-32 -> mlp-64")
    assert (g1.name, g1.value, g1.threshold, g1.passed) == ("G1", 98.0, 98.0, True)
    assert (g2.name, g2.value, g2.passed) == ("G2", 3.5, True)
    assert (g3.name, g3.value, g3.passed) == ("G3", 90.0, True)  # the mean over seeds
    missing = check_gates({"train_acc": 99.0}, [])
    assert [gate.passed for gate in missing] == [True, False, False] and missing[2].to_dict()["value"] is None
    assert [gate.name for gate in failing(missing)] == ["G2", "G3"]
    table = gates_table([g1, g2, g3])
    assert (
        "| convnet-32 -> mlp-64 | G2 | teacher test accuracy minus the CE student's >= 3 points | 3.50 | >= 3 | yes |"
        in table
    )
    assert "G1**: teacher clean-train accuracy >= 98%" in GATES_TEXT


# --- the claim table on synthetic rows of runs.csv ---------------------------------------------------


def student(experiment: str, folder: str, k: int | None, seed: int, accuracy: float, **values) -> object:
    values = {"loss": "kl", "alpha": 1.0, "tau": 20.0, "model": "mlp-64", "teacher": "big", **values}
    name = f"{values['model']}-{values['teacher']}-{values['loss']}-{values['tau']}-ts{k}-s{seed}"
    return make_row({
        "folder": folder, "run": name, "role": "student", "experiments": experiment, "preset": "p",
        "status": "finished", "seed": seed, "teacher_seed": k, "test_acc_last": accuracy, "train_acc": 95.0, **values,
    })  # fmt: skip


def teacher(experiment: str, name: str, k: int, train: float = 99.5, test: float = 88.0, **values) -> object:
    return make_row({
        "folder": "teachers", "run": f"{name}-ts{k}", "role": "teacher", "name": name, "experiments": experiment,
        "preset": "p", "status": "finished", "model": "convnet-8", "loss": "ce", "alpha": 1.0, "tau": 4.0,
        "seed": 9999 + k, "teacher_seed": k, "train_acc": train, "test_acc_last": test, **values,
    })  # fmt: skip


def c2_rows(accuracy: dict[float, list[list[float]]], teacher_train: list[float]) -> list:
    """A C2-shaped grid: KL alpha = 1 at each tau for teacher seeds x student seeds, CE students
    (train 95%, test 84%), teachers ``big`` (train per teacher seed, test 88%)."""
    rows = [teacher("grid", "big", k, train) for k, train in enumerate(teacher_train)]
    for tau, per_teacher in accuracy.items():
        for k, per_student in enumerate(per_teacher):
            rows += [student("grid", "main", k, s, acc, tau=tau) for s, acc in enumerate(per_student)]
    rows += [student("grid", "main", 0, s, 84.0, loss="ce", tau=4.0) for s in range(2)]
    return rows


RISING = {1.0: [[83.0, 83.2], [82.9, 83.1], [83.0, 83.0]], 20.0: [[84.1, 84.4], [84.0, 84.2], [84.3, 84.1]],
          3.0: [[83.5, 83.6], [83.4, 83.7], [83.6, 83.5]], math.inf: [[84.2, 84.5], [84.1, 84.3], [84.4, 84.2]]}  # fmt: skip


def test_the_claim_table_judges_c2_per_teacher_seed_inside_and_outside_the_regime():
    assert list(CLAIMS) == [f"C{i}" for i in range(1, 10)]
    assert all(claim.primary for claim in CLAIMS.values())  # every claim declares its primary test
    inside = judge("C2", experiments_from_rows(c2_rows(RISING, [99.5, 99.6, 99.7]))["grid"])
    assert [gate.scope for gate in inside.gates][::3] == [
        "main/: big [ts0] (convnet-8) -> mlp-64 CE, 2 seeds", "main/: big [ts1] (convnet-8) -> mlp-64 CE, 2 seeds",
        "main/: big [ts2] (convnet-8) -> mlp-64 CE, 2 seeds",
    ]  # fmt: skip
    (trend,) = inside.primary
    assert trend.teacher_values() == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0}) and inside.verdict == HOLDS
    assert inside.summary().startswith("the curve peaks at tau=inf (84.28)")
    assert "| KL tau=20 | 6 | 84.18 ± 0.15 | 84.40 |" in inside.tables[0]  # 3 teacher x 2 student seeds
    outside = judge("C2", experiments_from_rows(c2_rows(RISING, [99.5, 97.0, 99.7]))["grid"])
    assert outside.verdict == OUTSIDE and [gate.name for gate in outside.failing_gates] == ["G1"]
    assert (
        outside.evidence()
        == "G1 = 97.00% (>= 98): FAILED [main/: big [ts1] (convnet-8) -> mlp-64 CE, 2 seeds]"
    )
    assert outside.primary[0].statistical_verdict == HOLDS  # still computed and shown


def test_c1_averages_over_the_taus_every_alpha_holds():
    """The small grid runs tau = 5 (and 1) at alpha = 1 only: C1's curve averages over tau in {3, 20}, the
    taus > 1 of every alpha, so that no alpha is left without a value."""
    rows = [teacher("grid", "big", k) for k in range(3)]
    for k in range(3):
        for s in range(2):
            for i, alpha in enumerate((0.1, 0.4, 0.7, 1.0)):
                taus = (1.0, 3.0, 5.0, 20.0) if alpha == 1.0 else (3.0, 20.0)
                rows += [
                    student("grid", "main", k, s, 83.0 + 0.3 * i + 0.01 * k, alpha=alpha, tau=t) for t in taus
                ]
    rows += [student("grid", "main", 0, s, 84.0, loss="ce", tau=4.0) for s in range(2)]
    (c1,) = judge_all(["C1"], experiments_from_rows(rows))
    (trend,) = c1.primary
    assert trend.statement == "test acc over alpha in {0.1, 0.4, 0.7, 1} (mean over tau in {3, 20})"
    assert trend.teacher_values() == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0}) and trend.n_teacher_seeds == 3


def pairs_rows(mse_minus_kl: dict[str, float], ce_train: dict[str, float] | None = None) -> list:
    """C5's pairs: teacher big (3 teacher seeds) -> each model, MSE and KL tau=20, 2 student seeds;
    MSE - KL = the given effect per model (+- a teacher-seed offset); CE students per model."""
    rows = [teacher("pairs", "big", k) for k in range(3)]
    for model, effect in mse_minus_kl.items():
        for k in range(3):
            for s in range(2):
                base = 84.0 + 0.1 * k + 0.05 * s
                rows.append(student("pairs", "pairs", k, s, base, model=model))
                rows.append(
                    student("pairs", "pairs", k, s, base + effect + 0.02 * (k - 1), model=model, loss="mse")
                )
        train = (ce_train or {}).get(model, 95.0)
        rows += [
            student("pairs", "pairs", 0, s, 84.0, model=model, loss="ce", tau=4.0, train_acc=train)
            for s in range(2)
        ]
    return rows


def test_c5_is_judged_per_teacher_student_pair_and_summarised():
    results = judge_all(
        ["C5"], experiments_from_rows(pairs_rows({"mlp-16": -0.3, "mlp-32": 0.5, "mlp-64": 0.6}))
    )
    (c5,) = results
    assert [test.statement for test in c5.primary] == [
        "big -> mlp-16: acc(MSE) - acc(KL tau=20)", "big -> mlp-32: acc(MSE) - acc(KL tau=20)",
        "big -> mlp-64: acc(MSE) - acc(KL tau=20)",
    ]  # fmt: skip
    assert [test.verdict for test in c5.primary] == [FAILS, HOLDS, HOLDS]
    assert c5.verdict == FAILS and c5.summary() == "holds in 2 of 3 pairs"  # the average would hide mlp-16
    assert all(test.family == 3 and test.holm_p is not None for test in c5.primary)
    assert [test.holm_p for test in c5.secondary] == [None]  # the average over students: shown, not corrected
    weak = judge_all(
        ["C5"], experiments_from_rows(pairs_rows({"mlp-16": -0.3, "mlp-32": 0.5}, {"mlp-16": 80.0}))
    )[0]
    assert [test.verdict for test in weak.primary] == [OUTSIDE, HOLDS]  # mlp-16's CE student fails G3
    assert weak.verdict == HOLDS and weak.summary() == "holds in 1 of 2 pairs, 1 outside the regime"
    assert weak.primary[1].family == 1  # the pair outside the regime left the Holm family


def test_c8_gates_every_teacher_it_reads_at_every_teacher_seed():
    rows = [teacher("sequential", "large", k) for k in range(3)]
    rows += [teacher("sequential", "medium", k, train=96.5, test=86.6) for k in range(3)]
    rows += [
        teacher("sequential", "medium-from-large", k, train=99.0, teacher="large", loss="kl")
        for k in range(3)
    ]
    for name, accuracy in (("medium", 84.7), ("medium-from-large", 84.6), ("large", 84.5)):
        rows += [student("sequential", "sequential", k, s, accuracy + 0.01 * k, teacher=name, tau=3.0)
                 for k in range(3) for s in range(2)]  # fmt: skip
    rows += [student("sequential", "sequential", 0, s, 84.0, loss="ce", teacher="large") for s in range(2)]
    (c8,) = judge_all(["C8"], experiments_from_rows(rows))
    failing_gates = {(gate.name, gate.scope) for gate in c8.failing_gates}
    assert failing_gates == {
        ("G1", f"sequential/: medium [ts{k}] (convnet-8) -> mlp-64 CE, 2 seeds") for k in range(3)
    } | {("G2", f"sequential/: medium [ts{k}] (convnet-8) -> mlp-64 CE, 2 seeds") for k in range(3)}
    assert c8.verdict == OUTSIDE and c8.evidence().startswith(
        "G1 = 96.50% (>= 98): FAILED [sequential/: medium [ts0]"
    )
    assert len(c8.gates) == 3 * 3 * 3  # three teachers x three teacher seeds x G1-G3
    step = c8.primary[0]  # both steps +0.1 at every teacher seed: a point interval, above 0, below 0.25
    assert step.statistical_verdict == HOLDS and step.family == 0  # outside the regime: not in Holm's family
    assert step.teacher_values() == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1})
    assert (
        "smaller than the predicted size 0.25 pts" in step.text()
        and "-> **outside the paper's regime** (G1 = 96.50%" in step.text()
    )


def test_holm_runs_across_the_primary_tests_of_every_claim_judged():
    rows = c2_rows(RISING, [99.5, 99.6, 99.7]) + pairs_rows({"mlp-32": 0.5, "mlp-64": 0.6})
    results = judge_all(["C2", "C3", "C5"], experiments_from_rows(rows))
    family = [test for result in results for test in result.primary if test.holm_p is not None]
    assert len(family) == 3 and all(test.family == 3 for test in family)  # C2's trend, C5's two pairs; not C3
    p = [test.test.p_value for test in family]
    assert [test.holm_p for test in family] == pytest.approx(holm(p))
    assert results[1].verdict == HOLDS and results[1].primary == []
    assert apply_holm(results) == family  # applying it again changes nothing


def test_readme_claims_table_is_regenerated_from_claims_json(tmp_path):
    results = judge_all(["C2", "C5"], experiments_from_rows(c2_rows(RISING, [99.5, 99.6, 99.7])
                                                           + pairs_rows({"mlp-32": 0.5, "mlp-64": 0.6})))  # fmt: skip
    gates = [gate.to_dict() for result in results for gate in result.gates]
    document = json.loads(
        json.dumps({"protocol_version": 2, "regime": gates, "claims": [r.to_dict() for r in results]})
    )
    table = claims_table(document)
    assert table.splitlines()[0].startswith("Gates: G1: teacher clean-train accuracy >= 98%; G2: ")
    assert (
        "| main/: big (convnet-8) -> mlp-64 CE, 2 seeds | 99.50 passes (worst of 3) | 4.00 passes (worst of 3) |"
        in table
    )
    assert "| C2 | holds | 3 x 2 | test acc over tau in {1, 3, 20, inf} at alpha = 1: mean +1.00, " in table
    assert "| C5 | holds | 3 x 2 | big -> mlp-32: acc(MSE) - acc(KL tau=20): mean +0.50 pts, Holm " in table
    assert "(holds in 2 of 2 pairs) |" in table
    # Protocol v1's claims.json (git show 10cfc7dd:docs/results/small/claims.json): one seed count per claim.
    v1_c5 = {
        "claim": "C5", "verdict": "about as good", "n_seeds": 5, "caveat": None,
        "evidence": "acc(MSE) - acc(KL tau=20), mean over the 3 students of convnet-32: mean -0.11 pts, 95% CI "
        "[-0.30, +0.08] (t, n = 5) (+1 other test in REPORT.md)",
    }  # fmt: skip
    v1 = claims_table({"preset": "small", "seeds": 5, "claims": [v1_c5]})
    assert "| C5 | about as good | 1 x 5 | acc(MSE) - acc(KL tau=20), mean over the 3 students" in v1
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims-table:start -->\nSTALE ROW\n<!-- claims-table:end -->\nrest\n")
    update_readme(readme, table)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- claims-table:start -->\nGates: G1") and text.endswith("-->\nrest\n")
    assert "STALE ROW" not in text
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="needs one <!-- claims-table:start -->"):
        update_readme(readme, table)
