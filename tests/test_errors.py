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
from fixtures_data import write_cifar10, write_cifar100, write_idx
from fixtures_engine import kdlab_error

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


def _cifar10(files: Files) -> Path:
    folder = files.root / "cifar10"
    if not folder.exists():
        write_cifar10(folder, n_train=100, n_test=50)
    return folder


def _two_epochs_done(run: Path) -> None:
    """Make the copied 1-epoch run look as if it had trained 2 of 2 epochs (its checkpoint and rows)."""
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["epoch"] = 2
        checkpoint.get("config", {}).get("optim", {})["epochs"] = 2
        torch.save(checkpoint, path)
    rows = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(rows + rows.replace('"epoch": 1', '"epoch": 2'))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 1\n", "epochs: 2\n"))


def _older_with_cut_metrics(run: Path) -> None:
    """A run as an older kdlab left it (no rows in last.pt) whose metrics.jsonl was cut."""
    last = run / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    for key in ("metrics", "config"):
        checkpoint.pop(key, None)
    torch.save(checkpoint, last)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()[:20])


def _images(files: Files) -> Path:
    from fixtures_data import write_imagefolder

    folder = files.root / "images"
    if not folder.exists():
        write_imagefolder(folder, classes=2, per_class=4, size=16)
    return folder


def _truncated_idx(files: Files) -> Path:
    folder = files.root / "mnist-truncated"
    if not folder.exists():
        write_idx(folder, n_train=100, n_test=50)
        images = folder / "train-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000])[:-8])
    return folder


def _yaml(files: Files, text: str | bytes, name: str) -> Path:
    path = files.root / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _idx_variant(files: Files, name: str, n_test: int = 50, train_images: bytes | None = None) -> Path:
    """An MNIST folder in the IDX format, with ``n_test`` test images or other training-image bytes."""
    folder = files.root / name
    if not folder.exists():
        write_idx(folder, n_train=100, n_test=n_test)
        if train_images is not None:
            (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(train_images))
    return folder


def _cifar_train_pickle(files: Files, name: str, pickled: bytes) -> Path:
    """A CIFAR-100 folder whose ``train`` file is ``pickled``."""
    folder = files.root / name
    if not folder.exists():
        write_cifar100(folder, n_train=200, n_test=100)
        (folder / "cifar-100-python" / "train").write_bytes(pickled)
    return folder


# An IDX header of 2^21 x 2^21 x 2^22 images and no pixels: 2^64 wraps to 0 in numpy's int64.
IDX_HEADER_2_POW_64 = bytes((0, 0, 8, 3)) + b"".join((2**k).to_bytes(4, "big") for k in (21, 21, 22))

# Protocol-2 pickles that allocate through the allowed globals: bytes(2_000_000_000) in 29 bytes, and
# numpy's _reconstruct asked for an array of 10^12 elements.
BYTES_BOMB = b"\x80\x02c__builtin__\nbytes\nJ\x00\x94\x35\x77\x85R."
ARRAY_BOMB = (
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85"
    b"c_codecs\nencode\nX\x01\x00\x00\x00bX\x06\x00\x00\x00latin1\x86R\x87R."
)


def _checkpoint_variant(files: Files, name: str, change: Callable[[dict], None]) -> Path:
    """The teacher's last.pt (a real kdlab checkpoint) with ``change`` applied, saved as ``name``."""
    checkpoint = torch.load(files.teacher / "checkpoints" / "last.pt", weights_only=True)
    change(checkpoint)
    path = files.root / name
    torch.save(checkpoint, path)
    return path


def _plugin(files: Files, body: str) -> Path:
    """A plugin file of the user's that imports kdlab's loss registry, then runs ``body``."""
    path = files.root / "plugin.py"
    path.write_text("from kdlab.losses import register_loss\n\n" + body)
    return path


def _without_data(checkpoint: dict) -> None:
    """A checkpoint that does not say what it was trained on (as a foreign or hand-made one may not)."""
    checkpoint.pop("dataset")
    checkpoint.pop("config")


def _nan_weights(checkpoint: dict) -> None:
    for value in checkpoint["model"].values():
        if value.is_floating_point():
            value.fill_(math.nan)


