"""Scale-out on CPU: 2-process gloo DDP against a 1-process run with the same global batch, and
the ImageNet path (torchvision weights as teacher, ImageFolder JPEGs through DataLoader workers).

What DDP changes, measured on digits (2 epochs, 1024 training images, global batch 64 = 2 x 32):

- without BatchNorm (mlp-64) only the order of floating-point sums changes (the gradient is the
  all-reduced mean of two half-batch means): losses agree to 1.2e-7 and accuracies exactly
  (seeds 1, 2 and 9999).
- with BatchNorm (convnet-4) each process normalises with the statistics of its own 32 images
  instead of all 64 (sync_bn would fix that, but PyTorch's SyncBatchNorm runs on CUDA only): over 8
  seeds the final train loss was 0.010-0.020 higher under DDP, the test loss 0.005-0.017, and the
  test / train accuracies differed by at most 3.1 / 2.4 points. The tolerances below are 0.03 and
  4 points.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from fixtures_data import write_imagefolder

import kdlab.runs
from kdlab.cli import main
from kdlab.config import build_config
from kdlab.engine import train
from kdlab.teacher import load_foreign_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as torchrun gives each DDP process
DIGITS = {"data": {"name": "digits", "subset": 1024}, "progress": False, "tensorboard": False}
KEYS = ("train_loss", "train_acc_running", "test_acc", "test_loss")


def digits_flags(model: str, out: Path, batch_size: int) -> dict:
    return {**DIGITS, "model": model, "out": str(out), "optim": {"epochs": 2, "batch_size": batch_size}}


def last_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def one_process_run(model: str, out: Path) -> Path:
    """The reference: one process, batch 64."""
    train(build_config(flags=digits_flags(model, out, 64)))
    return out


def test_two_process_ddp_through_the_cli_matches_one_process_up_to_batchnorm_statistics(
    tmp_path: Path,
) -> None:
    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "kdlab", "train", "--dataset", "digits", "--subset", "1024",
               "--model", "convnet-4", "--epochs", "2", "--batch-size", "32", "--out", str(ddp),
               "--set", "progress=false", "--set", "tensorboard=false", "--nproc", "2"]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("done:") == 1  # rank 0 reports, rank 1 does not

    files = sorted(str(path.relative_to(ddp)) for path in ddp.rglob("*") if path.is_file())
    assert files == [
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "config.yaml",
        "inputs.json",
        "kdlab-run.json",
        "metrics.jsonl",
        "summary.json",
    ]
    run_info = kdlab.runs.RunFolder(ddp).config_path.read_text()
    assert "world_size: 2" in run_info and "global_batch_size: 64" in run_info
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2

    single = one_process_run("convnet-4", tmp_path / "single")
    ours, theirs = last_row(ddp), last_row(single)
    assert ours["epoch"] == theirs["epoch"] == 2
    for key, tolerance in zip(KEYS, (0.03, 4.0, 4.0, 0.03), strict=True):
        assert abs(ours[key] - theirs[key]) <= tolerance, (key, ours[key], theirs[key])
    assert ours["train_loss"] != theirs["train_loss"]  # BN statistics per process do differ

    # A user error under DDP is still one line from rank 0 and exit code 2, whatever torchrun adds.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    (line,) = again.stderr.strip().splitlines()
    assert line == (
        f"kdlab: error: --out {ddp} already holds a finished run: pass --resume to continue it, --overwrite to "
        "start again, or choose another --out"
    )


def test_sigterm_under_ddp_stops_every_rank_at_one_step_and_resume_completes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "kdlab", "train", "--dataset", "digits", "--subset", "1024",
               "--model", "convnet-4", "--epochs", "4", "--batch-size", "16", "--out", str(run),
               "--set", "progress=false", "--set", "tensorboard=false", "--nproc", "2"]  # fmt: skip
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "metrics.jsonl").exists():
        assert launcher.poll() is None, launcher.communicate()[1]
        time.sleep(0.005)
    launcher.send_signal(signal.SIGTERM)  # torchrun's agent passes it on to both workers
    _, stderr = launcher.communicate(timeout=120)

    assert launcher.returncode == 143
    (line,) = stderr.strip().splitlines()
    assert line.startswith("kdlab: stopped by SIGTERM ") and line.endswith("continue with --resume")
    checkpoint = kdlab.runs.load_checkpoint(run / "checkpoints" / "last.pt")
    progress = checkpoint["epoch_progress"]
    if progress is not None:  # ranks agree to stop every 20 steps; rank 0 saved both ranks' sums
        assert progress["step"] % 20 == 0 and progress["seen"] == progress["step"] * 16 * 2

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 5))
    assert all(0 <= row["train_acc_running"] <= 100 for row in rows)
    assert rows[-1]["test_acc"] > 70


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, flags: dict, log_dir: str) -> None:
    """One torchrun-like process: the environment torchrun sets, every file write logged per rank."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    atomic_write = kdlab.runs._atomic_write

    def logged(path, *args, **kwargs):
        with open(Path(log_dir) / f"rank{rank}.log", "a") as log:
            log.write(f"{path}\n")
        atomic_write(path, *args, **kwargs)

    kdlab.runs._atomic_write = logged
    train(build_config(flags=flags))


