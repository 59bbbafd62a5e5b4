"""Crash safety: after kill -9 or SIGTERM, --resume ends exactly where an uninterrupted run ends; a
sweep killed mid-way and started again, and a lockstep group stopped mid-epoch and resumed, end with
one complete, uncorrupted copy of every run, equal to an uninterrupted one; a NaN loss stops the run
naming epoch and step and keeps the last good checkpoint.

Runs are CPU, digits, convnet-4. Subprocess runs use one torch thread (OMP_NUM_THREADS=1) so that
the reference and the resumed run do the same floating-point work.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import kdlab.engine.step
from kdlab.cli import main
from kdlab.config import build_config
from kdlab.data import load_dataset
from kdlab.engine import train_lockstep
from kdlab.errors import RunInterrupted
from kdlab.experiments.recipes import load_recipe, plan_sweep
from kdlab.runs import load_checkpoint

# One torch thread everywhere (tests/conftest.py): the subprocesses and this process must do the
# same floating-point work for bitwise comparisons.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "6", "--batch-size", "16",
         "--set", "progress=false", "--set", "deterministic=true", "--set", "tensorboard=false"]  # fmt: skip
TIMING_KEYS = {"epoch_time_s", "train_images_per_s", "wall_time_s", "finished_at"}


def start_kdlab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kdlab", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_kdlab(*args: str) -> None:
    """``kdlab ARGS`` in this process; it must succeed."""
    try:
        main(list(args))
    except SystemExit as error:
        assert error.code in (0, None)


def metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def wait_for_rows(run: Path, count: int, process: subprocess.Popen[str]) -> None:
    """Poll until ``count`` epochs are in metrics.jsonl (the file is replaced atomically)."""
    deadline = time.monotonic() + 120
    while len(metric_rows(run)) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.002)


def comparable(summary: dict, ignore: tuple[str, ...] = ()) -> dict:
    """A summary without timings, ``ignore`` and the run's id (each run draws its own; the inputs it
    read must be the same, but for the teacher's file when ``teacher`` is ignored)."""
    kept = {k: v for k, v in summary.items() if k not in {*TIMING_KEYS, *ignore}}
    if isinstance(kept.get("inputs"), dict):
        dropped = ("run_id", "teachers") if "teacher" in ignore else ("run_id",)
        kept["inputs"] = {k: v for k, v in kept["inputs"].items() if k not in dropped}
    return kept


def assert_same_run(run: Path, reference: Path, ignore: tuple[str, ...] = ()) -> None:
    """Same epochs, same metrics and summary (timings and ``ignore`` aside), bitwise the same weights
    and optimiser state."""
    assert metric_rows(run) == metric_rows(reference)
    ours, theirs = (
        comparable(json.loads((folder / "summary.json").read_text()), ignore) for folder in (run, reference)
    )
    assert ours == theirs
    for name in ("last.pt", "best.pt"):
        ours, theirs = (load_checkpoint(folder / "checkpoints" / name) for folder in (run, reference))
        assert ours["model"].keys() == theirs["model"].keys()
        assert all(torch.equal(ours["model"][key], theirs["model"][key]) for key in ours["model"])
        momenta = [[s["momentum_buffer"] for s in c["optimizer"]["state"].values()] for c in (ours, theirs)]
        assert all(torch.equal(a, b) for a, b in zip(*momenta, strict=True))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_kdlab(*TRAIN, "--out", str(run))
    assert len(metric_rows(run)) == 6
    return run


def test_kill_9_at_a_random_step_then_resume_ends_exactly_like_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: Path
) -> None:
    rng = random.Random(2021)
    epochs_done, delay_s = rng.randint(1, 3), rng.uniform(0.0, 0.1)  # one epoch takes about 0.15 s
    run = tmp_path / "run"
    process = start_kdlab(*TRAIN, "--out", str(run))
    wait_for_rows(run, epochs_done, process)
    time.sleep(delay_s)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists(), "the run finished before it was killed"
    assert 1 <= len(metric_rows(run)) < 6

    run_kdlab(*TRAIN, "--out", str(run), "--resume")
    assert_same_run(run, uninterrupted)