def _run_variant(files: Files, name: str, change: Callable[[Path], None], finished: bool = False) -> Path:
    """A copy of the teacher run (without its summary unless ``finished``), changed by ``change``."""
    folder = files.root / name
    if not folder.exists():
        shutil.copytree(files.teacher, folder)
        if not finished:
            (folder / "summary.json").unlink()
        change(folder)
    return folder


def _drop_optimizer(run: Path) -> None:
    last = run / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["optimizer"]
    torch.save(checkpoint, last)


def _sweep_of(files: Files, name: str, change: Callable[[Path], None]) -> Path:
    """A folder holding a copy of the finished teacher run, changed by ``change``: what `report` reads."""
    folder = files.root / name
    if not folder.exists():
        shutil.copytree(files.teacher, folder / "run")
        change(folder / "run")
    return folder


def _marked(files: Files, name: str, link_checkpoints: bool = False) -> Path:
    """A folder kdlab marked (a copy of the teacher run); optionally its checkpoints/ a link elsewhere."""
    folder = files.root / name
    if not folder.exists():
        shutil.copytree(files.teacher, folder)
        if link_checkpoints:
            elsewhere = files.root / f"{name}-elsewhere"
            shutil.move(folder / "checkpoints", elsewhere)
            (folder / "checkpoints").symlink_to(elsewhere)
    return folder


def _foreign(files: Files, name: str, *names: str) -> Path:
    """A user's folder (no marker) holding their own files with kdlab's names among others."""
    folder = files.root / name
    if not folder.exists():
        folder.mkdir()
        (folder / "data.csv").write_text("x,y\n1,2\n")
        for own in names:
            (folder / own).write_text("the user's own file\n")
    return folder


# The billion laughs inside a valid key: level i lists level i - 1 ten times, so optim.lr stands for
# about 10^9 values, which the old error message tried to print.
ALIAS_BOMB = "optim:\n  lr:\n  - &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


