"""The command line end to end on data in the official formats: train, distill (kl, mse), eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_data import write_cifar100

from kdlab.cli import main

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def kdlab(*args: str) -> None:
    """Run the CLI in-process; a non-zero exit fails the test with its code."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise AssertionError(f"kdlab {' '.join(map(str, args))} exited with {exit_.code}") from None


def assert_complete_run(run: Path, student: bool) -> dict:
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), f"{run} lacks {name}"
    summary = json.loads((run / "summary.json").read_text())
    keys = {"test_acc_last", "test_acc_best", "train_acc", "epochs", "seed", "wall_time_s"}
    assert keys <= set(summary)
    assert ("logit_distance" in summary) == student
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == summary["epochs"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, summary["epochs"] + 1))
    assert all("test_acc" in row for row in rows)
    return summary


def test_cifar100_train_distill_kl_mse_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar100(tmp_path / "data", n_train=300, n_test=100)
    common = [
        "--dataset",
        "cifar100",
        "--data-dir",
        tmp_path / "data",
        "--batch-size",
        50,
        "--set",
        "progress=false",
    ]
    teacher = tmp_path / "teacher"
    kdlab("train", "--model", "wrn-10-2", "--epochs", 2, "--out", teacher, *common)
    assert_complete_run(teacher, student=False)
    for loss, settings in (("kl", ["--tau", "4"]), ("mse", [])):
        student = tmp_path / f"student-{loss}"
        kdlab("distill", "--teacher", teacher, "--model", "wrn-10-1", "--loss", loss, *settings,
              "--epochs", 1, "--out", student, *common)  # fmt: skip
        summary = assert_complete_run(student, student=True)
        assert summary["loss"] == loss and summary["logit_distance"] > 0
        row = json.loads((student / "metrics.jsonl").read_text().splitlines()[0])
        assert f"train_{loss}" in row and "train_ce" not in row  # alpha = 1: no CE term
    capsys.readouterr()
    kdlab("eval", tmp_path / "student-mse", "--data-dir", tmp_path / "data")
    printed = capsys.readouterr().out
    last = json.loads((tmp_path / "student-mse" / "summary.json").read_text())["test_acc_last"]
    assert f"cifar100 test accuracy {last:.2f}%" in printed


def test_distill_logs_each_term_and_leaves_teacher_untouched(tmp_path: Path) -> None:
    common = ["--dataset", "digits", "--set", "progress=false", "--epochs", 1]
    kdlab("train", "--model", "convnet-8", "--out", tmp_path / "t", *common)
    before = torch.load(tmp_path / "t" / "checkpoints" / "last.pt", weights_only=True)["model"]
    kdlab("distill", "--teacher", tmp_path / "t", "--model", "convnet-4", "--alpha", 0.5, "--tau", "inf",
          "--out", tmp_path / "s", *common)  # fmt: skip
    row = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_loss"] == pytest.approx(row["train_ce"] + row["train_kl"], rel=1e-5)
    after = torch.load(tmp_path / "t" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_digits_teacher_learns(tmp_path: Path) -> None:
    kdlab("train", "--dataset", "digits", "--model", "convnet-8", "--epochs", 6, "--out", tmp_path / "t",
          "--set", "progress=false")  # fmt: skip
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["test_acc_best"] > 70.0  # chance is 10%


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (CI installs it)"
)
def test_fashion_mnist_from_debian_package_learns(tmp_path: Path) -> None:
    kdlab("train", "--dataset", "fashion-mnist", "--subset", 3000, "--model", "convnet-8", "--epochs", 5,
          "--out", tmp_path / "t", "--set", "progress=false", "--set", "data.test_subset=2000")  # fmt: skip
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["train_images"] == 3000
    assert summary["test_acc_best"] > 60.0  # chance is 10%


def test_config_file_flags_and_set_precedence(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: convnet-4\ndata: {name: digits}\noptim: {epochs: 3, lr: 0.2}\nprogress: false\n"
    )
    kdlab("train", "--config", config, "--epochs", 1, "--set", "optim.lr=0.05", "--out", tmp_path / "r")
    import yaml

    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (
        resolved["model"] == "convnet-4"
        and resolved["optim"]["epochs"] == 1
        and resolved["optim"]["lr"] == 0.05
    )
    assert resolved["run_info"]["torch"] == str(torch.__version__)