def test_sigterm_saves_mid_epoch_exits_143_and_resume_ends_exactly_like_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: Path
) -> None:
    run = tmp_path / "run"
    process = start_kdlab(*TRAIN, "--out", str(run))
    wait_for_rows(run, 2, process)
    time.sleep(0.03)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 143
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("kdlab: stopped by SIGTERM ") and line.endswith(f"{run}: continue with --resume")
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    mid_epoch = re.search(r"at epoch (\d+), step (\d+);", line)
    if mid_epoch:  # the usual case: the signal lands during a step
        assert checkpoint["epoch"] == int(mid_epoch[1]) - 1
        assert checkpoint["epoch_progress"]["step"] == int(mid_epoch[2])
    else:  # ... or between two epochs
        assert checkpoint["epoch"] == int(re.search(r"after epoch (\d+);", line)[1])
        assert checkpoint["epoch_progress"] is None
    assert len(metric_rows(run)) == checkpoint["epoch"]

    run_kdlab(*TRAIN, "--out", str(run), "--resume")
    assert_same_run(run, uninterrupted)


def lockstep_configs(root: Path) -> list:
    """Two students that share the data order: convnet-4 at lr 0.1 and 0.05, 3 epochs, batch 64."""
    return [
        build_config(
            flags={
                "model": "convnet-4",
                "out": str(root / f"lr{lr}"),
                "progress": False,
                "tensorboard": False,
                "data": {"name": "digits"},
                "optim": {"epochs": 3, "batch_size": 64, "lr": lr},
            }
        )  # fmt: skip
        for lr in (0.1, 0.05)
    ]


def count_loss_calls(monkeypatch: pytest.MonkeyPatch, at_call: int, action) -> None:
    """Run ``action()`` during the ``at_call``-th loss evaluation of the engine (1-based)."""
    original, calls = kdlab.engine.step.loss_terms, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        terms = original(*args, **kwargs)
        return action(terms) or terms if calls[0] == at_call else terms

    monkeypatch.setattr(kdlab.engine.step, "loss_terms", counting)


