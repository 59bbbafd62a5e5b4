"""The nine claims of shared/PAPER.md as checks with a declared primary test (protocol v2).

``CLAIMS`` is the one table: claim -> statement, the experiment whose runs it reads, its check and
the regime it must be judged in (``kdlab.experiments.regime``). A check reads only rows of runs.csv
(``kdlab.experiments.evidence``): what ``kdlab reproduce`` judges, ``--rejudge`` judges again. Each
check declares its claim's **primary** test, in the claim's own words (a trend over every grid point
where the claim is a trend; C5 one per teacher/student pair, as the paper states it), and its
**secondary** tests (shown, never decisive); the tests and the verdict rule are
``kdlab.experiments.verdicts``. ``judge_all`` judges the chosen claims and applies Holm's correction
across their primary tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdlab.analysis.plots import tau_label
from kdlab.analysis.stats import Cells
from kdlab.errors import UserError
from kdlab.experiments.evidence import ACC, DISTANCE, Context, Experiment
from kdlab.experiments.regime import (
    Gate,
    label_noise_condition,
    pair_gates,
    poor_teacher_condition,
    read_regime,
)
from kdlab.experiments.runtable import Row
from kdlab.experiments.tables import DEFAULT_METRICS, TITLES, accuracy_table, grid_table, set_text
from kdlab.experiments.verdicts import (
    ACCURACY_MARGIN,
    FAILS,
    HOLDS,
    TREND_MARGIN,
    ClaimResult,
    Correlation,
    Difference,
    Trend,
    accuracy_difference,
    apply_holm,
    mean_over,
    smallest_difference,
)

# --- the checks -------------------------------------------------------------------------------------
# Each fills in a ClaimResult from an experiment's rows: tables, the primary test(s), secondary tests.


def check_c1(result: ClaimResult, experiment: Experiment, context: Context) -> None:
    runs = experiment.runs
    alphas, all_taus = runs.values("alpha", loss="kl"), runs.values("tau", loss="kl")
    # The taus > 1 that every alpha holds (PROTOCOL.md section 7: the small grid runs tau = 5 at alpha = 1
    # only, for C2; a mean over it would leave the other alphas without a value).
    taus = [
        tau for tau in all_taus if tau > 1 and all(runs.select(loss="kl", alpha=a, tau=tau) for a in alphas)
    ]
    result.tables += [
        f"{TITLES[ACC]}:\n\n" + grid_table(runs, ACC, alphas, all_taus),
        "Train accuracy (%, clean training set, end of training):\n\n"
        + grid_table(runs, "train_acc", alphas, all_taus),
    ]
    if len(alphas) < 3 or not taus:
        result.notes.append("the trend needs at least three alphas and one tau > 1: no verdict")
    over = set_text(taus)

    def curve(metric: str) -> list[tuple[str, Cells]]:
        return [
            (f"alpha={alpha:g}", mean_over([runs.cells(metric, loss="kl", alpha=alpha, tau=t) for t in taus]))
            for alpha in alphas
        ]

    result.primary.append(Trend(
        f"test acc over alpha in {set_text(alphas)} (mean over tau in {over})", "> 0", TREND_MARGIN, primary=True,
        points=curve(ACC),
    ))  # fmt: skip
    result.secondary.append(Trend(
        f"train acc over alpha in {set_text(alphas)} (mean over tau in {over})", "< 0", TREND_MARGIN, points=curve("train_acc"),
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
        f"test acc over tau in {set_text(taus)} at alpha = 1",
        "> 0",
        TREND_MARGIN,
        primary=True,
        points=points,
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
        f"logit distance over tau in {set_text(taus)} at alpha = 1", "< 0", TREND_MARGIN, primary=True, points=points,
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