def test_ensemble_teacher_is_the_mean_or_the_sum_of_its_members_logits(tmp_path: Path) -> None:
    from kdlab.teacher import load_teacher, model_from_checkpoint

    for seed in (1, 2):
        kdlab("train", "--dataset", "digits", "--model", "convnet-4", "--epochs", 1, "--seed", seed,
              "--out", tmp_path / f"t{seed}", "--set", "progress=false")  # fmt: skip
    teachers = [tmp_path / "t1", tmp_path / "t2"]
    ensemble = load_teacher(teachers, torch.device("cpu"))
    images = torch.randn(5, 1, 8, 8)
    members = [model_from_checkpoint(path).eval()(images) for path in teachers]
    torch.testing.assert_close(ensemble(images), (members[0] + members[1]) / 2)
    summed = load_teacher(teachers, torch.device("cpu"), ensemble="sum")
    torch.testing.assert_close(summed(images), members[0] + members[1])  # the official code's ensemble
    assert "reduction=sum" in repr(summed)  # so the teacher-logit cache keys the two apart
    kdlab("distill", "--dataset", "digits", "--teacher", teachers[0], "--teacher", teachers[1], "--loss", "mse",
          "--model", "convnet-4", "--epochs", 1, "--out", tmp_path / "s", "--set", "progress=false")  # fmt: skip
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["teacher"] == [str(p) for p in teachers]


def test_validation_split_and_logit_distances_of_a_summed_ensemble(tmp_path: Path) -> None:
    """--val-split holds images out, every epoch reports them, the summary picks the best-val epoch; the
    final pass's three logit distances equal a hand computation against the summed ensemble."""
    import math

    import yaml

    from kdlab.data import load_dataset, make_loader
    from kdlab.teacher import model_from_checkpoint

    teachers = []
    for seed in (1, 2):
        teachers.append(tmp_path / f"t{seed}")
        kdlab("train", "--dataset", "digits", "--model", "convnet-4", "--epochs", 1, "--seed", seed,
              "--val-split", 100, "--out", teachers[-1], "--set", "progress=false")  # fmt: skip
    kdlab("distill", "--dataset", "digits", "--teacher", teachers[0], "--teacher", teachers[1], "--loss", "kl",
          "--tau", 4, "--model", "mlp-16", "--epochs", 3, "--val-split", 100, "--out", tmp_path / "s",
          "--set", "kd.ensemble=sum", "--set", "progress=false")  # fmt: skip
    run = tmp_path / "s"
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (summary["val_images"], summary["train_images"]) == (100, 1337)  # digits: 1,437 training images
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["val_split"] == 100
    best = max(rows, key=lambda row: row["val_acc"])
    assert summary["val_acc_last"] == rows[-1]["val_acc"] and summary["val_best_epoch"] == best["epoch"]
    assert (summary["val_acc_best"], summary["test_acc_at_best_val"]) == (best["val_acc"], best["test_acc"])
    with pytest.raises(SystemExit) as refused:  # one-line error, exit 2
        main(["train", "--dataset", "digits", "--model", "mlp-16", "--epochs", "1", "--val-split", "5000",
              "--out", str(tmp_path / "bad"), "--set", "progress=false"])  # fmt: skip
    assert refused.value.code == 2
    # The distances, by hand: the training images without the validation ones, the members' logits summed.
    splits = load_dataset("digits", val_split=100)
    images = torch.cat([batch.inputs for batch in make_loader(splits, "train", 2000, train=False)])
    with torch.no_grad():
        teacher = sum(model_from_checkpoint(path).eval()(images) for path in teachers).double()
        student = model_from_checkpoint(run).eval()(images).double()
    gap = student - teacher
    centred = gap - gap.mean(dim=1, keepdim=True)
    assert summary["logit_distance"] == pytest.approx(gap.norm(dim=1).mean().item(), rel=1e-5)
    assert summary["logit_distance_centred"] == pytest.approx(centred.norm(dim=1).mean().item(), rel=1e-5)
    assert summary["logit_distance_rms"] == pytest.approx(math.sqrt(gap.square().mean().item()), rel=1e-5)
    assert summary["logit_distance_centred"] < summary["logit_distance"]
