"""What kdlab promises about the user's files (docs/errors.md, "Your files"): a run folder carries a
marker only kdlab writes; ``--overwrite`` removes kdlab's own file names in a marked folder and
nothing else, never the working folder or one holding it; nothing is written before every input is
checked; one process writes a run folder at a time; files get the mode ``open()`` would give.

Every test runs the real command line (in this process, or as a subprocess where two processes race).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlab import runs
from kdlab.cli import main
from kdlab.distributed import _exit_code
from kdlab.runs import LOCK_NAME, MARKER_NAME, RUN_FORMAT, RunFolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
DIGITS = ["--dataset", "digits", "--model", "convnet-4", "--epochs", "1", "--batch-size", "64",
          "--set", "progress=false", "--set", "tensorboard=false"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def kdlab(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``kdlab ARGS`` in this process: (exit code, stderr); any error must be one line, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    code = exit_info.value.code or 0
    if code:
        assert len(stderr.strip().splitlines()) == 1, stderr
    return code, stderr.strip().removeprefix("kdlab: error: ")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def user_folder(path: Path, **files: str) -> Path:
    """A folder of the user's: ``files`` maps relative paths (``__`` for ``/``) to contents."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *DIGITS, "--out", str(run)])
    assert exit_info.value.code in (0, None)
    return run


# --- defect 1: --overwrite deleted any folder holding a config.yaml ----------------------------------


def test_overwrite_in_a_users_working_folder_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reproduction: the user's project folder, with their config.yaml, notes and code.
    project = user_folder(
        tmp_path / "p",
        **{"config.yaml": "model: mlp-32\ndata: {name: digits}\noptim: {epochs: 1}\n", "notes.txt": "notes\n",
           "src__code.py": "x\n"},
    )  # fmt: skip
    before = snapshot(project)
    monkeypatch.chdir(project)
    code, line = kdlab(capsys, "train", "--config", "config.yaml", "--out", ".", "--overwrite",
                       "--set", "progress=false")  # fmt: skip
    assert code == 2
    assert line == (
        "--out . holds config.yaml but no kdlab-run.json, so it is not a run folder kdlab created and --overwrite "
        "deletes nothing there: choose another --out (or move those files away yourself)"
    )
    assert snapshot(project) == before


def test_overwrite_of_a_subfolder_with_a_foreign_config_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = user_folder(tmp_path / "data", **{"config.yaml": "mine: true\n", "data.csv": "x,y\n1,2\n"})
    before = snapshot(folder)
    code, line = kdlab(capsys, "train", *DIGITS, "--out", folder, "--overwrite")
    assert code == 2 and "no kdlab-run.json" in line
    assert snapshot(folder) == before


def test_overwrite_never_clears_the_working_folder_a_folder_holding_it_the_root_or_home(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine\n")
    before = snapshot(run)
    monkeypatch.chdir(run)
    (tmp_path / "link-to-run").symlink_to(run)
    for out in (".", str(run), str(tmp_path / "link-to-run")):
        code, line = kdlab(capsys, "train", *DIGITS, "--out", out, "--overwrite")
        assert code == 2, out
        assert line.startswith(f"--overwrite will not clear {out} ") and line.endswith(
            "it is the working folder, a folder holding it, or the home folder; name the run's own folder instead"
        )
    monkeypatch.chdir(run / "checkpoints")
    for out in ("..", "/"):
        code, line = kdlab(capsys, "train", *DIGITS, "--out", out, "--overwrite")
        assert code == 2 and line.startswith(f"--overwrite will not clear {out} "), line
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(run))  # ~ (a marked run folder, so that only this rule refuses it)
    code, line = kdlab(capsys, "train", *DIGITS, "--out", os.path.expanduser("~"), "--overwrite")
    assert code == 2 and line.startswith(f"--overwrite will not clear {run} "), line
    assert snapshot(run) == before


