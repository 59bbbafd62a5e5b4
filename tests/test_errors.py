"""Every bad input of docs/errors.md through the real command line: exit code 2, one line on stderr
naming the problem and the fix, no traceback, and nothing already in ``--out`` touched.

Each case runs ``kdlab.cli.main`` in-process. ``--out`` starts as a folder holding one file of the
user's (``notes.txt``) or, where the case is about an existing run, that run; its files are compared
byte for byte before and after.
"""

from __future__ import annotations

import errno
import gzip
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fixtures_data import write_cifar100, write_idx

import kdlab.runs
from kdlab.cli import main
from kdlab.config import build_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
DIGITS = ["--dataset", "digits", "--model", "convnet-4", "--epochs", "1", "--batch-size", "64",
          "--set", "progress=false", "--set", "tensorboard=false"]  # fmt: skip


@dataclass
class Files:
    """What the cases point at: a finished digits teacher run and folders made per case."""

    root: Path
    teacher: Path

    def out(self) -> Path:
        """A fresh --out folder that already holds a file of the user's."""
        out = self.root / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        (out / "notes.txt").write_text("the user's own notes\n")
        return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def kdlab_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``kdlab ARGS``; it must exit 2 with exactly one line on stderr and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("kdlab: error: ")
    return line.removeprefix("kdlab: error: ")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty torch hub and kdlab caches, so that no file of this machine's answers a case."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "kdlab-cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Files:
    root = tmp_path_factory.mktemp("errors")
    teacher = root / "teacher"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *DIGITS, "--out", str(teacher)])
    assert exit_info.value.code in (0, None)
    return Files(root, teacher)


def _unfinished_teacher(files: Files) -> Path:
    folder = files.root / "unfinished-teacher"
    if not folder.exists():
        shutil.copytree(files.teacher, folder)
        (folder / "summary.json").unlink()
    return folder


def _file(files: Files, name: str, content: bytes | Callable[[Path], None]) -> Path:
    path = files.root / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


