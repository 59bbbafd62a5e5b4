"""Experiments: recipes and grid expansion, sweeps (resume, shards, lockstep, jobs), chains, label
noise at the experiment level, reports on synthetic run folders, and ``reproduce --preset tiny``.

Training runs use digits and convnets of width 4-8 for 1-3 epochs, with one torch thread: these
models are far too small to gain from two, and on a busy 2-core machine two threads were measured
up to 10x slower.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

import kdlab.engine
from kdlab.cli import main
from kdlab.data import load_dataset
from kdlab.errors import UserError
from kdlab.evaluate import evaluate_checkpoint
from kdlab.experiments.chain import parse_stage, plan_chain, run_chain
from kdlab.experiments.presets import PRESETS, parse_claims
from kdlab.experiments.recipes import (
    load_recipe,
    parse_recipe,
    parse_shard,
    plan_sweep,
    recipe_document,
    recipe_names,
    select_shard,
)
from kdlab.experiments.report import write_report
from kdlab.experiments.reproduce import reproduce
from kdlab.experiments.sweep import lockstep_groups, run_plan, run_sweep, split_for_jobs

QUIET = {"progress": False, "tensorboard": False}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits_recipe(**changes) -> dict:
    """A small recipe on digits: teacher convnet-8 (2 epochs), convnet-4 students (2 epochs)."""
    document = {
        "description": "test",
        "model": "convnet-4",
        "data": {"name": "digits"},
        "optim": {"epochs": 2, "batch_size": 64},
        "kd": {"teacher": "big", "loss": "kl", "alpha": 1.0},
        "teachers": {"big": {"model": "convnet-8"}},
        "grid": {"kd.tau": [1, "inf"]},
        "runs": [{"kd.loss": "mse"}],
        **QUIET,
    }
    document.update(changes)
    return document


def log_nothing(message: str) -> None:
    pass


def run_cli(*args: str) -> None:
    """``kdlab ARGS`` in this process; it must succeed (typer ends with SystemExit(0))."""
    try:
        main(list(args))
    except SystemExit as error:
        assert error.code in (0, None), error.code


def folder_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if (path / "config.yaml").is_file())


# --- recipes and grid expansion ------------------------------------------------------------------


def test_grid_expansion_names_seeds_and_teachers(tmp_path):
    document = digits_recipe(
        grid={"kd.alpha": [0.5, 1.0], "kd.tau": [1, "inf"]}, runs=[{"kd.loss": "mse"}, {"kd": {"loss": "ce"}}]
    )
    plan = plan_sweep(parse_recipe(document, "demo"), tmp_path / "sweep", seeds=2)
    names = [run.name for run in plan.students]
    assert len(names) == (2 * 2 + 2) * 2 == len(set(names))
    assert names == sorted(
        f"{stem}-s{seed}"
        for stem in ["kl-a0.5-t1", "kl-a0.5-tinf", "kl-a1-t1", "kl-a1-tinf", "mse-a1", "ce"]
        for seed in (0, 1)
    )
    by_name = {run.name: run.config for run in plan.students}
    config = by_name["kl-a0.5-tinf-s1"]
    assert (config.kd.alpha, config.kd.tau, config.seed, config.model) == (0.5, math.inf, 1, "convnet-4")
    assert config.out == str(tmp_path / "sweep" / "kl-a0.5-tinf-s1")
    assert config.kd.teacher == str(tmp_path / "sweep" / "teachers" / "big")
    teacher = plan.teachers["big"].config
    assert (teacher.model, teacher.kd.loss, teacher.kd.teacher, teacher.optim.epochs) == (
        "convnet-8",
        "ce",
        None,
        2,
    )
    # Grid keys that are not loss tokens name the run; a teacher list is an ensemble.
    document = digits_recipe(
        teachers={"a": {"model": "convnet-8"}, "b": {"model": "convnet-8", "seed": 1}},
        kd={"teacher": "a", "loss": "kl"},
        grid={"model": ["convnet-4", "mlp-64"]},
        runs=[{"kd.teacher": ["a", "b"], "kd.loss": "mse"}],
    )
    plan = plan_sweep(parse_recipe(document, "pairs"), tmp_path / "pairs", teachers_dir=tmp_path / "shared")
    assert [run.name for run in plan.students] == [
        "convnet-4-kl-a1-t4-s0",
        "from-a+b-mse-a1-s0",
        "mlp-64-kl-a1-t4-s0",
    ]
    assert plan.students[1].config.kd.teacher == [
        str(tmp_path / "shared" / "a"),
        str(tmp_path / "shared" / "b"),
    ]


def test_recipes_extend_a_shipped_or_a_local_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: mlp-16\ndata: {name: digits, subset: 500}\noptim: {epochs: 2}\n"
    )
    (tmp_path / "mine.yaml").write_text(
        "extends: base.yaml\ndata: {val_split: 100}\nkd: {teacher: t, loss: kl}\nteachers: {t: {model: convnet-4}}\n"
    )
    recipe = load_recipe(tmp_path / "mine.yaml", ["optim.lr=0.05"])
    assert recipe.base["model"] == "mlp-16" and recipe.base["optim"] == {"epochs": 2, "lr": 0.05}
    assert recipe.base["data"] == {"name": "digits", "subset": 500, "val_split": 100}  # merged key by key
    small = load_recipe("grid-small")  # extends the shipped _small base
    assert (small.base["model"], small.base["data"]["val_split"], small.base["optim"]["lr"]) == (
        "mlp-64",
        1000,
        0.01,
    )
    (tmp_path / "bad.yaml").write_text("extends: nowhere.yaml\nmodel: mlp-16\n")
    with pytest.raises(UserError, match="extends 'nowhere.yaml', which is neither a shipped base"):
        load_recipe(tmp_path / "bad.yaml")


def test_set_overrides_edit_the_recipe_document(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(digits_recipe()))
    recipe = load_recipe(path, ["optim.epochs=5", "teachers.big.optim.epochs=7", "grid.kd.tau=[3]"])
    plan = plan_sweep(recipe, tmp_path / "out")
    assert recipe.name == "mine"
    assert [run.name for run in plan.students] == ["kl-a1-t3-s0", "mse-a1-s0"]
    assert plan.students[0].config.optim.epochs == 5 and plan.teachers["big"].config.optim.epochs == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"epoch": 3}}, "unknown config key 'optim.epoch' (did you mean optim.epochs or optim.eps?): valid keys are optim.name, optim.epochs"),
        ({"grids": {}}, "unknown recipe key 'grids' in r (did you mean grid?): valid keys are"),
        ({"grid": {"kd.tau": 3}}, "grid key 'kd.tau' must map to a non-empty list"),
        ({"grid": {"kd.alhpa": [1]}}, "unknown config key 'kd.alhpa' (did you mean kd.alpha"),
        ({"kd": {"teacher": "bigg", "loss": "kl"}}, "kd.teacher 'bigg' is neither a teacher of recipe r (did you mean big?)"),
        ({"teachers": {"a": {"kd": {"teacher": "b", "loss": "kl"}}, "b": {"kd": {"teacher": "a", "loss": "kl"}}}},
         "teachers read each other in a cycle (a -> b -> a)"),
        ({"grid": {"kd.alpha": [1.5]}}, "alpha=1.5 is outside [0, 1]"),
        ({"seeds": 0}, "seeds=0 must be a whole number in 1..100"),
    ],
)  # fmt: skip
def test_recipe_errors_name_the_key_and_the_fix(tmp_path, change, message):
    with pytest.raises(UserError) as error:
        plan_sweep(parse_recipe(digits_recipe(**change), "r"), tmp_path)
    assert message in str(error.value)


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown recipe 'grid-smal' \(did you mean grid-small"):
        load_recipe("grid-smal")


def test_every_experiment_has_a_recipe_at_both_scales_and_teachers_agree(tmp_path):
    experiments = [
        "data-fraction",
        "grid",
        "label-noise",
        "logit-distance",
        "methods",
        "pairs",
        "penultimate",
        "poor-teacher",
        "sequential",
    ]
    shipped = [f"{e}-{s}" for e in experiments for s in ("paper", "small")] + ["imagenet-paper"]
    assert recipe_names() == sorted(shipped)
    imagenet = plan_sweep(load_recipe("imagenet-paper"), tmp_path / "i")
    assert {run.config.kd.teacher for run in imagenet.students} == {"torchvision:resnet152"}
    assert {(run.config.model, run.config.data.name) for run in imagenet.students} == {
        ("resnet50", "imagenet")
    }
    assert len(imagenet.students) == 6 and not imagenet.teachers
    for scale in ("small", "paper"):
        teachers: dict[str, dict] = {}
        for experiment in experiments:
            plan = plan_sweep(
                load_recipe(f"{experiment}-{scale}"), tmp_path / experiment, teachers_dir=tmp_path / "t"
            )
            for name, run in plan.teachers.items():
                # One teachers folder serves every recipe of a scale: equal names must be equal runs.
                assert teachers.setdefault(name, run.config.to_dict()) == run.config.to_dict(), name
            shipped_file = resources.files("kdlab") / "recipes" / f"{experiment}-{scale}.yaml"
            assert yaml.safe_load(shipped_file.read_text())["extends"] == f"_{scale}", experiment  # one base
            assert any(run.config.kd.loss == "ce" for run in plan.students), (
                experiment
            )  # the gates' CE student
    grid = plan_sweep(load_recipe("grid-paper"), tmp_path / "g")
    assert len(grid.students) == 51  # 10 alphas x 5 taus and the gates' CE student
    config = grid.students[0].config
    assert (config.model, config.data.name, config.optim.epochs, config.optim.lr, config.optim.batch_size) == (
        "wrn-16-2", "cifar100", 200, 0.1, 128
    )  # fmt: skip
    assert grid.teachers["wrn-28-4"].config.model == "wrn-28-4"
    pairs = plan_sweep(load_recipe("pairs-paper"), tmp_path / "p")
    assert {run.config.model for run in pairs.students} == {"wrn-16-2", "wrn-16-4", "wrn-28-2", "wrn-40-2"}
    methods = plan_sweep(load_recipe("methods-small"), tmp_path / "m")
    assert list(methods.teachers) == ["convnet-32"]  # the teacher of the other *-small recipes
    assert [run.name for run in methods.students if run.config.seed == 0] == [
        "ce-s0", "dist-b2-g2-t4-s0", "dkd-a1-b8-t4-w3-s0", "kl-a1-t4-s0", "kl-ls-a1-t2-s0", "mse-a1-s0",
    ]  # fmt: skip
    assert (
        len(methods.students) == 18 and len(lockstep_groups(methods.students)) == 3
    )  # one teacher pass per seed
    fraction = plan_sweep(load_recipe("data-fraction-paper"), tmp_path / "f")
    assert sorted((run.config.kd.loss, run.config.data.select or "all") for run in fraction.students) == [
        ("ce", "all"), ("kl", "all"), ("kl", "classes:random:0-0.1"), ("kl", "samples:entropy:0-0.1"),
        ("kl", "samples:random:0-0.1"), ("kl", "samples:tld:0-0.1"),
    ]  # fmt: skip
    assert {(run.config.kd.alpha, run.config.kd.tau, run.config.model) for run in fraction.students} == {
        (1.0, 20.0, "wrn-16-2")
    }
    noise = plan_sweep(load_recipe("label-noise-paper"), tmp_path / "n")
    assert {run.config.data.label_noise for run in [*noise.students, *noise.teachers.values()]} == {
        "symmetric:0.4"
    }
    assert sorted(run.config.kd.tau for run in noise.students if run.config.kd.loss == "kl") == [
        0.5,
        1.0,
        math.inf,
    ]


# --- shards and groups ---------------------------------------------------------------------------


def test_shards_are_disjoint_and_complete(tmp_path):
    plan = plan_sweep(load_recipe("grid-small"), tmp_path, seeds=3)
    names = [run.name for run in plan.students]
    for count in (1, 4, 7, 200):
        shards = [[run.name for run in select_shard(plan.students, index, count)] for index in range(count)]
        assert sorted(name for shard in shards for name in shard) == sorted(names)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard .* is invalid: write I/N with 0 <= I < N"):
            parse_shard(bad)


def test_lockstep_groups_and_job_splitting(tmp_path):
    plan = plan_sweep(parse_recipe(digits_recipe(), "r"), tmp_path, seeds=2)
    groups = lockstep_groups(plan.students)
    assert [[run.name for run in group] for group in groups] == [
        ["kl-a1-t1-s0", "kl-a1-tinf-s0", "mse-a1-s0"], ["kl-a1-t1-s1", "kl-a1-tinf-s1", "mse-a1-s1"]
    ]  # fmt: skip
    assert sorted(map(len, split_for_jobs(groups, 4))) == [1, 1, 2, 2]
    assert len(lockstep_groups(plan.students, lockstep=False)) == 6


# --- sweeps: training, resume, shards, parallel jobs -----------------------------------------------


def summaries_of(folder: Path) -> dict[str, dict]:
    return {
        path.parent.relative_to(folder).as_posix(): json.loads(path.read_text())
        for path in folder.rglob("summary.json")
    }


def comparable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key not in ("wall_time_s", "finished_at")}


def test_interrupted_sweep_resumes_to_every_run_exactly_once(tmp_path, monkeypatch):
    recipe = parse_recipe(digits_recipe(), "r")
    reference = tmp_path / "reference"
    run_sweep(recipe, reference, lockstep=False, log=log_nothing)  # one at a time: the standalone result
    # Interrupt the lockstep group right after its first student's first epoch is saved.
    original = kdlab.engine.Trainer.end_epoch
    calls = []

    def end_epoch_then_stop(self, student, row):
        original(self, student, row)
        if "teachers" not in str(student.run.path):
            calls.append(student.run.path.name)
            if len(calls) == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(kdlab.engine.Trainer, "end_epoch", end_epoch_then_stop)
    sweep = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(recipe, sweep, log=log_nothing)
    monkeypatch.setattr(kdlab.engine.Trainer, "end_epoch", original)
    teacher_summary = (sweep / "teachers" / "big" / "summary.json").read_text()
    assert not any((sweep / name / "summary.json").exists() for name in folder_names(sweep))
    plan, summaries = run_sweep(recipe, sweep, log=log_nothing)  # one student at epoch 1, two at 0
    assert folder_names(sweep) == sorted(run.name for run in plan.students) == list(summaries)[1:]
    assert (sweep / "teachers" / "big" / "summary.json").read_text() == teacher_summary  # trained once
    for name in folder_names(sweep):
        assert [
            json.loads(line)["epoch"] for line in (sweep / name / "metrics.jsonl").read_text().splitlines()
        ] == [1, 2]
    # Resumed lockstep runs end exactly where uninterrupted standalone runs end.
    expected, got = summaries_of(reference), summaries_of(sweep)
    assert got.keys() == expected.keys()
    for name in expected:
        assert comparable(got[name])["test_acc_last"] == expected[name]["test_acc_last"], name
        assert got[name].get("logit_distance", 0) == pytest.approx(
            expected[name].get("logit_distance", 0), rel=1e-6
        )
    # A finished sweep is not retrained, and a changed setting is refused rather than mixed in.
    before = {name: (sweep / name / "summary.json").stat().st_mtime_ns for name in folder_names(sweep)}
    run_sweep(recipe, sweep, log=log_nothing)
    assert before == {
        name: (sweep / name / "summary.json").stat().st_mtime_ns for name in folder_names(sweep)
    }
    changed = parse_recipe(digits_recipe(optim={"epochs": 3, "batch_size": 64}), "r")
    with pytest.raises(UserError, match=r"holds a run with optim.epochs=2, but the sweep now asks for 3"):
        run_sweep(changed, sweep, log=log_nothing)
    damaged = sweep / folder_names(sweep)[0] / "config.yaml"
    damaged.write_text("optim: [not, a, mapping\n")
    with pytest.raises(UserError, match=rf"^{damaged} cannot be read as a kdlab config: delete "):
        run_sweep(recipe, sweep, log=log_nothing)


def test_shards_and_parallel_jobs_complete_the_grid_once(tmp_path):
    recipe = parse_recipe(
        digits_recipe(optim={"epochs": 1, "batch_size": 64}, teachers={"big": {"model": "convnet-4"}}), "r"
    )
    sweep = tmp_path / "sweep"
    plan = plan_sweep(recipe, sweep, seeds=2)
    first = run_plan(plan, shard=(0, 2), log=log_nothing)
    assert list(first) == ["teachers/big", *[run.name for run in select_shard(plan.students, 0, 2)]]
    assert folder_names(sweep) == [run.name for run in select_shard(plan.students, 0, 2)]
    # The other shard in two spawned processes (one lockstep group split in two): the union is the
    # whole grid, each run once, and the teacher is not trained again.
    teacher_summary = (sweep / "teachers" / "big" / "summary.json").read_text()
    second = run_plan(plan, jobs=2, shard=(1, 2), log=log_nothing)
    assert list(second) == ["teachers/big", *[run.name for run in select_shard(plan.students, 1, 2)]]
    assert folder_names(sweep) == sorted(run.name for run in plan.students)
    assert len(summaries_of(sweep)) == len(plan.students) + 1
    assert (sweep / "teachers" / "big" / "summary.json").read_text() == teacher_summary


def test_sweep_command_dry_run_and_errors(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(digits_recipe()))
    run_cli("sweep", str(path), "--out", str(tmp_path / "s"), "--seeds", "2", "--shard", "1/2", "--dry-run")
    listed = capsys.readouterr().out.split()
    assert listed == [
        str(tmp_path / "s" / name) for name in ("teachers/big", "kl-a1-t1-s1", "kl-a1-tinf-s1", "mse-a1-s1")
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--shard", "2/2"])
    assert exit_info.value.code == 2
    assert "--shard '2/2' is invalid" in capsys.readouterr().err


# --- chains ----------------------------------------------------------------------------------------


def test_chain_on_digits_feeds_each_stage_to_the_next(tmp_path):
    stages = [parse_stage(text) for text in ("convnet-8:ce", "convnet-4:kl:tau=3,epochs=1", "convnet-4:mse")]
    assert stages[1].overrides == ("kd.tau=3", "optim.epochs=1")
    flags = {"data": {"name": "digits"}, "optim": {"epochs": 2, "batch_size": 64}}
    summaries = run_chain(
        stages, tmp_path, flags=flags, overrides=["progress=false", "tensorboard=false"], log=log_nothing
    )
    folders = ["stage1-convnet-8-ce", "stage2-convnet-4-kl-a1-t3", "stage3-convnet-4-mse-a1"]
    assert folder_names(tmp_path) == folders
    assert [s["teacher"] for s in summaries] == [None, str(tmp_path / folders[0]), str(tmp_path / folders[1])]
    assert [s["epochs"] for s in summaries] == [2, 1, 2]
    assert summaries[0]["test_acc_best"] > 50  # 10 classes: chance is 10%
    assert all(s["logit_distance"] > 0 for s in summaries[1:])
    again = run_chain(stages, tmp_path, flags=flags, overrides=["progress=false"], log=log_nothing)
    assert [s["wall_time_s"] for s in again] == [s["wall_time_s"] for s in summaries]  # finished: reused
    with pytest.raises(UserError, match=r"stage 1 \(convnet-4:kl\) needs a teacher"):
        plan_chain([parse_stage("convnet-4:kl")], tmp_path)
    for bad in ("convnet-4", "convnet-4:kl:tau"):
        with pytest.raises(UserError, match="--stage"):
            parse_stage(bad)


# --- label noise at the experiment level -----------------------------------------------------------


def test_label_noise_recipe_same_flips_for_all_runs_test_set_clean(tmp_path):
    name, document = recipe_document("label-noise-small")
    document = PRESETS["tiny"].adjust("label-noise", copy.deepcopy(document))
    document.update(QUIET, optim={"epochs": 1, "batch_size": 64}, runs=[])
    document["grid"] = {"kd.tau": [1]}
    document["teachers"]["convnet-32-noisy"]["model"] = "convnet-4"
    plan, summaries = run_sweep(parse_recipe(document, name), tmp_path, seeds=2, log=log_nothing)
    clean = load_dataset("digits")
    expected_rate = round(0.4 * len(clean.train)) / len(clean.train)
    records = [
        json.loads((Path(run.config.out) / "label_noise.json").read_text())
        for run in [*plan.teachers.values(), *plan.students]
    ]
    assert len(records) == 3
    assert all(
        record == records[0] for record in records
    )  # noise_seed, not the training seed, draws the flips
    assert len(records[0]["flipped_indices"]) == round(0.4 * len(clean.train))
    for summary in summaries.values():
        assert summary["label_noise_realised_rate"] == expected_rate
        assert summary["label_noise"] == "symmetric:0.4"
    # The test set is clean: re-evaluating on the untouched test split gives the logged accuracy.
    student = plan.students[0]
    assert evaluate_checkpoint(student.config.out, device="cpu")["test_acc"] == pytest.approx(
        summaries[student.name]["test_acc_last"]
    )


# --- report on synthetic run folders ---------------------------------------------------------------


def write_run(folder: Path, seed: int, loss: str, alpha: float, tau: float, acc_best: float, acc_last: float,
              distance: float | None = 1.0) -> None:  # fmt: skip
    folder.mkdir(parents=True)
    config = {"model": "convnet-4", "seed": seed, "out": str(folder), "data": {"name": "digits"},
              "kd": {"teacher": "runs/teacher" if loss != "ce" or distance else None, "loss": loss, "alpha": alpha, "tau": tau},
              "run_info": {"git_commit": "x"}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {
        "test_acc_best": acc_best,
        "test_acc_last": acc_last,
        "train_acc": 90.0 + seed,
        "epochs": 2,
        "seed": seed,
    }
    if distance is not None:
        summary["logit_distance"] = distance
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_groups_seeds_and_draws_the_grid(tmp_path):
    accuracy = {(0.5, 1.0): 70.0, (0.5, math.inf): 72.0, (1.0, 1.0): 74.0, (1.0, math.inf): 76.0}
    for (alpha, tau), acc in accuracy.items():
        for seed in (0, 1):
            name = f"kl-a{alpha:g}-t{tau:g}-s{seed}"
            write_run(
                tmp_path / name,
                seed,
                "kl",
                alpha,
                tau,
                acc + 2 * seed,
                acc - 1 + seed,
                distance=tau if tau < 10 else 0.5,
            )
    for seed in (0, 1):
        write_run(tmp_path / f"mse-s{seed}", seed, "mse", 1.0, 4.0, 80.0 + seed, 79.0, distance=0.25)
        write_run(tmp_path / f"ce-s{seed}", seed, "ce", 1.0, 4.0, 60.0, 60.0)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("model: convnet-4\n")
    result = write_report(tmp_path, log=log_nothing)
    assert result == {
        "runs": 12, "groups": 6, "plots": ["heatmap.png", "tau_curves.png"], "gates": [], "diverged": [],
        "copies": [],
    }  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    by_label = {(row["kd.loss"], row["kd.alpha"], row["kd.tau"]): row for row in rows}
    kl = by_label[("kl", "1", "inf")]
    assert (kl["n"], kl["seeds"]) == ("2", "0 1")
    assert float(kl["test_acc_best_mean"]) == 77.0 and float(kl["test_acc_best_std"]) == pytest.approx(
        math.sqrt(2), abs=1e-4
    )
    assert float(kl["test_acc_last_mean"]) == 75.5 and float(kl["train_acc_mean"]) == 90.5
    assert by_label[("mse", "1", "-")]["logit_distance_mean"] == "0.2500"  # tau does not enter an MSE run
    assert by_label[("ce", "-", "-")]["logit_distance_mean"] == "1.0000"
    report = (tmp_path / "report.md").read_text()
    assert (
        "| convnet-4 | teacher | kl | 1 | inf | 2 | 75.50 ± 0.71 | 77.00 ± 1.41 | 90.50 ± 0.71 | 0.50 ± 0.00 |"
        in report
    )
    assert "| context | CE | KL tau=1 | KL tau=inf | MSE |" in report
    assert "| 60.00 ± 0.00 | 73.50 ± 0.71 | 75.50 ± 0.71 | 79.00 ± 0.00 |" in report  # last-epoch accuracy
    assert "![alpha x tau: " in report and (tmp_path / "heatmap.png").stat().st_size > 1000
    # The teacher the runs name was never trained here: the gates section says so in one line.
    missing = (
        "no gates for teacher teacher: runs/teacher is not a finished run folder (no summary.json there)"
    )
    assert report.index("## The regime: gates") < report.index("## Results") and f"\n{missing}\n" in report
    assert json.loads((tmp_path / "gates.json").read_text()) == {"gates": [], "no_gates": [missing]}
    with pytest.raises(UserError, match="holds no finished runs"):
        write_report(tmp_path / "unfinished", log=log_nothing)


def test_report_keeps_two_teachers_of_one_folder_name_apart_by_their_checkpoints_sha256(tmp_path):
    """Students of runs/a/teacher and runs/b/teacher (outside the report's folder: both named
    'teacher'), and of a teacher trained again in place, are never averaged together."""
    students = tmp_path / "students"

    def student(name: str, teacher: str | None, digest: str | None, seed: int, acc: float) -> None:
        folder = students / name
        folder.mkdir(parents=True)
        config = {"model": "convnet-4", "seed": seed, "out": str(folder), "data": {"name": "digits"},
                  "kd": {"teacher": teacher, "loss": "kl" if teacher else "ce", "alpha": 1.0, "tau": 4.0}}  # fmt: skip
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        inputs = {"teachers": [{"path": teacher, "sha256": digest}]} if digest else {}
        summary = {
            "test_acc_last": acc,
            "test_acc_best": acc,
            "train_acc": 95.0,
            "seed": seed,
            "inputs": inputs,
        }
        (folder / "summary.json").write_text(json.dumps(summary))

    a, b = "a" * 64, "b" * 64
    for seed in (0, 1):
        student(f"from-a-s{seed}", str(tmp_path / "runs" / "a" / "teacher"), a, seed, 70.0 + seed)
        student(f"from-b-s{seed}", str(tmp_path / "runs" / "b" / "teacher"), b, seed, 80.0 + seed)
    student("ce-s0", None, None, 0, 65.0)  # then each teacher gets its gates, or a line why not
    result = write_report(students, log=log_nothing)
    assert result["groups"] == 3
    no_gates = json.loads((students / "gates.json").read_text())["no_gates"]
    assert result["gates"] == [] and {line.split(": ")[0] for line in no_gates} == {
        f"no gates for teacher {tmp_path / 'runs' / folder / 'teacher'}" for folder in "ab"
    }  # two lines, each naming its folder in full
    shutil.rmtree(students / "ce-s0")
    rows = {
        row["kd.teacher"]: row for row in csv.DictReader((students / "results.csv").open()) if row["n"] == "2"
    }
    assert set(rows) == {f"teacher (sha256 {'a' * 12})", f"teacher (sha256 {'b' * 12})"}
    assert float(rows[f"teacher (sha256 {'a' * 12})"]["test_acc_last_mean"]) == 70.5
    assert float(rows[f"teacher (sha256 {'b' * 12})"]["test_acc_last_mean"]) == 80.5

    # One folder whose teacher was trained again in place (and a run of a kdlab that recorded no hash).
    shutil.rmtree(students)
    same = str(tmp_path / "runs" / "teacher")
    for seed in (0, 1):
        student(f"before-s{seed}", same, a, seed, 70.0)
        student(f"after-s{seed}", same, b, seed, 80.0)
    student("old-s0", same, None, 0, 60.0)
    assert write_report(students, log=log_nothing)["groups"] == 3
    rows = {row["kd.teacher"]: row["n"] for row in csv.DictReader((students / "results.csv").open())}
    assert rows == {f"teacher (sha256 {'a' * 12})": "2", f"teacher (sha256 {'b' * 12})": "2",
                    "teacher (sha256 not recorded)": "1"}  # fmt: skip

    # The same checkpoint under one name: one group, named as before.
    for name in ("after-s0", "after-s1", "old-s0"):
        shutil.rmtree(students / name)
    assert write_report(students, log=log_nothing)["groups"] == 1
    assert [row["kd.teacher"] for row in csv.DictReader((students / "results.csv").open())] == ["teacher"]


def test_report_applies_the_regime_gates_to_each_teacher_and_ce_setting(tmp_path):
    # Two teachers (one only as an ensemble member), two student models with CE runs, two seeds.
    document = digits_recipe(
        optim={"epochs": 1, "batch_size": 64},
        teachers={"big": {"model": "convnet-8", "optim": {"epochs": 2}}, "other": {"model": "convnet-4", "seed": 1}},
        kd={"teacher": "big", "loss": "kl", "alpha": 1.0},
        grid={"model": ["convnet-4", "mlp-16"], "kd.loss": ["ce", "kl"]},
        runs=[{"kd.teacher": ["big", "other"], "kd.loss": "mse"}],
    )  # fmt: skip
    sweep = tmp_path / "sweep"
    plan, summaries = run_sweep(parse_recipe(document, "r"), sweep, seeds=2, log=log_nothing)
    teachers = {name: summaries[run.name] for name, run in plan.teachers.items()}
    ce = {
        model: [summaries[run.name] for run in plan.students if (run.config.model, run.config.kd.loss) == (model, "ce")]
        for model in ("convnet-4", "mlp-16")
    }  # fmt: skip
    assert [len(runs) for runs in ce.values()] == [2, 2]

    def by_hand(teacher: str, model: str) -> dict[str, float]:
        """G1 = teacher train_acc; G2 = teacher test_acc_last - mean CE test_acc_last; G3 = mean CE train_acc."""
        runs = ce[model]
        mean = lambda key: sum(run[key] for run in runs) / len(runs)  # noqa: E731
        summary = teachers[teacher]
        return {
            "G1": summary["train_acc"], "G2": summary["test_acc_last"] - mean("test_acc_last"),
            "G3": mean("train_acc"),
        }  # fmt: skip

    expected = {
        (f"{name} -> {model} CE, 2 seeds", gate): value
        for name, teacher in (("teachers/big (convnet-8)", "big"), ("teachers/other (convnet-4)", "other"))
        for model in ("convnet-4", "mlp-16")
        for gate, value in by_hand(teacher, model).items()
    }
    # Teachers inside the folder are runs too (teachers/other is a CE convnet-4): never counted as CE students.
    result = write_report(sweep, log=log_nothing)
    got = {(gate["scope"], gate["name"]): gate for gate in result["gates"]}
    assert set(got) == set(expected)
    for key, value in expected.items():
        gate = got[key]
        assert gate["value"] == pytest.approx(value, abs=1e-9), key
        assert gate["passed"] == (value >= gate["threshold"])
    assert json.loads((sweep / "gates.json").read_text()) == {"gates": result["gates"], "no_gates": []}
    big_mlp = got[("teachers/big (convnet-8) -> mlp-16 CE, 2 seeds", "G2")]
    assert big_mlp["teacher"] == str(sweep / "teachers" / "big") and len(big_mlp["ce_runs"]) == 2
    report = (sweep / "report.md").read_text()
    assert (
        report.index("## The regime: gates")
        < report.index("Gates, declared before any run")
        < report.index("## Results")
    )
    value = expected[("teachers/big (convnet-8) -> mlp-16 CE, 2 seeds", "G3")]
    assert (
        f"| teachers/big (convnet-8) -> mlp-16 CE, 2 seeds | G3 | CE student clean-train accuracy >= 90% | {value:.2f} "
        f"| >= 90 | {'yes' if value >= 90 else '**no**'} |" in report
    )  # fmt: skip

    # The students without their teachers (a shared --teachers-dir elsewhere): teachers are read from disk.
    alone = tmp_path / "students"
    alone.mkdir()
    for run in plan.students:
        shutil.copytree(run.config.out, alone / run.name)
    gates = write_report(alone, log=log_nothing)["gates"]
    assert {(g["scope"].replace("big", "teachers/big").replace("other", "teachers/other"), g["name"]): g["value"]
            for g in gates} == pytest.approx(expected)  # fmt: skip

    # No CE student: one line says so.
    for run in plan.students:
        if run.config.kd.loss == "ce":
            shutil.rmtree(alone / run.name)
    lines: list[str] = []
    assert write_report(alone, log=lines.append)["gates"] == []
    missing = "no gates: no CE student (a run with kd.loss ce, not itself a teacher) among the 6 runs: add one trained on the teacher's data"
    assert missing in lines and f"## The regime: gates\n\n{missing}\n" in (alone / "report.md").read_text()


def test_report_gates_read_ce_students_trained_on_the_teachers_data(tmp_path):
    def write(name: str, model: str, loss: str, teacher: str | None, noise: str | None, train: float, test: float,
              seed: int = 0) -> None:  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        config = {"model": model, "seed": seed, "out": str(folder), "data": {"name": "digits", "label_noise": noise},
                  "kd": {"teacher": teacher, "loss": loss}}  # fmt: skip
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        summary = {"train_acc": train, "test_acc_last": test, "test_acc_best": test, "seed": seed}
        (folder / "summary.json").write_text(json.dumps(summary))

    noisy, teacher = "symmetric:0.4", str(tmp_path / "t")
    write("ce-clean-s0", "mlp-16", "ce", None, None, 95.0, 80.0)
    assert write_report(tmp_path, log=log_nothing)["gates"] == []
    first = "no gates: none of the 1 runs reads a teacher (the gates compare a teacher with its CE students)"
    assert json.loads((tmp_path / "gates.json").read_text())["no_gates"] == [first]
    write("t", "convnet-8", "ce", None, noisy, 99.5, 88.0)
    write("kl-s0", "mlp-16", "kl", teacher, noisy, 70.0, 84.0)
    write("ce-s0", "mlp-16", "ce", teacher, None, 95.0, 80.0)
    write_report(tmp_path, log=log_nothing)
    assert json.loads((tmp_path / "gates.json").read_text())["no_gates"] == [
        "no gates for teacher t: no CE student trained on its data (the CE runs differ in data.label_noise "
        "(teacher: symmetric:0.4))"
    ]
    for seed, (train, test) in enumerate(
        [(91.0, 85.0), (88.0, 84.0)]
    ):  # CE students on the teacher's noisy data
        write(f"ce-noisy-s{seed}", "mlp-16", "ce", teacher, noisy, train, test, seed)
    gates = {gate["name"]: gate for gate in write_report(tmp_path, log=log_nothing)["gates"]}
    assert {name: (gate["value"], gate["passed"]) for name, gate in gates.items()} == {
        "G1": (99.5, True), "G2": (pytest.approx(88.0 - 84.5), True), "G3": (pytest.approx(89.5), False)
    }  # fmt: skip
    assert gates["G3"]["scope"] == "t (convnet-8) -> mlp-16 CE, 2 seeds"


# --- claim statistics and reproduce ----------------------------------------------------------------


def test_parse_claims():
    assert parse_claims("c5, C1,C5") == ["C1", "C5"]
    with pytest.raises(UserError, match="unknown claim 'C10'"):
        parse_claims("C10")


def test_reproduce_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "tiny"
    run_cli("reproduce", "--preset", "tiny", "--out", str(out))
    report = (out / "REPORT.md").read_text()
    claims = json.loads((out / "claims.json").read_text())["claims"]
    assert [c["claim"] for c in claims] == [f"C{i}" for i in range(1, 10)]
    verdicts = {c["claim"]: c["verdict"] for c in claims}
    assert verdicts["C3"] == "holds"  # exact, needs no seeds
    for claim in claims[:2] + claims[3:]:  # one teacher seed: no verdict, unless gates rule the claim out
        assert claim["verdict"] in ("outside the paper's regime", "inconclusive"), claim["claim"]
        assert claim["failing_gates"] or claim["verdict"] == "inconclusive", claim["claim"]
        seeds = (0, 1) if claim["claim"] == "C1" else (1, 1)  # C1's trend needs three alphas: tiny has two
        assert (claim["n_teacher_seeds"], claim["n_student_seeds"]) == seeds and claim["gates"], claim[
            "claim"
        ]
        assert claim["decided_by"] == "primary tests" and claim["primary"], claim["claim"]
    for claim in claims:
        assert f"| {claim['claim']} | **{claim['verdict']}** | {claim['evidence']} |" in report
    document = json.loads((out / "claims.json").read_text())
    assert {gate["name"] for gate in document["regime"]} == {"G1", "G2", "G3", "P1", "N1"}
    assert all(set(gate) >= {"name", "value", "threshold", "passed"} for gate in document["regime"])
    assert report.index("## The regime: gates") < report.index("## Verdicts") < report.index("## C1")
    assert len(document["teachers"]) == 6 and all(
        len(t["last_pt_sha256"]) == 64 for t in document["teachers"]
    )
    assert (
        report.count("## C") == 9
        and "test acc(alpha=1) - test acc(alpha=0.5), mean over tau in {3, 20, inf}" in report
    )
    for figure in ("heatmap.png", "tau_curves.png", "c6-projection.png", "c6-penultimate_norm.png"):
        assert f"(figures/{figure})" in report and (out / "figures" / figure).is_file()
    teachers = sorted(path.name for path in (out / "teachers").iterdir() if path.is_dir())
    assert teachers == [
        "convnet-32",
        "convnet-32-b",
        "convnet-32-noisy",
        "convnet-32-poor",
        "convnet-8",
        "convnet-8-from-convnet-32",
    ]
    # runs.csv: every run the claims read; judged again from it alone, claims.json is the same bytes up to
    # its invocation block (who judged, when, how long).
    rows = (out / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list(out.rglob("summary.json"))) == 1 + 33 + 6  # header, students, teachers
    rejudged = tmp_path / "rejudged"
    run_cli("reproduce", "--rejudge", str(out / "runs.csv"), "--out", str(rejudged))
    first, again = (out / "claims.json").read_text(), (rejudged / "claims.json").read_text()
    cut = first.index('  "invocation": {')
    assert again[:cut] == first[:cut] and again.index('  "invocation": {') == cut
    assert json.loads(again)["invocation"]["rejudged_from"] == str(out / "runs.csv")
    assert "rejudged from `" in (rejudged / "REPORT.md").read_text()
    assert (rejudged / "runs.csv").read_bytes() == (out / "runs.csv").read_bytes()
    # Again: every run is reused, only the judging is redone.
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("summary.json")}
    results = reproduce("tiny", "C1,C3", out, log=log_nothing)
    assert [r.claim for r in results] == ["C1", "C3"]
    assert stamps == {path: path.stat().st_mtime_ns for path in out.rglob("summary.json")}
    # Publishing: REPORT.md, claims.json and figures copied; the README's table rewritten from claims.json.
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- claims-table:start -->\n<!-- claims-table:end -->\n")
    run_cli("reproduce", "--preset", "tiny", "--claims", "C1,C3", "--out", str(out),
            "--publish", str(tmp_path / "docs"), "--readme", str(readme))  # fmt: skip
    assert (tmp_path / "docs" / "REPORT.md").read_text() == (out / "REPORT.md").read_text()
    assert (tmp_path / "docs" / "figures" / "heatmap.png").is_file()
    assert (tmp_path / "docs" / "runs.csv").read_bytes() == (out / "runs.csv").read_bytes()
    assert "| C3 | holds | - | exact checks on the loss functions (float64) |" in readme.read_text()


def test_demo_prints_its_table_and_the_gates(tmp_path):
    from kdlab.experiments.demo import DemoScale, run_demo

    lines: list[str] = []
    scale = DemoScale(
        "convnet-8", "mlp-16", subset=None, teacher_epochs=2, student_epochs=1, dataset="digits"
    )
    rows = run_demo(tmp_path / "demo", scale=scale, device="cpu", log=lines.append)
    assert [row["method"] for row in rows] == [
        "teacher convnet-8", "CE (no teacher)", "KL tau=1", "KL tau=4", "KL tau=20", "KL tau=inf", "MSE",
    ]  # fmt: skip
    printed = "\n".join(lines)
    assert printed.index("| method | test acc last (%)") < printed.index("| runs | gate | rule |")
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    teacher, ce = rows[0], rows[1]
    assert [gate["name"] for gate in results["gates"]] == ["G1", "G2", "G3"]
    assert results["gates"][1]["value"] == pytest.approx(teacher["test_acc_last"] - ce["test_acc_last"])
    assert "Regime gates" in (tmp_path / "demo" / "results.md").read_text()
    assert (tmp_path / "demo" / "results.png").stat().st_size > 1000