def test_a_forged_marker_lets_overwrite_remove_only_kdlabs_own_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A marker alone is not a licence to delete: only the names kdlab writes go, whoever wrote them.
    folder = user_folder(
        tmp_path / "forged",
        **{MARKER_NAME: json.dumps({"format": RUN_FORMAT}), "config.yaml": "theirs\n", "metrics.jsonl": "theirs\n",
           "notes.txt": "mine\n", "data.csv": "1,2\n", "checkpoints__last.pt": "not a checkpoint",
           "checkpoints__mine.txt": "mine\n", "tensorboard__events.out.tfevents.1.host": "theirs",
           "tensorboard__plot.png": "mine", "checkpoints__.last.pt.abc123.tmp": "a leftover temporary"},
    )  # fmt: skip
    kept = {
        name: data
        for name, data in snapshot(folder).items()
        if "mine" in name or name in ("notes.txt", "data.csv")
    }
    kept |= {"tensorboard/plot.png": b"mine"}
    code, _ = kdlab(capsys, "train", *DIGITS, "--out", folder, "--overwrite")
    assert code == 0
    after = snapshot(folder)
    assert {name: after.get(name) for name in kept} == kept  # the user's files, byte for byte
    assert sorted(set(after) - set(kept)) == [
        "checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "inputs.json", MARKER_NAME, "metrics.jsonl",
        "summary.json",
    ]  # fmt: skip
    assert RunFolder(folder).is_marked()


