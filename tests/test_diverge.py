"""One student never takes the others of its group down: a student whose loss (or weights) becomes
NaN or inf is recorded as diverged and the rest of its group finishes, bitwise as if it had never
been in the group (CPU, one thread); a re-run of the sweep trains nothing; reports and claims name
it and average nothing of it. A single run still stops (exit 2, its last finite checkpoint kept).

Diverging inputs (rates that diverge are out of bounds now: optim.lr <= 10, optim.gamma <= 1), two
losses of a plugin: CE in epoch 1 and CE times 1e30 from epoch 2 (a finite loss whose huge gradients
overflow the weights, then the loss, a step or two later, as a rate far too high would), and, for a
stacked group, CE in epoch 1 and CE times NaN from epoch 2 (NaN loss and NaN gradients, so the
student's slice of the stacked weights becomes NaN while the others' slices train on).
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_engine import checkpoint, kdlab_error, random_teacher

import kdlab.engine.loop
import kdlab.engine.step
from kdlab.analysis.records import RunRecord
from kdlab.cli import main
from kdlab.data import load_dataset
from kdlab.engine.stacked import StackedStudents
from kdlab.engine.stop import interrupted
from kdlab.errors import RunInterrupted, UserError
from kdlab.evaluate import evaluate_checkpoint
from kdlab.experiments.claims import judge
from kdlab.experiments.evidence import experiments_from_rows
from kdlab.experiments.recipes import parse_recipe, plan_sweep
from kdlab.experiments.runtable import Sweep, csv_text, parse_csv, rows_from_sweeps
from kdlab.experiments.sweep import run_plan
from kdlab.experiments.tables import accuracy_table
from kdlab.runs import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_registries")

TIMING = ("epoch_time_s", "train_images_per_s", "wall_time_s", "finished_at")  # measured, not computed
STEPS_PER_EPOCH = math.ceil(len(load_dataset("digits").train) / 64)

PLUGIN = '''
import math

import torch.nn.functional as F

from kdlab.losses import register_loss


@register_loss("ce_boosted_from_2", label="CE-boost", reads=("epoch",))
def ce_boosted_from_2(student_logits, targets, *, epoch):
    """CE in epoch 1, CE times 1e30 from epoch 2 on (overflows a step or two later)."""
    return {"ce": F.cross_entropy(student_logits, targets) * (1e30 if epoch >= 2 else 1.0)}


@register_loss("ce_nan_from_2", label="CE-NaN", reads=("epoch",))
def ce_nan_from_2(student_logits, targets, *, epoch):
    """CE in epoch 1, CE times NaN from epoch 2 on (a NaN loss, and NaN gradients)."""
    return {"ce": F.cross_entropy(student_logits, targets) * (math.nan if epoch >= 2 else 1.0)}
'''

DIVERGING_RATE = {"kd.loss": "ce_boosted_from_2"}  # overflows a step or two into epoch 2
DIVERGING_LOSS = {"kd.loss": "ce_nan_from_2"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A randomly initialised convnet-4 checkpoint: its logits are as varied as a trained one's."""
    return str(random_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", in_channels=1))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "nan_loss.py"
    path.write_text(PLUGIN)
    return str(path)


def recipe(runs: list[dict], teacher: str | None, plugin: str, **changes) -> dict:
    """convnet-4 students on digits, 3 epochs at lr 0.05, one seed; ``runs`` the students (a student
    that diverges in epoch 2 leaves the others one more epoch to train without it)."""
    return {
        "description": "test",
        "imports": [plugin],
        "model": "convnet-4",
        "data": {"name": "digits"},
        "optim": {"epochs": 3, "batch_size": 64, "lr": 0.05},
        "kd": {"teacher": teacher, "loss": "ce"},
        "runs": runs,
        "progress": False,
        "tensorboard": False,
        **changes,
    }


def sweep(document: dict, out: Path) -> None:
    """``kdlab sweep RECIPE --out OUT`` in this process; it must exit 0."""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        main(["sweep", str(path), "--out", str(out)])
    except SystemExit as error:
        assert error.code in (0, None), error.code


def run_name(document: dict, entry: dict) -> str:
    plan = plan_sweep(parse_recipe({**document, "runs": [entry]}, "names"), Path("unused"))
    return plan.students[0].name


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_bitwise_same_run(run: Path, alone: Path) -> None:
    """Weights, buffers, optimiser state, metrics rows and summary equal bitwise (timings aside)."""
    a, b = checkpoint(run), checkpoint(alone)
    assert a["epoch"] == b["epoch"] and a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key, entry in state_a.items():
        assert all(torch.equal(value, state_b[key][name]) for name, value in entry.items()), key
    assert rows(run) == rows(alone)
    drop = set(TIMING)

    def comparable(record: dict) -> dict:  # a run's id is drawn at its start: two runs never share it
        inputs = {k: v for k, v in record.get("inputs", {}).items() if k != "run_id"}
        return {k: v for k, v in record.items() if k not in drop} | {"inputs": inputs}

    assert comparable(summary(run)) == comparable(summary(alone))


def assert_diverged_at_epoch_2(run: Path, twin: Path) -> dict:
    """``run`` diverged in epoch 2: its summary says so, its last.pt is its finite epoch-1 checkpoint,
    whose test accuracy is the one recorded, and its epoch 1 equals ``twin``'s (a CE student of the same
    initial weights, data and rate: the diverging settings act from epoch 2 on)."""
    record = summary(run)
    assert record["status"] == "diverged" and record["reason"] == "the loss became NaN or inf"
    assert record["diverged_epoch"] == 2 and record["last_finite_epoch"] == 1
    assert record["last_checkpoint"] == "checkpoints/last.pt" and record["test_acc_last"] is None
    assert record["epochs"] == 3 and record["seed"] == 0
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and kept["epoch_progress"] is None
    assert all(torch.isfinite(value).all() for value in kept["model"].values() if value.is_floating_point())
    assert rows(run) == rows(twin)[:1]
    assert record["test_acc_last_finite"] == rows(run)[0]["test_acc"]
    last = run / "checkpoints" / "last.pt"
    assert evaluate_checkpoint(last, device="cpu")["test_acc"] == pytest.approx(
        record["test_acc_last_finite"]
    )
    # By its folder, a diverged run is no model (no final weights): eval, export, analyze and a
    # teacher setting refuse it, naming the file that holds its last finite epoch.
    refusal = (
        f"run {run} diverged (its summary.json: last finite epoch 1), so it has no final weights: train it "
        f"again with other settings, or pass {last} to read its last finite epoch"
    )
    with pytest.raises(UserError) as error:
        evaluate_checkpoint(run, device="cpu")
    assert str(error.value) == refusal
    return record


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def assert_rerun_trains_nothing_and_report_names(
    document: dict, out: Path, diverged: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(out)
    capsys.readouterr()
    sweep(document, out)  # exit 0
    printed = capsys.readouterr().out
    assert "(0 to train)" in printed
    assert "sweep: 1 student(s) diverged (recorded in their summary.json, not trained again" in printed
    record = summary(out / diverged)
    where = f"diverged at epoch 2, step {record['diverged_step']}"
    assert f"{diverged:40s} {where}" in printed
    assert files(out) == before  # nothing written, nothing trained
    main_args = ["report", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(main_args)
    assert exit_info.value.code in (0, None)
    report = (out / "report.md").read_text()
    assert "2 finished runs in 2 groups and 1 diverged (below, in no mean)" in report
    section = report.split("## Diverged runs (not in any table, mean or plot)\n", 1)[1]
    assert (
        section.splitlines()[3].startswith(f"| {diverged} | convnet-4 | ")
        and f"{where}: the loss became NaN or inf (last finite epoch 1) |" in section.splitlines()[3]
    )
    assert diverged not in (out / "results.csv").read_text()


def test_a_diverging_student_of_a_lockstep_group_leaves_the_others_bitwise_as_without_it(
    tmp_path, teacher, plugin, capsys
):
    students = [{"kd.loss": "ce"}, {"kd.loss": "kl", "kd.alpha": 0.9, "kd.tau": 4.0}]
    with_it = recipe([*students, DIVERGING_RATE], teacher, plugin)
    sweep(with_it, tmp_path / "with")
    assert "recorded as diverged (summary.json), its last.pt kept" in capsys.readouterr().err
    sweep(recipe(students, teacher, plugin), tmp_path / "without")
    for entry in students:
        name = run_name(with_it, entry)
        assert_bitwise_same_run(tmp_path / "with" / name, tmp_path / "without" / name)
    diverged = run_name(with_it, DIVERGING_RATE)
    record = assert_diverged_at_epoch_2(tmp_path / "with" / diverged, tmp_path / "with" / "ce-s0")
    assert record["diverged_step"] >= 2  # its first step of epoch 2 starts from finite epoch-1 weights
    assert_rerun_trains_nothing_and_report_names(with_it, tmp_path / "with", diverged, capsys)

    run = tmp_path / "with" / diverged  # by its folder, no teacher and nothing to analyse or export
    refused = f"run {run} diverged (its summary.json: last finite epoch 1), so it has no final weights"
    commands = [
        ["distill", "--dataset", "digits", "--model", "convnet-4", "--teacher", run, "--loss", "kl",
         "--epochs", "1", "--out", tmp_path / "student"],
        ["analyze", tmp_path / "with" / "ce-s0", "--teacher", run, "--out", tmp_path / "analysis"],
        ["export", run, "--out", tmp_path / "export.safetensors"],
    ]  # fmt: skip
    for command in commands:
        assert kdlab_error(capsys, *command).startswith(refused)
    assert not any((tmp_path / name).exists() for name in ("student", "analysis", "export.safetensors"))


def test_a_diverging_student_of_a_stacked_group_leaves_the_others_bitwise_as_without_it(
    tmp_path, teacher, plugin, monkeypatch, capsys
):
    stacks: list[int] = []

    class CountedStack(StackedStudents):
        def __init__(self, students, slots, model) -> None:
            stacks.append(len(students))
            super().__init__(students, slots, model)

    monkeypatch.setattr(kdlab.engine.loop, "StackedStudents", CountedStack)
    students = [{"kd.loss": "ce"}, {"kd.loss": "kl", "kd.alpha": 0.9, "kd.tau": 4.0}]
    with_it = recipe([*students, DIVERGING_LOSS], teacher, plugin, stack="on")
    sweep(with_it, tmp_path / "with")
    assert stacks == [3, 2]  # one stack of three, rebuilt without the diverged slot for epoch 3
    sweep(recipe(students, teacher, plugin, stack="on"), tmp_path / "without")
    assert stacks == [3, 2, 2]
    for entry in students:
        name = run_name(with_it, entry)
        assert_bitwise_same_run(tmp_path / "with" / name, tmp_path / "without" / name)
    diverged = run_name(with_it, DIVERGING_LOSS)
    record = assert_diverged_at_epoch_2(tmp_path / "with" / diverged, tmp_path / "with" / "ce-s0")
    assert record["diverged_step"] == 1  # NaN from the first step of epoch 2
    assert_rerun_trains_nothing_and_report_names(with_it, tmp_path / "with", diverged, capsys)


def count_loss_calls(monkeypatch: pytest.MonkeyPatch, at_call: int, action) -> None:
    """Replace the engine's ``at_call``-th loss terms (1-based) by ``action(terms)``."""
    original, calls = kdlab.engine.step.loss_terms, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        terms = original(*args, **kwargs)
        return action(terms) if calls[0] == at_call else terms

    monkeypatch.setattr(kdlab.engine.step, "loss_terms", counting)


def nan_gradient(terms: dict) -> dict:
    """The same loss value with a NaN gradient: ``0 * sqrt(|x - x|)`` is 0, its derivative 0 * inf."""
    ce = terms["ce"]
    return {"ce": ce + 0.0 * (ce - ce.detach()).abs().sqrt()}


def test_a_group_stopped_mid_epoch_records_its_diverged_students_and_resumes_the_others(
    tmp_path, plugin, monkeypatch
):
    """SIGINT at epoch 2, step 8 of three students: the second's loss went NaN a few steps before
    (its loss is boosted 1e30 times from epoch 2), the first's weights at that very step (a NaN gradient of a finite
    loss). Both are recorded as diverged with their epoch-1 last.pt; the third saves a mid-epoch
    checkpoint, and the sweep run again finishes it bitwise as it finishes alone."""
    third = {"kd.loss": "ce", "optim.lr": 0.04}
    plan = plan_sweep(
        parse_recipe(recipe([{"kd.loss": "ce"}, DIVERGING_RATE, third], None, plugin), "stopped"),
        tmp_path / "stopped",
    )
    alone = plan_sweep(parse_recipe(recipe([third], None, plugin), "alone"), tmp_path / "alone")
    run_plan(alone, log=lambda line: None)

    def stop(terms: dict) -> dict:
        os.kill(os.getpid(), signal.SIGINT)
        return nan_gradient(terms)

    count_loss_calls(monkeypatch, 3 * (STEPS_PER_EPOCH + 7) + 1, stop)  # three students per step
    with pytest.raises(RunInterrupted) as stopped:
        run_plan(plan, log=lambda line: None)
    poisoned, diverged, going_on = (Path(run.config.out) for run in plan.students)
    assert str(stopped.value) == (
        f"stopped by SIGINT at epoch 2, step 8; checkpoint saved in {going_on}: continue with --resume"
    )
    weights, loss = summary(poisoned), summary(diverged)
    assert weights["reason"] == "the weights became NaN or inf (the loss stayed finite)"
    assert (weights["diverged_epoch"], weights["diverged_step"], weights["last_finite_epoch"]) == (2, 8, 1)
    assert loss["reason"] == "the loss became NaN or inf"
    assert loss["diverged_epoch"] == 2 and 2 <= loss["diverged_step"] < 8 and loss["last_finite_epoch"] == 1
    for run in (poisoned, diverged):
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch_progress"] is None  # epoch 1's
    assert load_checkpoint(going_on / "checkpoints" / "last.pt")["epoch_progress"]["step"] == 8
    monkeypatch.undo()  # the engine's own loss terms again
    summaries = run_plan(plan, log=lambda line: None)
    assert [summaries[run.name]["status"] for run in plan.students] == ["diverged", "diverged", "finished"]
    assert summaries[plan.students[1].name] == loss
    assert_bitwise_same_run(going_on, Path(alone.students[0].config.out))
    assert str(interrupted([], signal.SIGINT, "at epoch 2, step 8")) == (
        "stopped by SIGINT at epoch 2, step 8; every run of the group had diverged"
    )


def test_weights_made_nan_by_an_epochs_last_step_count_as_diverged(tmp_path, plugin, monkeypatch, capsys):
    """A finite loss whose gradient is NaN, at the last step of epoch 1: the loss never shows it, the
    weights do (checked before anything is saved). In a group the student is recorded (no checkpoint:
    epoch 1 was not finite) and the other finishes; a single run stops with one line and saves nothing."""
    document = recipe([{"kd.loss": "ce"}, DIVERGING_RATE], None, plugin)
    plan = plan_sweep(parse_recipe(document, "weights"), tmp_path / "group")
    count_loss_calls(monkeypatch, 2 * STEPS_PER_EPOCH, nan_gradient)  # the 2nd student's last step
    run_plan(plan, log=lambda line: None)
    ce, poisoned = (Path(run.config.out) for run in plan.students)
    record = summary(poisoned)
    assert record["reason"] == "the weights became NaN or inf (the loss stayed finite)"
    assert (record["diverged_epoch"], record["diverged_step"]) == (1, STEPS_PER_EPOCH)
    assert record["last_finite_epoch"] == 0 and record["last_checkpoint"] is None
    assert record["test_acc_last_finite"] is None
    assert not (poisoned / "checkpoints").exists() and not (poisoned / "metrics.jsonl").exists()
    assert [row["epoch"] for row in rows(ce)] == [1, 2, 3] and summary(ce)["status"] == "finished"

    count_loss_calls(monkeypatch, STEPS_PER_EPOCH, nan_gradient)
    run = tmp_path / "single"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "2", "--batch-size", "64",
              "--out", str(run), "--set", "progress=false", "--set", "tensorboard=false"])  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"kdlab: error: {run}: the weights became NaN or inf by epoch 1, step {STEPS_PER_EPOCH} (the loss stayed "
        "finite); no checkpoint was saved: lower --lr or check the data, then --overwrite"
    )
    assert not (run / "checkpoints").exists() and not (run / "summary.json").exists()