def test_lockstep_group_interrupted_mid_epoch_resumes_to_one_complete_copy_of_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kdlab sweep` runs its students as lockstep groups through train_lockstep with resume=True;
    # this is that path, interrupted by SIGINT at a known step.
    steps_per_epoch = math.ceil(len(load_dataset("digits").train) / 64)
    reference = train_lockstep(lockstep_configs(tmp_path / "straight"))
    # Two students per step: the first student's loss at epoch 2, step 5 sends the signal.
    count_loss_calls(
        monkeypatch, 2 * (steps_per_epoch + 4) + 1, lambda terms: os.kill(os.getpid(), signal.SIGINT)
    )
    with pytest.raises(RunInterrupted) as stopped:
        train_lockstep(lockstep_configs(tmp_path / "sweep"))
    assert stopped.value.exit_code == 130
    assert str(stopped.value).startswith("stopped by SIGINT at epoch 2, step 5; checkpoint saved in ")
    for config in lockstep_configs(tmp_path / "sweep"):
        checkpoint = load_checkpoint(Path(config.out) / "checkpoints" / "last.pt")
        assert (checkpoint["epoch"], checkpoint["epoch_progress"]["step"]) == (1, 5)
    monkeypatch.undo()

    resumed = train_lockstep(lockstep_configs(tmp_path / "sweep"), resume=True)
    again = train_lockstep(lockstep_configs(tmp_path / "sweep"), resume=True)  # finished: read, not rerun
    assert resumed == again
    for config, summary, expected in zip(
        lockstep_configs(tmp_path / "sweep"), resumed, reference, strict=True
    ):
        run = Path(config.out)
        assert_same_run(run, tmp_path / "straight" / run.name)
        assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3]
        assert comparable(summary) == comparable(expected)
    assert sorted(path.name for path in (tmp_path / "sweep").iterdir()) == ["lr0.05", "lr0.1"]
    assert not list((tmp_path / "sweep").rglob("*.tmp"))


SWEEP_RECIPE = """\
description: a tiny sweep to interrupt
model: convnet-4
data: {name: digits}
optim: {epochs: 4, batch_size: 32}
deterministic: true
progress: false
tensorboard: false
kd: {teacher: t, loss: kl, alpha: 1.0, tau: 4}
teachers:
  t: {model: convnet-8, optim: {epochs: 2}}
grid:
  kd.tau: [1, inf]
runs:
  - {kd.loss: mse}
"""


def test_sweep_killed_mid_way_and_started_again_ends_with_every_run_once_and_none_corrupt(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(SWEEP_RECIPE)
    plan = plan_sweep(load_recipe(recipe), tmp_path / "sweep")
    teacher = Path(plan.teachers["t"].config.out)
    students = [Path(run.config.out) for run in plan.students]
    assert len(students) == 3  # one lockstep group: kl tau 1, kl tau inf, mse

    rng = random.Random(7)
    epochs_done, delay_s = rng.randint(1, 2), rng.uniform(0.0, 0.1)
    process = start_kdlab("sweep", str(recipe), "--out", str(tmp_path / "sweep"))
    wait_for_rows(students[0], epochs_done, process)
    time.sleep(delay_s)
    process.kill()
    process.communicate()
    assert (teacher / "summary.json").is_file()
    assert not all((run / "summary.json").exists() for run in students), "the sweep finished before the kill"

    run_kdlab("sweep", str(recipe), "--out", str(tmp_path / "sweep"))  # started again
    run_kdlab("sweep", str(recipe), "--out", str(tmp_path / "straight"))  # never interrupted

    folders = sorted(path.parent for path in (tmp_path / "sweep").rglob("config.yaml"))
    assert folders == sorted([teacher, *students])  # every run once, nothing else
    assert not list((tmp_path / "sweep").rglob("*.tmp"))
    for run in [teacher, *students]:
        expected = 2 if run == teacher else 4
        assert [row["epoch"] for row in metric_rows(run)] == list(range(1, expected + 1))
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == expected
        # kd.teacher names the teacher's folder, which differs between the two sweep folders
        assert_same_run(run, tmp_path / "straight" / run.relative_to(tmp_path / "sweep"), ignore=("teacher",))


def test_non_finite_loss_in_epoch_1_stops_naming_epoch_and_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An absurd --lr (1e6) is refused before the run starts (tests/test_bounds.py); a loss that turns
    # NaN all the same (diverging weights, bad data) stops the run at the step it happens.
    run = tmp_path / "run"
    count_loss_calls(monkeypatch, 3, lambda terms: {name: value * math.nan for name, value in terms.items()})
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "2", "--batch-size", "64",
              "--out", str(run), "--set", "progress=false", "--set", "tensorboard=false"])  # fmt: skip
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"kdlab: error: {re.escape(str(run))}: the loss became NaN or inf at epoch 1, step \d+; no checkpoint "
        r"was saved: lower --lr or check the data, then --overwrite",
        message,
    ), message
    assert not (run / "checkpoints").exists() and not (run / "summary.json").exists()


def test_non_finite_loss_in_epoch_2_keeps_the_epoch_1_checkpoint_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    steps_per_epoch = math.ceil(len(load_dataset("digits").train) / 64)
    saved: dict[str, bytes] = {}

    def poison(terms: dict) -> dict:
        saved["last.pt"] = (run / "checkpoints" / "last.pt").read_bytes()  # the epoch-1 checkpoint
        return {name: value * math.nan for name, value in terms.items()}

    count_loss_calls(monkeypatch, steps_per_epoch + 3, poison)  # epoch 2, step 3
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "3", "--batch-size", "64",
              "--out", str(run), "--set", "progress=false", "--set", "tensorboard=false"])  # fmt: skip
    assert exit_info.value.code == 2
    last = run / "checkpoints" / "last.pt"
    assert capsys.readouterr().err.strip() == (
        f"kdlab: error: {run}: the loss became NaN or inf at epoch 2, step 3; {last} keeps the last finite "
        "state: fix the data and --resume, or start again with a lower --lr and --overwrite"
    )
    assert last.read_bytes() == saved["last.pt"]
    checkpoint = load_checkpoint(last)
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point()
    )
    assert [row["epoch"] for row in metric_rows(run)] == [1]
    assert not (run / "summary.json").exists()


# --- issue 8: an epoch's commit, more epochs, a sweep's workers, damaged images -------------------


@pytest.mark.parametrize("failing", ["metrics.jsonl", "last.pt"])
def test_a_failed_write_at_epoch_2_loses_no_metrics_row_and_resume_ends_exactly_like_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # The disk fills while epoch 2 is committed: first its metrics row, else its last.pt.
    run, real_write, writes = tmp_path / "run", kdlab.runs._atomic_write, {"count": 0}

    def write_until_the_disk_fills(path, *args, **kwargs):
        if Path(path).name == failing:
            writes["count"] += 1
            if writes["count"] == 2:
                raise kdlab.runs.UserError(f"no space left on the device to write {path}: free some space")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(kdlab.runs, "_atomic_write", write_until_the_disk_fills)
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--out", str(run)])
    assert exit_info.value.code == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.undo()

    run_kdlab(*TRAIN, "--out", str(run), "--resume")
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3, 4, 5, 6]
    assert_same_run(run, uninterrupted)


def test_resume_with_more_epochs_extends_a_finished_run_to_exactly_the_longer_run(tmp_path: Path) -> None:
    # Without milestones the schedule does not depend on --epochs, so 2 epochs then 2 more must equal
    # 4 epochs straight; --resume without the change leaves the finished run as it is.
    constant_lr = [*TRAIN, "--set", "optim.milestones=[]"]
    run_kdlab(*constant_lr, "--epochs", "4", "--out", str(tmp_path / "straight"))
    run_kdlab(*constant_lr, "--epochs", "2", "--out", str(tmp_path / "run"))
    run_kdlab(*constant_lr, "--epochs", "2", "--out", str(tmp_path / "run"), "--resume")
    assert [row["epoch"] for row in metric_rows(tmp_path / "run")] == [1, 2]
    run_kdlab(*constant_lr, "--epochs", "4", "--out", str(tmp_path / "run"), "--resume")
    assert [row["epoch"] for row in metric_rows(tmp_path / "run")] == [1, 2, 3, 4]
    assert "epochs: 4" in (tmp_path / "run" / "config.yaml").read_text()
    assert_same_run(tmp_path / "run", tmp_path / "straight")


def test_a_finished_run_extended_with_more_epochs_is_unfinished_until_they_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk fills while epoch 3 of 2 + 2 is committed: the old summary must not mark the run finished.
    run, real_write, writes = tmp_path / "run", kdlab.runs._atomic_write, {"count": 0}
    constant_lr = [*TRAIN, "--set", "optim.milestones=[]", "--out", str(run)]
    run_kdlab(*constant_lr, "--epochs", "2")

    def write_until_the_disk_fills(path, *args, **kwargs):
        if Path(path).name == "metrics.jsonl":
            writes["count"] += 1
            if writes["count"] == 2:  # 1: the rows rewritten at the start; 2: epoch 3's commit
                raise kdlab.runs.UserError(f"no space left on the device to write {path}: free some space")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(kdlab.runs, "_atomic_write", write_until_the_disk_fills)
    with pytest.raises(SystemExit) as exit_info:
        main([*constant_lr, "--epochs", "4", "--resume"])
    assert exit_info.value.code == 2
    assert not (run / "summary.json").exists() and not kdlab.runs.RunFolder(run).is_finished()
    monkeypatch.undo()

    run_kdlab(*constant_lr, "--epochs", "4", "--resume")
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3, 4]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4


def _pool_workers(pid: int) -> set[int]:
    """Live worker processes (``multiprocessing`` spawn children) of process ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
            found.add(int(stat.parent.name))
    return found


def test_sigterm_to_a_sweep_with_jobs_stops_its_workers_after_their_checkpoints_and_exits_143(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(SWEEP_RECIPE.replace("epochs: 4,", "epochs: 40,"))
    plan = plan_sweep(load_recipe(recipe), tmp_path / "sweep")
    students = [Path(run.config.out) for run in plan.students]
    process = start_kdlab("sweep", str(recipe), "--out", str(tmp_path / "sweep"), "--jobs", "2")
    deadline = time.monotonic() + 240
    while sum(len(metric_rows(run)) > 0 for run in students) < 2:  # both workers are training
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    workers = _pool_workers(process.pid)
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "kdlab: sweep stopped by SIGTERM: its worker processes saved checkpoints of the runs they were "
        "training; run the same sweep command again to continue"
    )
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # no orphan keeps training
    started = [run for run in students if (run / "checkpoints" / "last.pt").is_file()]
    assert len(started) >= 2 and not any((run / "summary.json").exists() for run in students)
    for run in started:  # each worker saved where it stopped, and its rows match its checkpoint
        checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
        assert [row["epoch"] for row in metric_rows(run)] == list(range(1, checkpoint["epoch"] + 1))


WORKER_TOLD_TO_STOP_BEFORE_ITS_RUN = """\
import os, signal, sys
from kdlab.cli import main
from kdlab.errors import RunInterrupted
from kdlab.experiments.sweep import _init_worker, _run_task

_init_worker(1)
os.kill(os.getpid(), signal.SIGTERM)  # reaches the worker while no run listens
try:
    _run_task(print, "a queued task started")
except RunInterrupted as stopped:
    print(f"queued task: {stopped}")
main(sys.argv[1:])
"""


def test_a_sweep_worker_told_to_stop_before_its_run_trains_no_queued_task_and_checkpoints_at_step_1(
    tmp_path: Path, uninterrupted: Path
) -> None:
    # The race of a SIGTERM forwarded to a worker still loading its data: it used to kill the
    # worker (no checkpoint, a leaked semaphore reported after the sweep's last line).
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", WORKER_TOLD_TO_STOP_BEFORE_ITS_RUN, *TRAIN, "--out", str(run)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 143
    assert done.stdout.splitlines() == ["queued task: not started: the sweep was stopping"]
    assert done.stderr.strip().splitlines() == [
        f"kdlab: stopped by SIGTERM at epoch 1, step 1; checkpoint saved in {run}: continue with --resume"
    ]
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (checkpoint["epoch"], checkpoint["epoch_progress"]["step"]) == (0, 1)
    assert metric_rows(run) == []
    run_kdlab(*TRAIN, "--out", str(run), "--resume")
    assert_same_run(run, uninterrupted)


def test_damaged_images_in_an_image_folder_are_skipped_counted_and_named_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fixtures_data import write_imagefolder

    root = write_imagefolder(tmp_path / "images", classes=2, per_class=6, size=24)
    (root / "train" / "class_0" / "0000.jpg").write_text("not a JPEG at all")
    cut = root / "train" / "class_1" / "0001.jpg"
    cut.write_bytes(cut.read_bytes()[:200])
    (root / "val" / "class_1" / "0002.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG header, nothing else
    run_kdlab("train", "--dataset", "imagefolder", "--data-dir", str(root), "--model", "convnet-4", "--epochs", "2",
              "--batch-size", "4", "--set", "data.image_size=16", "--set", "data.num_workers=0", "--set", "progress=false",
              "--set", "tensorboard=false", "--out", str(tmp_path / "run"))  # fmt: skip
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: warning:")]
    assert warnings == [
        f"kdlab: warning: skipped 2 image file(s) of the train split that cannot be read (first: "
        f"{root / 'train' / 'class_0' / '0000.jpg'} (UnidentifiedImageError)); delete or replace them",
        f"kdlab: warning: skipped 1 image file(s) of the test split that cannot be read (first: "
        f"{root / 'val' / 'class_1' / '0002.jpg'} (UnidentifiedImageError)); delete or replace them",
    ]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [row["epoch"] for row in metric_rows(tmp_path / "run")] == [1, 2]
    assert summary["train_images"] == 12