def _truncated_checkpoint(files: Files) -> Path:
    data = (files.teacher / "checkpoints" / "last.pt").read_bytes()
    return _file(files, "truncated.pt", data[: len(data) // 2])


def _foreign_checkpoint(files: Files) -> Path:
    return _file(
        files, "foreign.pt", lambda path: torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, path)
    )


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload_checkpoint(files: Files) -> Path:
    return _file(
        files, "payload.pt", lambda path: torch.save({"model": _Payload(files.root / "pwned")}, path)
    )


def _cifar100(files: Files, truncate: bool = False) -> Path:
    folder = files.root / ("cifar100-truncated" if truncate else "cifar100")
    if not folder.exists():
        write_cifar100(folder, n_train=200, n_test=100)
        if truncate:
            train = folder / "cifar-100-python" / "train"
            train.write_bytes(train.read_bytes()[:1000])
    return folder


def _truncated_idx(files: Files) -> Path:
    folder = files.root / "mnist-truncated"
    if not folder.exists():
        write_idx(folder, n_train=100, n_test=50)
        images = folder / "train-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000])[:-8])
    return folder


def _yaml(files: Files, text: str, name: str) -> Path:
    path = files.root / name
    path.write_text(text)
    return path


# (case id, args given (files, out), the message's text). Each message names the problem and the fix.
CASES: list[tuple[str, Callable[[Files, Path], list], str]] = [
    ("alpha-above-1", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--alpha", "1.5", "--out", out],
     "alpha=1.5 is outside [0, 1]: alpha weights the KD term, e.g. --alpha 0.9"),
    ("alpha-negative", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--alpha", "-0.1", "--out", out],
     "alpha=-0.1 is outside [0, 1]"),
    ("tau-negative", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--tau", "-1", "--out", out],
     "kd.tau=-1.0 is outside [0, inf]: use a temperature >= 0, 'inf' (logit matching) or 0 (label matching)"),
    ("tau-nan", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--tau", "nan", "--out", out],
     "kd.tau=nan is not a number in [0, inf]: use a temperature >= 0"),
    ("tau-not-a-number", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--tau", "hot", "--out", out],
     "kd.tau='hot' is not a valid float: give kd.tau a float value"),
    ("unknown-model", lambda f, out: ["train", *DIGITS, "--model", "convnet4", "--out", out],
     "unknown model 'convnet4' (did you mean convnet-4 or convnet-64?): choose one of "),
    ("unknown-dataset", lambda f, out: ["train", *DIGITS, "--dataset", "digitz", "--out", out],
     "unknown dataset 'digitz' (did you mean digits?): choose one of cifar10, cifar100, digits, "),
    ("unknown-loss", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "msee", "--out", out],
     "unknown loss 'msee' (did you mean mse?): choose one of ce, dist, dkd, kl, mse, smooth_logit"),
    ("unknown-recipe", lambda f, out: ["sweep", "grid-smal", "--out", out],
     "unknown recipe 'grid-smal' (did you mean grid-small or grid-paper?): choose one of data-fraction-paper, data-fraction-small, grid-paper, grid-small, "),
    ("wrn-depth-not-6n+4", lambda f, out: ["train", *DIGITS, "--model", "wrn-15-2", "--out", out],
     "wrn depth 15 is invalid: depth must be 6n+4 (10, 16, 22, 28, 40, ...), e.g. wrn-16-2"),
    ("teacher-student-class-mismatch",
     lambda f, out: ["distill", "--teacher", f.teacher, "--dataset", "cifar100", "--data-dir", _cifar100(f),
                     "--model", "convnet-4", "--epochs", "1", "--out", out],
     "the teacher predicts 10 classes but cifar100 has 100: use a teacher trained on cifar100"),
    ("teacher-run-missing", lambda f, out: ["distill", "--teacher", f.root / "no-such-run", *DIGITS, "--out", out],
     "no-such-run does not exist: pass a finished run folder or a checkpoint file"),
    ("teacher-run-unfinished",
     lambda f, out: ["distill", "--teacher", _unfinished_teacher(f), *DIGITS, "--out", out],
     "is unfinished (no summary.json): finish it with `kdlab train ... --out "),
    ("checkpoint-corrupt", lambda f, out: ["distill", "--teacher", _file(f, "junk.pt", b"not a checkpoint"), *DIGITS,
                                           "--out", out],
     "junk.pt (not a PyTorch zip archive: truncated or corrupt): use another checkpoint"),
    ("checkpoint-truncated", lambda f, out: ["distill", "--teacher", _truncated_checkpoint(f), *DIGITS, "--out", out],
     "truncated.pt (not a PyTorch zip archive: truncated or corrupt): use another checkpoint"),
    ("checkpoint-foreign", lambda f, out: ["distill", "--teacher", _foreign_checkpoint(f), *DIGITS, "--out", out],
     "foreign.pt is not a kdlab checkpoint (no 'kdlab-checkpoint-v1' marker): pass a kdlab run folder or checkpoint; "
     "for torchvision weights use --teacher torchvision:MODEL=PATH"),
    ("checkpoint-with-code", lambda f, out: ["distill", "--teacher", _payload_checkpoint(f), *DIGITS, "--out", out],
     "payload.pt (it holds objects other than tensors and plain containers, which weights-only loading refuses)"),
    ("torchvision-weights-not-cached",
     lambda f, out: ["distill", "--teacher", "torchvision:resnet18", *DIGITS, "--out", out],
     "no cached torchvision weights resnet18-*.pth in "),
    ("out-holds-finished-run", lambda f, out: ["train", *DIGITS, "--out", f.teacher],
     "already holds a finished run: pass --resume to continue it, --overwrite to start again, or choose another --out"),
    ("unknown-yaml-key", lambda f, out: ["train", *DIGITS, "--config", _yaml(f, "optim:\n  lrr: 0.1\n", "typo.yaml"),
                                         "--out", out],
     "unknown config key 'optim.lrr' (did you mean optim.lr or optim.nesterov?): valid keys are optim.epochs, optim.batch_size, optim.lr, "),
    ("yaml-syntax", lambda f, out: ["train", *DIGITS, "--config", _yaml(f, "optim: [1, 2\n", "broken.yaml"),
                                    "--out", out],
     "broken.yaml is not valid YAML at line 2: fix the syntax"),
    ("set-without-equals", lambda f, out: ["train", *DIGITS, "--set", "optim.lr", "--out", out],
     "--set 'optim.lr' is malformed: write --set key=value, e.g. --set optim.lr=0.05"),
    ("set-without-key", lambda f, out: ["train", *DIGITS, "--set", "=0.1", "--out", out],
     "--set '=0.1' is malformed: write --set key=value"),
    ("set-wrong-type", lambda f, out: ["train", *DIGITS, "--set", "optim.lr=fast", "--out", out],
     "optim.lr='fast' is not a valid float: give optim.lr a float value"),
    ("label-noise-malformed", lambda f, out: ["train", *DIGITS, "--label-noise", "gaussian:0.2", "--out", out],
     "invalid label noise 'gaussian:0.2': write KIND:RATE with KIND symmetric or asymmetric and 0 <= RATE < 1"),
    ("label-noise-rate-1", lambda f, out: ["train", *DIGITS, "--label-noise", "symmetric:1.0", "--out", out],
     "invalid label noise 'symmetric:1.0': write KIND:RATE"),
    ("label-noise-rate-negative", lambda f, out: ["train", *DIGITS, "--label-noise", "symmetric:-0.1", "--out", out],
     "invalid label noise 'symmetric:-0.1': write KIND:RATE"),
    ("dataset-truncated-cifar",
     lambda f, out: ["train", "--dataset", "cifar100", "--data-dir", _cifar100(f, truncate=True), "--model",
                     "convnet-4", "--epochs", "1", "--out", out],
     "cifar-100-python/train is truncated or corrupt (UnpicklingError): delete it and fetch it again"),
    ("dataset-truncated-idx",
     lambda f, out: ["train", "--dataset", "mnist", "--data-dir", _truncated_idx(f), "--model", "convnet-4",
                     "--epochs", "1", "--out", out],
     "train-images-idx3-ubyte.gz is truncated or corrupt ("),
    ("dataset-missing", lambda f, out: ["train", "--dataset", "cifar10", "--data-dir", f.root / "empty", "--model",
                                        "convnet-4", "--out", out],
     "cifar10 not found: looked in "),
    ("batch-larger-than-dataset", lambda f, out: ["train", *DIGITS, "--batch-size", "5000", "--out", out],
     "batch size 5000 x 1 process(es) is larger than the 1437 training images: lower --batch-size or enlarge --subset"),
    ("nproc-not-a-number", lambda f, out: ["train", *DIGITS, "--nproc", "two", "--out", out],
     "--nproc 'two' is not a positive integer: e.g. --nproc 2"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_out_untouched(
    files: Files, capsys: pytest.CaptureFixture[str], args: Callable[[Files, Path], list], message: str
) -> None:
    out = files.out()
    arguments = args(files, out)
    watched = Path(arguments[arguments.index("--out") + 1])
    before = snapshot(watched)
    assert message in kdlab_error(capsys, arguments)
    assert snapshot(watched) == before
    assert not (files.root / "pwned").exists()  # no payload ever ran


def test_overwrite_with_a_bad_model_leaves_the_previous_run_in_place(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    run = files.root / "previous"
    shutil.copytree(files.teacher, run, dirs_exist_ok=True)
    before = snapshot(run)
    line = kdlab_error(capsys, ["train", *DIGITS, "--model", "convnet4", "--out", run, "--overwrite"])
    assert line.startswith("unknown model 'convnet4'")
    assert snapshot(run) == before


def test_resume_from_a_corrupt_last_checkpoint_says_so_and_touches_nothing(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    run = files.root / "damaged"
    shutil.copytree(_unfinished_teacher(files), run, dirs_exist_ok=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"\0" * 100)
    before = snapshot(run)
    line = kdlab_error(capsys, ["train", *DIGITS, "--out", run, "--resume"])
    assert line == (
        f"cannot read checkpoint {run / 'checkpoints' / 'last.pt'} (not a PyTorch zip archive: truncated or "
        "corrupt): use another checkpoint (a run's checkpoints/best.pt, or the teacher run again), or --overwrite "
        "to start the run again"
    )
    assert snapshot(run) == before


def test_no_space_left_for_a_checkpoint_keeps_the_previous_one_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    real_save, saves, kept = torch.save, [0], {}

    def save_until_the_disk_fills(obj, handle, *args, **kwargs):
        saves[0] += 1
        if saves[0] <= 2:  # epoch 1: best.pt and last.pt
            return real_save(obj, handle, *args, **kwargs)
        kept["last.pt"] = last.read_bytes()
        handle.write(b"partial")  # a disk fills mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kdlab.runs.torch, "save", save_until_the_disk_fills)
    line = kdlab_error(capsys, ["train", *DIGITS, "--epochs", "2", "--out", run])
    assert line.startswith("no space left on the device to write ") and line.endswith(
        ": free some space, then --resume"
    )
    assert last.read_bytes() == kept["last.pt"]
    checkpoint = kdlab.runs.load_checkpoint(last)
    assert checkpoint["epoch"] == 1 and all(
        torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point()
    )
    assert not list(run.rglob("*.tmp"))  # the half-written temporary file is gone
    assert math.isfinite(kdlab.runs.RunFolder(run).metrics()[0]["test_acc"])


def test_off_for_a_text_key_is_not_a_type_error() -> None:
    # YAML 1.1 reads `off` as False; `--set amp=off` (the README's example) must still mean "off".
    assert build_config(overrides=["amp=off"]).amp == "off"