def test_two_process_ddp_without_batchnorm_matches_one_process_to_rounding_and_only_rank_0_writes(
    tmp_path: Path,
) -> None:
    ddp = tmp_path / "ddp"
    torch.multiprocessing.spawn(
        _ddp_worker, args=(_free_port(), digits_flags("mlp-64", ddp, 32), str(tmp_path)), nprocs=2
    )
    assert not (tmp_path / "rank1.log").exists()
    written = {Path(line).name for line in (tmp_path / "rank0.log").read_text().splitlines()}
    assert written == {
        "kdlab-run.json", "config.yaml", "inputs.json", "metrics.jsonl", "summary.json", "last.pt", "best.pt"
    }  # fmt: skip

    single = one_process_run("mlp-64", tmp_path / "single")
    ours, theirs = last_row(ddp), last_row(single)
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
    assert ours["test_loss"] == pytest.approx(theirs["test_loss"], abs=1e-5)
    assert ours["train_acc_running"] == theirs["train_acc_running"]
    assert ours["test_acc"] == theirs["test_acc"]


# -- ImageNet path -------------------------------------------------------------------------------


def test_torchvision_weights_load_into_our_wrapper_with_identical_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=5).eval()
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "ddp-saved.pth")
    model = load_foreign_weights("resnet18", tmp_path / "ddp-saved.pth").eval()
    assert (model.num_classes, model.in_channels) == (5, 3)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
        assert torch.equal(model.classifier(model.forward_features(images)), reference(images))


def test_imagenet_path_end_to_end_on_generated_jpegs_with_a_cached_torchvision_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ImageNet recipe's path at toy size: ResNet-50 student, torchvision teacher from torch hub's
    cache (resnet18 here, the same code path as resnet152), ImageFolder JPEGs through 2 workers."""
    data = write_imagefolder(tmp_path / "data", classes=3, per_class=4, size=40)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(teacher.state_dict(), cache / "resnet18-0123abcd.pth")  # torchvision's file naming
    run = tmp_path / "student"
    try:
        main(["distill", "--teacher", "torchvision:resnet18", "--dataset", "imagefolder", "--data-dir", str(data),
              "--model", "resnet50", "--loss", "kl", "--tau", "1", "--epochs", "1", "--batch-size", "4",
              "--lr", "0.01", "--out", str(run), "--set", "data.image_size=32", "--set", "data.num_workers=2",
              "--set", "progress=false", "--set", "tensorboard=false"])  # fmt: skip
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err

    summary = json.loads((run / "summary.json").read_text())
    assert (summary["model"], summary["dataset"], summary["train_images"]) == ("resnet50", "imagefolder", 12)
    assert summary["teacher"] == "torchvision:resnet18"
    assert torch.isfinite(torch.tensor(summary["logit_distance"]))
    checkpoint = kdlab.runs.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (checkpoint["num_classes"], checkpoint["image_size"]) == (3, 32)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1] and rows[0]["train_kl"] >= 0
