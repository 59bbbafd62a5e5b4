"""Verdicts: the statistics (kdlab.analysis.stats) against hand-computed values, each branch of the
verdict rule on synthetic per-seed numbers, the regime gates, and the claim table on synthetic runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from kdlab.analysis.records import RunRecord
from kdlab.analysis.stats import Stat, paired_interval, spearman_test, tost
from kdlab.errors import UserError
from kdlab.experiments.claims import (
    ABOUT_AS_GOOD,
    CLAIMS,
    EQUIVALENCE_MARGIN,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    OUTSIDE,
    ClaimResult,
    Comparison,
    Context,
    Correlation,
    Experiment,
    accuracy_difference,
    combine,
    judge,
)
from kdlab.experiments.recipes import parse_recipe, plan_sweep
from kdlab.experiments.regime import GATES_TEXT, check_gates, failing, gates_table
from kdlab.experiments.reproduce import claims_table, update_readme

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


# --- the verdict rule, branch by branch ----------------------------------------------------------------


def difference(per_seed: list[float], expect: str = "> 0", accuracy: bool = True) -> Comparison:
    """``A - B`` with these per-seed differences (B = 80 on every seed)."""
    a = {seed: 80.0 + value for seed, value in enumerate(per_seed)}
    b = {seed: 80.0 for seed in range(len(per_seed))}
    if accuracy:
        return accuracy_difference("d", a, b, expect)
    return Comparison("d", a, b, expect)


@pytest.mark.parametrize(
    ("per_seed", "expect", "verdict"),
    [
        ([1.0, 1.2, 0.9], "> 0", HOLDS),  # t interval [0.65, 1.41]: above 0
        ([1.0, 1.2, 0.9], "< 0", FAILS),  # wholly on the other side
        ([-1.0, -1.2, -0.9], "< 0", HOLDS),
        ([1.0, -0.8, 0.3], "> 0", INCONCLUSIVE),  # interval spans 0 and leaves the margin
        ([0.05, -0.02, 0.01, 0.03], "> 0", ABOUT_AS_GOOD),  # spans 0, TOST within ±0.5
        ([0.05, -0.02, 0.01, 0.03], "~ 0", HOLDS),  # predicted about as good: TOST
        ([1.5, 1.6, 1.55], "~ 0", FAILS),  # interval wholly beyond +0.5
        ([0.2, 0.9, -0.1], "~ 0", INCONCLUSIVE),
        ([5.0, 5.1], "> 0", INCONCLUSIVE),  # two seeds: no verdict, however large
        ([0.8, 1.1, 0.6, 1.3, 0.9], "> 0", HOLDS),  # five seeds: t interval [0.61, 1.27]
        ([0.8, 1.1, 0.6, 1.3, -0.9], "> 0", INCONCLUSIVE),
    ],
)
def test_difference_verdicts(per_seed, expect, verdict):
    assert difference(per_seed, expect).verdict == verdict


def test_distances_have_no_equivalence_branch_and_nan_seeds_drop_out():
    assert difference([0.05, -0.02, 0.01, 0.03], accuracy=False).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="needs a margin"):
        difference([0.1, 0.2, 0.3], "~ 0", accuracy=False)
    comparison = difference([1.0, math.nan, 1.2, 0.9, 1.1])
    assert comparison.n == 4 and comparison.interval.method == "t" and comparison.verdict == HOLDS
    assert "95% CI [+" in comparison.text() and "TOST ±0.5" in comparison.text()
    assert EQUIVALENCE_MARGIN == 0.5


def test_correlation_verdicts():
    x = [1.0, 2, 3, 4, 5, 6, 7, 8]
    noisy = [v + 0.1 * (-1) ** i for i, v in enumerate(x)]
    assert Correlation("c", x, noisy, seeds=3, expect="> 0").verdict == HOLDS
    assert Correlation("c", x, noisy, seeds=3, expect="< 0").verdict == FAILS
    assert Correlation("c", x, noisy, seeds=2, expect="> 0").verdict == INCONCLUSIVE  # too few seeds
    assert Correlation("c", x, [3.0, 1, 4, 8, 2, 6, 5, 7], seeds=3, expect="> 0").verdict == INCONCLUSIVE


def test_claim_verdicts_combine_and_a_failing_gate_puts_a_claim_outside_the_regime():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, ABOUT_AS_GOOD]) == ABOUT_AS_GOOD
    assert combine([ABOUT_AS_GOOD, INCONCLUSIVE, HOLDS]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, FAILS]) == FAILS
    assert combine([]) == INCONCLUSIVE
    result = ClaimResult("C2", "s", comparisons=[difference([1.0, 1.2, 0.9])])
    assert result.verdict == HOLDS and result.n_seeds == 3
    teacher = {"train_acc": 99.5, "test_acc_last": 88.0}
    weak_students = [{"train_acc": 95.0, "test_acc_last": 86.5}, {"train_acc": 94.0, "test_acc_last": 86.0}]
    result.gates = check_gates(teacher, weak_students, scope="t -> s")
    assert result.verdict == OUTSIDE  # G2 = 88 - 86.25 = 1.75 < 3: the numbers do not matter
    assert result.evidence() == "G2 = 1.75 points (>= 3): FAILED [t -> s]"
    entry = result.to_dict()
    assert entry["verdict"] == OUTSIDE and entry["failing_gates"] == ["G2"] and entry["n_seeds"] == 3
    assert entry["interval"]["method"] == "t" and entry["interval"]["low"] > 0


def test_a_claims_one_line_evidence_is_the_test_that_decides_its_verdict():
    holds, fails = difference([1.0, 1.2, 0.9]), difference([-1.0, -1.2, -0.9])
    result = ClaimResult("C8", "s", comparisons=[holds, fails])
    assert result.verdict == FAILS and result.decisive is fails
    assert result.evidence() == fails.evidence() + " (+1 other test in REPORT.md)"
    assert result.to_dict()["interval"]["high"] < 0  # the failing test's interval, not the first one's
    assert ClaimResult("C1", "s", comparisons=[holds, holds]).decisive is holds


# --- the regime gates ------------------------------------------------------------------------------


def test_gates_measure_teacher_and_ce_students():
    teacher = {"train_acc": 98.0, "test_acc_last": 88.0}  # exactly at G1's threshold: passes
    students = [{"train_acc": 91.0, "test_acc_last": 84.0}, {"train_acc": 89.0, "test_acc_last": 85.0}]
    g1, g2, g3 = check_gates(teacher, students, scope="convnet-32 -> mlp-64")
    assert (g1.name, g1.value, g1.threshold, g1.passed) == ("G1", 98.0, 98.0, True)
    assert (g2.name, g2.value, g2.passed) == ("G2", 3.5, True)
    assert (g3.name, g3.value, g3.passed) == ("G3", 90.0, True)  # the mean over seeds
    assert g2.to_dict() == {
        "name": "G2", "value": 3.5, "threshold": 3.0, "passed": True, "op": ">=",
        "rule": "teacher test accuracy minus the CE student's >= 3 points", "scope": "convnet-32 -> mlp-64",
    }  # fmt: skip
    missing = check_gates({"train_acc": 99.0}, [])
    assert [gate.passed for gate in missing] == [True, False, False] and missing[2].to_dict()["value"] is None
    assert [gate.name for gate in failing(missing)] == ["G2", "G3"]
    table = gates_table([g1, g2, g3])
    assert (
        "| convnet-32 -> mlp-64 | G2 | teacher test accuracy minus the CE student's >= 3 points | 3.50 | >= 3 | yes |"
        in table
    )
    assert "G1**: teacher clean-train accuracy >= 98%" in GATES_TEXT


# --- the claim table on synthetic runs --------------------------------------------------------------


def synthetic_experiment(tmp_path: Path, accuracy: dict[float, list[float]], ce_test: float) -> Experiment:
    """A C2-shaped experiment on synthetic summaries: KL alpha = 1 at each tau, a CE student, a teacher
    (train 99.5%, test 88%). ``accuracy[tau]`` = test_acc_last per seed."""
    document = {
        "model": "mlp-64", "data": {"name": "digits"}, "optim": {"epochs": 1},
        "kd": {"teacher": "big", "loss": "kl", "alpha": 1.0}, "teachers": {"big": {"model": "convnet-8"}},
        "grid": {"kd.tau": list(accuracy)}, "runs": [{"kd.loss": "ce"}],
    }  # fmt: skip
    seeds = len(next(iter(accuracy.values())))
    plan = plan_sweep(parse_recipe(document, "synthetic"), tmp_path / "main", seeds=seeds)
    students = []
    for run in plan.students:
        config, seed = run.config, run.config.seed
        test = ce_test if config.kd.loss == "ce" else accuracy[config.kd.tau][seed]
        summary = {"test_acc_last": test, "test_acc_best": test + 0.3, "train_acc": 95.0, "seed": seed}
        students.append(RunRecord(Path(config.out), config, summary))
    teacher_run = plan.teachers["big"]
    teacher = RunRecord(
        Path(teacher_run.config.out), teacher_run.config, {"train_acc": 99.5, "test_acc_last": 88.0}
    )
    return Experiment(plan, students, {"big": teacher})


def test_the_claim_table_judges_c2_inside_and_outside_the_regime(tmp_path):
    assert list(CLAIMS) == [f"C{i}" for i in range(1, 10)]
    assert {claim.recipe for claim in CLAIMS.values()} == {
        None, "grid", "logit-distance", "pairs", "penultimate", "poor-teacher", "sequential", "label-noise",
    }  # fmt: skip
    accuracy = {1.0: [83.0, 83.2, 82.9], 20.0: [84.1, 84.4, 84.0], math.inf: [84.2, 84.3, 84.1]}
    context = Context(tmp_path, log=lambda message: None)
    inside = judge("C2", synthetic_experiment(tmp_path, accuracy, ce_test=84.0), context)
    assert [gate.passed for gate in inside.gates] == [True, True, True]  # G2 = 88 - 84 = 4
    assert [c.verdict for c in inside.comparisons] == [HOLDS, HOLDS] and inside.verdict == HOLDS
    assert (
        "best of seeds (%)" in inside.tables[0]
        and "| KL tau=20 | 3 | 84.17 ± 0.21 | 84.40 |" in inside.tables[0]
    )
    assert "best-on-test (%, not judged)" in inside.tables[0]
    outside = judge("C2", synthetic_experiment(tmp_path / "b", accuracy, ce_test=86.0), context)
    assert outside.verdict == OUTSIDE and [gate.name for gate in outside.failing_gates] == ["G2"]
    assert outside.comparisons[0].verdict == HOLDS  # still computed and shown


def test_readme_claims_table_is_regenerated_from_claims_json(tmp_path):
    result = ClaimResult("C2", "s", comparisons=[difference([1.0, 1.2, 0.9])])
    result.gates = check_gates(
        {"train_acc": 99.5, "test_acc_last": 88.0}, [{"train_acc": 95, "test_acc_last": 84}]
    )
    document = json.loads(
        json.dumps({"regime": [g.to_dict() for g in result.gates], "claims": [result.to_dict()]})
    )
    table = claims_table(document)
    assert table.splitlines()[0].startswith("Gates: G1: teacher clean-train accuracy >= 98%; G2: ")
    assert "| runs | G1 | G2 | G3 |" in table
    assert "| teacher and 1 CE student run(s) | 99.50 passes | 4.00 passes | 95.00 passes |" in table
    assert "| C2 | holds | 3 | d: mean +1.03 pts, 95% CI [+0.65, +1.41] (t, n = 3) |" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims-table:start -->\nSTALE ROW\n<!-- claims-table:end -->\nrest\n")
    update_readme(readme, table)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- claims-table:start -->\nGates: G1") and text.endswith("-->\nrest\n")
    assert "STALE ROW" not in text
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="needs one <!-- claims-table:start -->"):
        update_readme(readme, table)
