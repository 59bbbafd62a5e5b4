"""A new loss is one registration. The losses below are registered in this file alone and go through
``distill``, ``train``, ``sweep`` and ``report`` with distinct, correct run names and labels; a loss
that reads penultimate features gets them from the training step. The shipped later losses (DKD,
DIST, KL with logit standardization, SmoothL1) learn in the same short sweep."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from kdlab.cli import main
from kdlab.config import build_config, declare_hyperparameter, undeclare_hyperparameter
from kdlab.engine import train
from kdlab.engine.step import check_feature_losses
from kdlab.errors import UserError
from kdlab.experiments.chain import parse_stage
from kdlab.experiments.recipes import parse_recipe, plan_sweep
from kdlab.experiments.report import write_report
from kdlab.experiments.sweep import run_plan
from kdlab.losses import LOSSES, register_loss
from kdlab.models import create_model
from kdlab.teacher import load_teacher

QUIET = {"progress": False, "tensorboard": False}
FEATURE_SHAPES: list[tuple[tuple[int, ...], tuple[int, ...]]] = []


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (conftest)


@pytest.fixture
def new_losses():
    """Three losses a contributor might add: reverse KL (a teacher, kdlab's tau, which it cannot take at 0
    or inf), label smoothing (no teacher, a hyperparameter of its own: kd.ls_smoothing) and norm
    matching of penultimate features."""

    @register_loss("rkl", label="RKL", params=("tau",), excludes={"tau": (0.0, math.inf)})
    def reverse_kl(student_logits, targets, *, teacher_logits, tau):
        log_student = F.log_softmax(student_logits / tau, dim=1)
        log_teacher = F.log_softmax(teacher_logits / tau, dim=1)
        return {"rkl": tau * tau * (log_student.exp() * (log_student - log_teacher)).sum(dim=1).mean()}

    declare_hyperparameter(
        "ls_smoothing",
        0.1,
        token="e",
        low=0.0,
        high=1.0,
        open_high=True,
        hint="e.g. --set kd.ls_smoothing=0.1",
    )

    @register_loss("ls", label="LS", reads=(), params={"smoothing": "ls_smoothing"})
    def label_smoothing(student_logits, targets, *, smoothing):
        return {"ls": F.cross_entropy(student_logits, targets, label_smoothing=smoothing)}

    @register_loss("normmatch", label="NormMatch", reads=("student_features", "teacher_features"))
    def norm_matching(student_logits, targets, *, student_features, teacher_features):
        FEATURE_SHAPES.append((tuple(student_features.shape), tuple(teacher_features.shape)))
        gap = student_features.norm(dim=1) - teacher_features.norm(dim=1)
        return {"ce": F.cross_entropy(student_logits, targets), "norm": gap.square().mean()}

    yield
    for name in ("rkl", "ls", "normmatch"):
        LOSSES.unregister(name)
    undeclare_hyperparameter("ls_smoothing")


def run_cli(*args: str) -> None:
    try:
        main([str(arg) for arg in args])
    except SystemExit as error:
        assert error.code in (0, None), error.code


def digits(out: Path, model: str = "convnet-4", epochs: int = 1) -> list[str]:
    return ["--dataset", "digits", "--model", model, "--epochs", str(epochs), "--out", str(out), "--set",
            "progress=false", "--set", "tensorboard=false", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "convnet-8"
    run_cli("train", *digits(out, "convnet-8", epochs=2))
    return out


def test_a_new_loss_trains_through_distill_and_train(new_losses, teacher, tmp_path):
    run_cli("distill", "--teacher", teacher, "--loss", "rkl", "--tau", "20", *digits(tmp_path / "rkl"))
    stored = yaml.safe_load((tmp_path / "rkl" / "config.yaml").read_text())
    assert (stored["kd"]["loss"], stored["kd"]["tau"]) == ("rkl", 20.0)
    metrics = [json.loads(line) for line in (tmp_path / "rkl" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[0]["train_rkl"]) and "train_ce" not in metrics[0]
    # A loss without a teacher is not refused (it used to be: "--loss ls needs a teacher").
    run_cli("train", *digits(tmp_path / "ls"), "--set", "kd.loss=ls", "--set", "kd.ls_smoothing=0.2")
    assert yaml.safe_load((tmp_path / "ls" / "config.yaml").read_text())["kd"]["ls_smoothing"] == 0.2
    assert json.loads((tmp_path / "ls" / "summary.json").read_text())["hyperparameters"] == {
        "ls_smoothing": 0.2
    }
    assert "train_ls" in (tmp_path / "ls" / "metrics.jsonl").read_text()
    # Its own range, checked before anything runs.
    with pytest.raises(UserError, match=r"kd.tau=0 cannot be used with loss rkl, which excludes 0, inf"):
        build_config(flags={"kd": {"loss": "rkl", "teacher": str(teacher), "tau": 0}})
    with pytest.raises(
        UserError, match=r"kd.ls_smoothing=1.0 is outside \[0, 1\): e.g. --set kd.ls_smoothing"
    ):
        build_config(flags={"kd": {"loss": "ls"}}, overrides=["kd.ls_smoothing=1"])
    # A chain stage's short keys are the loss's own hyperparameter names.
    assert parse_stage("convnet-4:ls:smoothing=0.2").overrides == ("kd.ls_smoothing=0.2",)


def test_a_new_loss_through_sweep_and_report_with_distinct_names(new_losses, tmp_path):
    document = {
        "description": "new losses", "model": "convnet-4", "data": {"name": "digits"},
        "optim": {"epochs": 5, "batch_size": 64}, "kd": {"teacher": "big", "loss": "rkl"},
        "teachers": {"big": {"model": "convnet-8", "optim": {"epochs": 2}}},
        "grid": {"kd.tau": [1, 20]},
        "runs": [
            {"kd.loss": "ls", "kd.ls_smoothing": 0.1}, {"kd.loss": "kl", "kd.tau": 4},
            {"kd.loss": "kl", "kd.tau": 4, "kd.standardize": True}, {"kd.loss": "smooth_logit"},
            {"kd.loss": "dkd", "kd.dkd_warmup": 1}, {"kd.loss": "dist"},
        ],
        **QUIET,
    }  # fmt: skip
    plan = plan_sweep(parse_recipe(document, "new"), tmp_path / "sweep")
    names = [run.name for run in plan.students]
    assert names == sorted(
        ["rkl-t1-s0", "rkl-t20-s0", "ls-e0.1-s0", "kl-a1-t4-s0", "kl-ls-a1-t4-s0", "smooth_logit-a1-s0",
         "dkd-a1-b8-t4-w1-s0", "dist-b2-g2-t4-s0"]
    )  # fmt: skip
    by_name = {run.name: run.config for run in plan.students}
    assert (by_name["rkl-t1-s0"].kd.tau, by_name["rkl-t20-s0"].kd.tau) == (1.0, 20.0)
    summaries = run_plan(plan, log=lambda message: None)
    for name in names:  # each learns in 5 epochs: digits has 10 classes (chance 10%); measured 38-85%
        assert summaries[name]["test_acc_best"] > 30, (name, summaries[name]["test_acc_best"])
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "summary.json").is_file()) == sorted(
        names
    )
    write_report(tmp_path / "sweep", log=lambda message: None)
    report = (tmp_path / "sweep" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| context |"))
    assert header == (
        "| context | KL tau=4 | KL+LS tau=4 | SmoothL1 | DKD tau=4 warmup=1 | DIST tau=4 | RKL tau=1 | RKL tau=20 "
        "| LS smoothing=0.1 |"
    )
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    rkl = {row["kd.tau"]: row for row in rows if row["kd.loss"] == "rkl"}
    assert set(rkl) == {"1", "20"} and rkl["1"]["runs"] != rkl["20"]["runs"]
    assert "![accuracy against tau: RKL, " in report


def test_a_feature_loss_gets_penultimate_features_from_the_step(new_losses, teacher, tmp_path):
    FEATURE_SHAPES.clear()
    config = build_config(
        flags={
            "model": "convnet-4",
            "out": str(tmp_path / "norm"),
            "data": {"name": "digits"},
            "optim": {"epochs": 1, "batch_size": 64},
            "kd": {"loss": "normmatch", "teacher": str(teacher)},
            **QUIET,
        }  # fmt: skip
    )
    summary = train(config)
    assert summary["test_acc_best"] > 10
    teacher_model = load_teacher(str(teacher), torch.device("cpu"))
    student_dim = create_model("convnet-4", 10, 1, 8).classifier.in_features
    teacher_dim = teacher_model.classifier.in_features
    assert FEATURE_SHAPES and student_dim != teacher_dim
    assert all(s == (t[0], student_dim) and t[1] == teacher_dim for s, t in FEATURE_SHAPES)
    assert "train_norm" in (tmp_path / "norm" / "metrics.jsonl").read_text()
    configs = [config]
    with pytest.raises(UserError, match="reads the teacher's penultimate features, which an ensemble"):
        check_feature_losses(configs, torch.nn.Linear(2, 2), world_size=1)
    with pytest.raises(UserError, match="run in one process"):
        check_feature_losses(configs, teacher_model, world_size=2)