def test_overwrite_clears_kdlabs_files_and_keeps_the_users_files_of_a_real_run(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine\n")
    (run / "label_noise.json").write_text("{}")  # kdlab's name, from a run with label noise
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_text("events")  # from a run with TensorBoard
    code, _ = kdlab(capsys, "train", *DIGITS, "--seed", "3", "--out", run, "--overwrite")
    assert code == 0
    assert (run / "notes.txt").read_text() == "mine\n"
    assert not (run / "label_noise.json").exists()
    assert not (run / "tensorboard").exists()  # emptied of kdlab's files, so removed (this run has none)
    assert json.loads((run / "summary.json").read_text())["seed"] == 3


def test_a_failed_start_writes_nothing_and_creates_no_folder(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checks that only the data or the teacher can answer come after loading them: still nothing written.
    out = tmp_path / "new" / "run"
    code, line = kdlab(capsys, "train", *DIGITS, "--batch-size", "5000", "--out", out)
    assert code == 2 and line.startswith("batch size 5000")
    assert not (tmp_path / "new").exists()
    code, _ = kdlab(capsys, "train", *DIGITS, "--out", out)  # the corrected command needs no --overwrite
    assert code == 0 and RunFolder(out).is_finished()


def test_a_start_that_fails_at_its_first_write_removes_the_folders_it_created_and_no_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk fills as the marker is written, under the lock that created --out and its missing parent.
    real_write = runs._atomic_write

    def no_space_for_the_marker(path, *args, **kwargs):
        if Path(path).name == MARKER_NAME:
            raise runs.UserError(f"no space left on the device to write {path}: free some space")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(runs, "_atomic_write", no_space_for_the_marker)
    user_folder(tmp_path / "yours", **{"notes.txt": "mine\n"})
    for out in (tmp_path / "new" / "run", tmp_path / "yours" / "run"):
        code, line = kdlab(capsys, "train", *DIGITS, "--out", out)
        assert code == 2 and line.startswith("no space left on the device to write ")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["yours"]  # new/ and new/run are gone
    assert [path.name for path in (tmp_path / "yours").iterdir()] == ["notes.txt"]  # yours/run is gone
    assert (tmp_path / "yours" / "notes.txt").read_text() == "mine\n"


def test_a_resumed_run_of_an_older_kdlab_without_marker_is_adopted(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    (run / MARKER_NAME).unlink()
    (run / "summary.json").unlink()
    code, _ = kdlab(capsys, "train", *DIGITS, "--out", run, "--resume")
    assert code == 0 and RunFolder(run).is_marked() and RunFolder(run).is_finished()


def test_resume_rewrites_a_truncated_metrics_file_from_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert kdlab(capsys, "train", *DIGITS, "--epochs", "3", "--out", run)[0] == 0
    (run / "summary.json").unlink()
    rows = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(rows[: len(rows) // 2])  # cut mid-row
    assert kdlab(capsys, "train", *DIGITS, "--epochs", "3", "--out", run, "--resume")[0] == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    assert (run / "metrics.jsonl").read_text() == rows


def test_resume_removes_the_temporary_files_a_killed_write_left_and_nothing_else(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    leftovers = [run / "checkpoints" / ".last.pt.k9x2ab.tmp", run / ".metrics.jsonl.0qz1.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    (run / ".mine.tmp").write_text("mine\n")
    assert kdlab(capsys, "train", *DIGITS, "--out", run, "--resume")[0] == 0
    assert not any(path.exists() for path in leftovers)
    assert (run / ".mine.tmp").read_text() == "mine\n"


# --- defect 3: two processes wrote one --out -------------------------------------------------------


def start_kdlab(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kdlab", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_writer_exits_2_naming_the_first_ones_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = start_kdlab(
        "train", *DIGITS, "--epochs", "30", "--batch-size", "16", "--lr", "0.02", "--out", run
    )
    deadline = time.monotonic() + 120
    while not (run / LOCK_NAME).is_file() or not (run / "config.yaml").is_file():
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    held = (
        f"--out {run} is being written by another kdlab process (pid {first.pid}): wait for it to finish, stop it, "
        "or choose another --out"
    )
    for extra in ((), ("--resume",), ("--overwrite",)):  # whatever the second asks, it is refused
        assert kdlab(capsys, "train", *DIGITS, "--lr", "0.3", "--out", run, *extra) == (2, held)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 30 and "lr: 0.02" in (run / "config.yaml").read_text()
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_a_lock_left_by_kill_9_is_taken_over_and_a_lock_held_by_a_dead_pids_child_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = start_kdlab("train", *DIGITS, "--epochs", "30", "--batch-size", "16", "--out", run)
    while not (run / "metrics.jsonl").is_file():
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.01)
    first.kill()
    first.communicate()
    assert (run / LOCK_NAME).read_text().strip() == str(first.pid)  # left behind, but no longer locked
    code, _ = kdlab(
        capsys, "train", *DIGITS, "--epochs", "30", "--batch-size", "16", "--out", run, "--resume"
    )
    assert code == 0 and RunFolder(run).is_finished() and not (run / LOCK_NAME).exists()

    # A process that holds the lock while the file names a pid that has exited (what a DataLoader
    # worker forked by a killed run does for a few seconds).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, sys.argv[2].encode()); print('locked', flush=True); "
         "time.sleep(60)", str(run / LOCK_NAME), str(first.pid)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, line = kdlab(capsys, "train", *DIGITS, "--out", run, "--overwrite")
        assert (code, line) == (
            2,
            f"--out {run} is locked by pid {first.pid}, which is no longer running, but a process it started (a "
            "data-loading worker) still holds the lock: wait a few seconds and try again",
        )
    finally:
        holder.kill()
        holder.communicate()


def test_the_lock_file_is_removed_at_release_only_while_it_is_still_the_file_kdlab_locked(
    tmp_path: Path,
) -> None:
    run = RunFolder(tmp_path / "run")
    with run.lock():
        assert (run.path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (run.path / LOCK_NAME).exists()
    with run.lock():  # someone puts a file of theirs under the lock's name while the run writes
        (run.path / "mine").write_text("my notes\n")
        os.replace(run.path / "mine", run.path / LOCK_NAME)
    assert (run.path / LOCK_NAME).read_text() == "my notes\n"


# --- defect 9: file modes --------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_open_would_give_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], umask: int
) -> None:
    previous = os.umask(umask)
    try:
        code, _ = kdlab(capsys, "train", *DIGITS, "--out", tmp_path / "run")
    finally:
        os.umask(previous)
    assert code == 0
    modes = {
        str(path.relative_to(tmp_path)): path.stat().st_mode & 0o777 for path in (tmp_path / "run").rglob("*")
    }
    files = {name: mode for name, mode in modes.items() if name.endswith((".pt", ".json", ".jsonl", ".yaml"))}
    assert len(files) == 7  # config, marker, inputs, metrics, summary, last.pt, best.pt
    assert set(files.values()) == {0o666 & ~umask}
    assert modes["run/checkpoints"] == 0o777 & ~umask


# --- the launcher's exit code (the flaky DDP test) ---------------------------------------------------


def test_the_launcher_reports_a_ranks_own_exit_code_over_the_agents_sigterm() -> None:
    sigterm = -signal.SIGTERM
    assert _exit_code({0: sigterm, 1: 2}) == 2  # rank 0 was stopped by the agent after rank 1 failed
    assert _exit_code({0: 2, 1: sigterm}) == 2
    assert _exit_code({0: 2, 1: 1}) == 2  # rank 0 first among real failures
    assert _exit_code({1: sigterm, 2: 1}) == 1
    assert _exit_code({0: sigterm}) == 143  # only a signal: report it