# (case id, args given (files, out), the message's text). Each message names the problem and the fix.
CASES: list[tuple[str, Callable[[Files, Path], list], str]] = [
    ("alpha-above-1", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--alpha", "1.5", "--out", out],
     "alpha=1.5 is outside [0, 1]: alpha weights the KD term, e.g. --alpha 0.9"),
    ("alpha-negative", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--alpha", "-0.1", "--out", out],
     "alpha=-0.1 is outside [0, 1]"),
    # Issue 17: the weights of CE and KD (kd.ce_weight, kd.kd_weight) instead of alpha, both or neither.
    ("weight-without-the-other", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--set", "kd.kd_weight=9", "--out", out],
     "kd.kd_weight is given without kd.ce_weight: give both (the loss is then ce_weight * CE + kd_weight * KD), or neither and kd.alpha ((1 - alpha) * CE + alpha * KD)"),
    ("weights-with-alpha", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--alpha", "1", "--set", "kd.ce_weight=0.1", "--set", "kd.kd_weight=9", "--out", out],
     "kd.alpha=1 and kd.ce_weight/kd.kd_weight both weight loss kl: give alpha ((1 - alpha) * CE + alpha * KD) or the two weights (ce_weight * CE + kd_weight * KD), not both"),
    ("weights-both-zero", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "mse", "--set", "kd.ce_weight=0", "--set", "kd.kd_weight=0", "--out", out],
     "kd.ce_weight=0 and kd.kd_weight=0 leave nothing to learn from: give one a positive weight"),
    ("weight-for-dkd", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "dkd", "--set", "kd.ce_weight=1", "--out", out],
     "kd.ce_weight is not read by loss dkd, which reads kd.dkd_alpha, kd.dkd_beta, kd.tau, kd.dkd_warmup, kd.standardize"),
    ("select-count-unknown", lambda f, out: ["train", *DIGITS, "--set", "data.select=samples:random:0-0.1", "--set", "data.select_count=round", "--out", out],
     "data.select_count='round' is invalid: choose kd_data (the official code's counts) or floor"),
    # Issue 15: settings a loss does not read, values it excludes, plugins that cannot be imported.
    ("unread-tau-for-mse", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "mse", "--tau", "3", "--out", out],
     "kd.tau is not read by loss mse, which reads kd.alpha, kd.ce_weight, kd.kd_weight: drop kd.tau, or choose a loss that reads it"),
    ("unread-alpha-for-dkd", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "dkd", "--alpha", "0.3", "--out", out],
     "kd.alpha is not read by loss dkd, which reads kd.dkd_alpha, kd.dkd_beta, kd.tau, kd.dkd_warmup"),
    ("unread-dkd-beta-for-kl", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--set", "kd.dkd_beta=4", "--out", out],
     "kd.dkd_beta is not read by loss kl"),
    ("unread-tau-for-train", lambda f, out: ["train", *DIGITS, "--set", "kd.tau=3", "--out", out],
     "kd.tau is not read by loss ce, which reads no hyperparameter"),
    ("tau-inf-for-dkd", lambda f, out: ["distill", "--teacher", f.teacher, *DIGITS, "--loss", "dkd", "--tau", "inf", "--out", out],
     "kd.tau=inf cannot be used with loss dkd, which excludes 0, inf: choose another value, e.g. kd.tau=4"),
    ("plugin-missing", lambda f, out: ["train", "--import", f.root / "no-plugin.py", *DIGITS, "--out", out],
     "no-plugin.py: no such file or directory: check the path of the plugin file"),
    ("plugin-registers-kl", lambda f, out: ["train", "--import", _plugin(f, "@register_loss('kl', label='KL')\ndef kl(s, y):\n    return {}\n"), *DIGITS, "--out", out],
     "ValueError: loss 'kl' is already registered (as 'kl'): choose another name, or pass replace=True"),
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
    ("teacher-dataset-differs",
     lambda f, out: ["distill", "--teacher", f.teacher, "--dataset", "cifar100", "--data-dir", _cifar100(f),
                     "--model", "convnet-4", "--epochs", "1", "--out", out],
     "--dataset cifar100 differs from teacher "),
    ("teacher-student-class-mismatch",  # a checkpoint that does not record its data: caught by its logits
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "no-data.pt", _without_data), "--dataset",
                     "cifar100", "--data-dir", _cifar100(f), "--model", "convnet-4", "--epochs", "1", "--out", out],
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
     "unknown config key 'optim.lrr' (did you mean optim.lr or optim.eps?): valid keys are optim.name, optim.epochs, optim.batch_size, optim.lr, "),
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
    # --- issue 8: what a hostile new user tried --------------------------------------------------
    ("flag-of-the-wrong-type", lambda f, out: ["train", *DIGITS, "--epochs", "abc", "--out", out],
     "Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an integer: see kdlab "
     "train --help"),
    ("out-is-a-file", lambda f, out: ["train", *DIGITS, "--out", _yaml(f, "a file\n", "a-file.txt")],
     "a-file.txt is a file: name a folder for the run (it is created if missing)"),
    ("out-is-dev-null", lambda f, out: ["train", *DIGITS, "--out", "/dev/null"],
     "--out /dev/null is not a folder: name a folder for the run (it is created if missing)"),
    ("out-not-writable", lambda f, out: ["train", *DIGITS, "--out", "/proc/self/kdlab-run"],
     "--out /proc/self/kdlab-run cannot be created: /proc/self is not writable; choose a folder you can write"),
    ("out-empty", lambda f, out: ["train", *DIGITS, "--out", ""],
     "--out is empty: name a folder for the run"),
    ("out-holds-kdlab-names-but-no-marker",
     lambda f, out: ["train", *DIGITS, "--out", _foreign(f, "foreign-metrics", "metrics.jsonl")],
     "foreign-metrics holds metrics.jsonl but no kdlab-run.json, so it is not a run folder kdlab created and kdlab will "
     "not write into it: choose another --out (or move those files away yourself)"),
    ("overwrite-unmarked-folder",
     lambda f, out: ["train", *DIGITS, "--out", _foreign(f, "foreign-config", "config.yaml"), "--overwrite"],
     "foreign-config holds config.yaml but no kdlab-run.json, so it is not a run folder kdlab created and "
     "--overwrite deletes nothing there: choose another --out"),
    ("lock-file-name-taken-by-a-users-file",
     lambda f, out: ["train", *DIGITS, "--out", _foreign(f, "foreign-lock", ".kdlab-run.lock")],
     "foreign-lock holds a file .kdlab-run.lock that kdlab did not write (kdlab's holds a process id only), and "
     "kdlab overwrites only its own files: move it away or choose another --out"),
    ("overwrite-teacher-folder",
     lambda f, out: ["distill", "--teacher", _marked(f, "own-teacher"), *DIGITS, "--out", _marked(f, "own-teacher"),
                     "--overwrite"],
     "own-teacher: the run reads"),
    ("symlink-inside-run-folder",
     lambda f, out: ["train", *DIGITS, "--out", _marked(f, "linked", link_checkpoints=True), "--overwrite"],
     "linked: checkpoints is a symbolic link; kdlab writes only real files in a run folder, so that it never writes "
     "or deletes elsewhere: remove the link or choose another --out"),
    ("seed-negative", lambda f, out: ["train", *DIGITS, "--seed", "-1", "--out", out],
     "seed=-1 is outside [0, 4294967295] (2^32 - 1): choose e.g. --seed 0"),
    ("seed-above-2^32-1", lambda f, out: ["train", *DIGITS, "--seed", "4294967296", "--out", out],
     "seed=4294967296 is outside [0, 4294967295] (2^32 - 1): choose e.g. --seed 0"),
    ("weight-decay-negative", lambda f, out: ["train", *DIGITS, "--set", "optim.weight_decay=-0.1", "--out", out],
     "optim.weight_decay=-0.1 is invalid: it must be >= 0 and finite, e.g. 5e-4"),
    ("gamma-nan", lambda f, out: ["train", *DIGITS, "--set", "optim.gamma=.nan", "--out", out],
     "optim.gamma=nan is invalid: it must be positive and finite, e.g. 0.1"),
    ("nesterov-without-momentum", lambda f, out: ["train", *DIGITS, "--set", "optim.momentum=0", "--out", out],
     "optim.nesterov=true needs optim.momentum > 0: set optim.momentum=0.9, or optim.nesterov=false"),
    ("milestones-nan", lambda f, out: ["train", *DIGITS, "--set", "optim.milestones=[.nan]", "--out", out],
     "optim.milestones=[nan] is invalid: it must be fractions of the epochs in [0, 1], e.g. [0.5, 0.75]"),
    ("milestones-in-epochs", lambda f, out: ["train", *DIGITS, "--set", "optim.milestones=[100, 150]", "--out", out],
     "optim.milestones=[100.0, 150.0] is invalid: it must be fractions of the epochs in [0, 1]"),
    ("lr-infinite", lambda f, out: ["train", *DIGITS, "--lr", "inf", "--out", out],
     "optim.lr=inf must be positive and finite, e.g. --lr 0.1"),
    ("num-workers-negative", lambda f, out: ["train", *DIGITS, "--set", "data.num_workers=-1", "--out", out],
     "data.num_workers=-1 is invalid: it must be >= 0 (0 loads in the main process)"),
    ("device-meta", lambda f, out: ["train", *DIGITS, "--device", "meta", "--out", out],
     "--device 'meta' is not a device kdlab trains on: use auto, cpu, cuda, cuda:N or mps"),
    ("device-mps-missing", lambda f, out: ["train", *DIGITS, "--device", "mps", "--out", out],
     "--device mps was asked for but MPS is not available here: use --device cpu or auto"),
    ("yaml-not-utf8", lambda f, out: ["train", *DIGITS, "--config", _yaml(f, b"optim: {lr: 0.1}\n# \xff\xfe\n", "latin.yaml"),
                                      "--out", out],
     "latin.yaml is not UTF-8 text (byte 0xff at offset 19): save it as UTF-8"),
    ("yaml-nested-20000-deep", lambda f, out: ["train", *DIGITS, "--config", _yaml(f, "a: " + "[" * 20000, "deep.yaml"),
                                               "--out", out],
     "deep.yaml is nested more than 64 levels deep: a kdlab config has a few levels"),
    ("yaml-alias-bomb", lambda f, out: ["train", *DIGITS, "--config", _yaml(f, ALIAS_BOMB, "bomb.yaml"), "--out", out],
     "bomb.yaml expands to more than 100000 values (YAML aliases repeating an anchor?): a kdlab config holds a few "
     "dozen; write the values out"),
    ("yaml-larger-than-1-mib",
     lambda f, out: ["train", *DIGITS, "--config", _yaml(f, "# " + "x" * (1 << 20) + "\n", "huge.yaml"), "--out", out],
     "huge.yaml is larger than 1 MiB: a kdlab config is a few KB; check the path"),
    ("set-nested-20000-deep", lambda f, out: ["train", *DIGITS, "--set", "optim.lr=" + "[" * 20000, "--out", out],
     "--set optim.lr is nested more than 64 levels deep"),
    ("yaml-5000-digit-integer", lambda f, out: ["train", *DIGITS, "--set", "seed=" + "9" * 5000, "--out", out],
     "--set seed holds a value YAML cannot read ("),
    ("run-config-yaml-a-list",
     lambda f, out: ["report", _sweep_of(f, "sweep-list-config", lambda run: (run / "config.yaml").write_text("- 1\n")),
                     "--out", out],
     "config.yaml must hold a mapping of config keys, got list"),
    ("summary-truncated",
     lambda f, out: ["report", _sweep_of(f, "sweep-cut-summary", lambda run: (run / "summary.json").write_text('{"te')),
                     "--out", out],
     "summary.json is damaged (truncated, or not a JSON object): delete it, then run the same command with --resume"),
    ("summary-not-an-object-on-resume",
     lambda f, out: ["train", *DIGITS, "--resume", "--out",
                     _run_variant(f, "list-summary", lambda run: (run / "summary.json").write_text("[]"), finished=True)],
     "summary.json is damaged (truncated, or not a JSON object): delete it, then run the same command with --resume"),
    ("test-split-empty",
     lambda f, out: ["train", "--dataset", "mnist", "--data-dir", _idx_variant(f, "mnist-no-test", n_test=0),
                     "--model", "convnet-4", "--epochs", "1", "--batch-size", "32", "--out", out],
     "the test split of mnist holds no images: its files are incomplete; fetch them again"),
    ("idx-header-far-larger-than-the-file",
     lambda f, out: ["train", "--dataset", "mnist", "--model", "convnet-4", "--epochs", "1", "--out", out, "--data-dir",
                     _idx_variant(f, "mnist-huge-header", train_images=IDX_HEADER_2_POW_64)],
     "train-images-idx3-ubyte.gz is truncated or corrupt (expected 18446744073709551632 bytes, got 16): delete it"),
    ("cifar-pickle-bytes-bomb",
     lambda f, out: ["train", "--dataset", "cifar100", "--data-dir", _cifar_train_pickle(f, "cifar-bytes-bomb", BYTES_BOMB),
                     "--model", "convnet-4", "--epochs", "1", "--out", out],
     "cifar-100-python/train is truncated or corrupt (UnpicklingError): delete it and fetch it again"),
    ("cifar-pickle-array-bomb",
     lambda f, out: ["train", "--dataset", "cifar100", "--data-dir", _cifar_train_pickle(f, "cifar-array-bomb", ARRAY_BOMB),
                     "--model", "convnet-4", "--epochs", "1", "--out", out],
     "cifar-100-python/train is truncated or corrupt (UnpicklingError): delete it and fetch it again"),
    ("teacher-outputs-nan",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "nan.pt", _nan_weights), *DIGITS, "--out", out],
     "nan.pt outputs NaN or inf logits on digits: its weights are damaged (a run that diverged?); use another teacher"),
    ("teacher-input-shape-differs",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "no-data.pt", _without_data), "--dataset", "cifar10", "--data-dir", _cifar10(f),
                     "--model", "convnet-4", "--epochs", "1", "--batch-size", "32", "--out", out],
     "cannot take the images of cifar10 ([3, 32, 32]): "),
    ("student-cannot-take-the-images",
     lambda f, out: ["train", "--dataset", "imagefolder", "--data-dir", _images(f), "--model", "convnet-4",
                     "--epochs", "1", "--batch-size", "4", "--set", "data.image_size=1", "--set", "data.num_workers=0",
                     "--out", out],
     "--model convnet-4 cannot take the images of imagefolder ([3, 1, 1]): Given input size: (4x1x1). Calculated "
     "output size: (4x0x0). Output size is too small; choose a model for such images"),
    ("checkpoint-class-count-disagrees-with-weights",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "classes.pt", lambda c: c.update(num_classes=7)),
                     *DIGITS, "--out", out],
     "classes.pt holds 'classifier.weight' of shape [10, "),
    ("checkpoint-model-name-unknown",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "name.pt", lambda c: c.update(model_name="convnet-x")),
                     *DIGITS, "--out", out],
     "name.pt names a model kdlab cannot build: unknown model 'convnet-x'"),
    ("checkpoint-model-name-disagrees-with-weights",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "other.pt", lambda c: c.update(model_name="convnet-8")),
                     *DIGITS, "--out", out],
     "other.pt holds 'features.0.weight' of shape [4, "),
    ("checkpoint-without-weights",
     lambda f, out: ["distill", "--teacher", _checkpoint_variant(f, "empty.pt", lambda c: c.pop("model")),
                     *DIGITS, "--out", out],
     "empty.pt has no valid 'model' (found None): the file is damaged or was not written by kdlab"),
    ("resume-without-optimizer-state",
     lambda f, out: ["train", *DIGITS, "--resume", "--out", _run_variant(f, "no-optimizer", _drop_optimizer)],
     "last.pt has no valid 'optimizer' (found None): --resume needs it; use another checkpoint, or --overwrite to "
     "start the run again"),
    ("resume-with-truncated-metrics-of-an-older-kdlab",
     lambda f, out: ["train", *DIGITS, "--resume", "--out", _run_variant(f, "old-cut-metrics", _older_with_cut_metrics)],
     "metrics.jsonl lacks rows of the 1 epoch(s) in "),
    ("resume-with-another-dataset",
     lambda f, out: ["train", *DIGITS, "--dataset", "mnist", "--data-dir", _idx_variant(f, "mnist-ok"), "--resume",
                     "--out", _run_variant(f, "resume-dataset", lambda run: None)],
     "resume-dataset was trained with data.name='digits', not 'mnist': --resume continues a run as it was started; "
     "drop the change, or choose another --out"),
    ("resume-with-another-batch-size",
     lambda f, out: ["train", *DIGITS, "--batch-size", "32", "--resume",
                     "--out", _run_variant(f, "resume-batch", lambda run: None)],
     "resume-batch was trained with optim.batch_size=64, not 32: --resume continues a run as it was started"),
    ("resume-with-fewer-epochs",
     lambda f, out: ["train", *DIGITS, "--epochs", "1", "--resume",
                     "--out", _run_variant(f, "resume-fewer", _two_epochs_done)],
     "resume-fewer has trained 2 epochs already, more than --epochs 1: pass --epochs 2 or more"),
    ("analyze-class-out-of-range",
     lambda f, out: ["analyze", f.teacher, "--classes", "0,1,99", "--out", out],
     "--classes 0,1,99 must be three different classes of digits, in 0..9: e.g. --classes 0,1,2"),
    ("sweep-seeds-unbounded",
     lambda f, out: ["sweep", "grid-small", "--seeds", "1000000", "--dry-run", "--out", out],
     "--seeds 1000000 is outside 1..100: each seed repeats every run of the recipe; the paper uses a handful"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_out_untouched(
    files: Files, capsys: pytest.CaptureFixture[str], args: Callable[[Files, Path], list], message: str
) -> None:
    out = files.out()
    arguments = args(files, out)
    watched = Path(arguments[arguments.index("--out") + 1])
    before, existed = snapshot(watched), watched.exists()
    assert message in kdlab_error(capsys, *arguments)
    assert snapshot(watched) == before
    assert watched.exists() == existed  # a failed start creates nothing
    assert not (files.root / "pwned").exists()  # no payload ever ran


def test_overwrite_with_a_bad_model_leaves_the_previous_run_in_place(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    run = files.root / "previous"
    shutil.copytree(files.teacher, run, dirs_exist_ok=True)
    before = snapshot(run)
    line = kdlab_error(capsys, "train", *DIGITS, "--model", "convnet4", "--out", run, "--overwrite")
    assert line.startswith("unknown model 'convnet4'")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--seed", "-1"], "seed=-1 is outside"),
        (["--set", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
        (["--set", "optim.milestones=[.nan]"], "optim.milestones=[nan] is invalid"),
        (["--batch-size", "5000"], "batch size 5000 x 1 process(es) is larger than the 1437 training images"),
    ],
    ids=["seed", "nesterov", "milestones", "batch-size"],
)
def test_overwrite_with_an_input_found_bad_later_leaves_the_previous_run_in_place(
    files: Files, capsys: pytest.CaptureFixture[str], bad: list[str], message: str
) -> None:
    # The triggers: found bad by the optimizer, the schedule, the data order or the data.
    run = files.root / "previous"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(files.teacher, run)
    before = snapshot(run)
    assert message in kdlab_error(capsys, "train", *DIGITS, *bad, "--out", run, "--overwrite")
    assert snapshot(run) == before


def test_overwrite_with_a_teacher_that_cannot_take_the_data_leaves_the_previous_run_in_place(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    run = files.root / "previous-student"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(files.teacher, run)
    before = snapshot(run)
    teacher = _checkpoint_variant(files, "no-data.pt", _without_data)
    line = kdlab_error(capsys, "distill", "--teacher", teacher, "--dataset", "cifar10", "--data-dir",
                                _cifar10(files), "--model", "convnet-4", "--epochs", "1", "--batch-size", "32",
                                "--out", run, "--overwrite")  # fmt: skip
    assert "cannot take the images of cifar10" in line
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--dataset", "mnist"], "was trained with data.name='digits', not 'mnist'"),
        (["--lr", "0.3"], "was trained with optim.lr=0.1, not 0.3"),
    ],
    ids=["dataset", "lr"],
)
def test_resume_of_a_finished_run_with_settings_that_change_it_is_refused(
    files: Files, capsys: pytest.CaptureFixture[str], change: list[str], message: str
) -> None:
    before = snapshot(files.teacher)
    args = [
        "train",
        *DIGITS,
        *change,
        "--data-dir",
        _idx_variant(files, "mnist-ok"),
        "--resume",
        "--out",
        files.teacher,
    ]
    assert message in kdlab_error(capsys, *args)
    assert snapshot(files.teacher) == before


def test_resume_from_a_corrupt_last_checkpoint_says_so_and_touches_nothing(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    run = files.root / "damaged"
    shutil.copytree(_unfinished_teacher(files), run, dirs_exist_ok=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"\0" * 100)
    before = snapshot(run)
    line = kdlab_error(capsys, "train", *DIGITS, "--out", run, "--resume")
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
    line = kdlab_error(capsys, "train", *DIGITS, "--epochs", "2", "--out", run)
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


@pytest.mark.parametrize("pickled", [BYTES_BOMB, ARRAY_BOMB], ids=["bytes(2e9)", "array-of-1e12"])
def test_a_cifar_file_of_a_few_bytes_is_refused_before_it_allocates(pickled: bytes) -> None:
    import tracemalloc

    from kdlab.data.formats import load_cifar_pickle
    from kdlab.errors import UserError

    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"^bomb is truncated or corrupt \(UnpicklingError\)"):
            load_cifar_pickle(pickled, "bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # under 1 MiB; the old reader allocated 2 GB (bytes) or tried 1 TB (array)


def test_a_nan_member_of_an_ensemble_teacher_is_named(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    nan = _checkpoint_variant(files, "nan-member.pt", _nan_weights)
    out = files.out()
    line = kdlab_error(capsys, "distill", "--teacher", files.teacher, "--teacher", nan, *DIGITS, "--out", out)
    assert line == (
        f"teacher {nan} outputs NaN or inf logits on digits: its weights are damaged (a run that diverged?); use "
        "another teacher checkpoint"
    )