def test_a_teacher_that_diverges_in_a_sweep_names_what_the_sweep_has(tmp_path, plugin, capsys):
    document = recipe(
        [{"kd.loss": "kl"}],
        "big",
        plugin,
        teachers={"big": {"model": "convnet-4", "kd": {"loss": "ce_boosted_from_2"}}},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    teacher = tmp_path / "s" / "teachers" / "big"
    assert message.startswith(
        f"kdlab: error: teacher {teacher}: the loss became NaN or inf at epoch 2, step "
    )
    assert message.endswith(
        "; its students cannot learn from it; lower its rate in the recipe (e.g. --set "
        f"teachers.big.optim.lr=...) and delete {teacher} to train it again"
    )
    assert "--overwrite" not in message and "\n" not in message
    assert not (teacher / "summary.json").exists()


def test_claims_leave_a_diverged_run_out_of_every_table_and_test_and_name_it(tmp_path):
    """C1 on a synthetic grid of 3 seeds where KL alpha=1 seed 2 diverged, as runs.csv rows: the test
    pairs seeds 0 and 1 only (hand-computed differences), the table counts 2 runs, and the claim's notes
    name the run."""
    document = {
        "description": "grid", "model": "convnet-4", "data": {"name": "digits"}, "optim": {"epochs": 2},
        "kd": {"loss": "kl", "teacher": "t"}, "teachers": {"t": {"model": "convnet-8"}}, "grid": {"kd.alpha": [0.1, 1.0], "kd.tau": [4.0]},
    }  # fmt: skip
    plan = plan_sweep(parse_recipe(document, "grid"), tmp_path / "grid", seeds=3)
    accuracy = {(0.1, 0): 50.0, (0.1, 1): 52.0, (0.1, 2): 51.0, (1.0, 0): 55.0, (1.0, 1): 53.5}
    records = {}
    for run in plan.students:
        key = (run.config.kd.alpha, run.config.seed)
        if key in accuracy:
            result = {"status": "finished", "test_acc_last": accuracy[key], "train_acc": 90.0 - accuracy[key]}
        else:  # what the engine writes for a run that diverged
            result = {"status": "diverged", "reason": "the loss became NaN or inf", "diverged_epoch": 2,
                      "diverged_step": 3, "last_finite_epoch": 1, "test_acc_last": None,
                      "test_acc_last_finite": 99.0}  # fmt: skip
        records[run.name] = RunRecord(Path(run.config.out), run.config, result)
    rows = rows_from_sweeps([Sweep("grid", "grid", plan, records)], "p")
    rows = parse_csv(csv_text(rows), "runs.csv")  # what a rejudge reads: the diverged run's row says why
    experiment = experiments_from_rows(rows)["grid"]
    assert [row.run for row in experiment.diverged] == ["kl-a1-t4-s2"]
    assert len(experiment.runs.select(loss="kl", alpha=1.0)) == 2
    table = accuracy_table(
        [("KL alpha=1", {"loss": "kl", "alpha": 1.0})], experiment.runs, ("test_acc_last",)
    )
    assert table.splitlines()[2].startswith("| KL alpha=1 | 2 | 54.25 ± 1.06 ")
    result = judge("C1", experiment)
    test_acc = result.secondary[-1]  # acc(alpha=1) - acc(alpha=0.1): C1's difference, now secondary
    assert test_acc.differences() == {(0, 0): 5.0, (0, 1): 1.5}  # seed 2 left out, its 99.0 unseen
    assert result.notes[-1] == (
        "left out of every table and test: 1 run(s) that diverged: kl-a1-t4-s2 (diverged at epoch 2, step 3: the "
        "loss became NaN or inf (last finite epoch 1))"
    )
