"""Hostile values for every numeric setting and every reader, through the real command line.

Each case runs ``kdlab.cli.main`` in-process with ``--out`` naming a folder that does not exist,
inside a folder that holds a file of the user's. It must exit with code 2, print exactly one line
(``kdlab: error: ...``, no traceback) naming the problem and the fix, create no folder and leave the
user's folder byte for byte as it was. The stated limits come from the modules that own them
(``kdlab.config.MAX_*``, ``kdlab.models.base.MAX_*``, ``kdlab.experiments.recipes.MAX_*``); each
message below is checked against its text. docs/errors.md lists them ("Inputs that look valid",
"Bounds").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import write_cifar10, write_idx, write_svhn
from fixtures_engine import kdlab_error

from kdlab.cli import main
from kdlab.data.loader import check_train_batches
from kdlab.data.select import parse_selection, select_indices
from kdlab.errors import UserError
from kdlab.losses import loss_spec, register_loss
from kdlab.models import check_model_name, count_parameters, create_model
from kdlab.models.base import MAX_PARAMETERS
from kdlab.models.small import convnet_parameters, mlp_parameters
from kdlab.models.wrn import wrn_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
DIGITS = ["--dataset", "digits", "--model", "convnet-4", "--epochs", "1", "--batch-size", "64", *QUIET]


@dataclass
class Files:
    """What the cases point at: a finished digits teacher run and files made once per case."""

    root: Path
    teacher: Path

    def path(self, name: str, make: Callable[[Path], None]) -> Path:
        path = self.root / name
        if not path.exists():
            make(path)
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Files:
    root = tmp_path_factory.mktemp("bounds")
    teacher = root / "teacher"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *DIGITS, "--out", str(teacher)])
    assert exit_info.value.code in (0, None)
    return Files(root, teacher)


# --- files a hostile user hands over -------------------------------------------------------------


def _checkpoint(files: Files, name: str, **changes: object) -> Path:
    """The teacher's last.pt with ``changes`` written into it (a crafted checkpoint)."""

    def make(path: Path) -> None:
        checkpoint = torch.load(files.teacher / "checkpoints" / "last.pt", weights_only=True)
        checkpoint.update(changes)
        torch.save(checkpoint, path)

    return files.path(name, make)


def _finished_run_with_summary(files: Files, out: Path, text: str) -> Path:
    """--out: a copy of the finished teacher run whose summary.json holds ``text``."""
    shutil.copytree(files.teacher, out)
    (out / "summary.json").write_text(text)
    return out


def _svhn(files: Files, name: str, x: Callable[[np.ndarray], np.ndarray] | None = None,
          y: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:  # fmt: skip
    """SVHN's official files whose train ``X`` and ``y`` (as stored: X uint8 [32, 32, 3, N], y [N, 1])
    are replaced by ``x(X)`` and ``y(y)``."""
    from scipy.io import loadmat, savemat

    def make(folder: Path) -> None:
        write_svhn(folder, n_train=20, n_test=10)
        train = folder / "train_32x32.mat"
        stored = loadmat(train)
        images, labels = stored["X"], stored["y"]
        savemat(train, {"X": x(images) if x else images, "y": y(labels) if y else labels})

    return files.path(name, make)


def _with(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _cifar10(files: Files, name: str, batch: Callable[[dict], None] | None = None,
             meta: Callable[[dict], None] | None = None) -> Path:  # fmt: skip
    """A CIFAR-10 folder whose first training batch and meta file are edited by ``batch``/``meta``."""
    import pickle

    def make(root: Path) -> None:
        write_cifar10(root, n_train=100, n_test=50)
        folder = root / "cifar-10-batches-py"
        for edit, file in ((batch, "data_batch_1"), (meta, "batches.meta")):
            if edit is not None:
                content = pickle.loads((folder / file).read_bytes(), encoding="bytes")
                edit(content)
                (folder / file).write_bytes(pickle.dumps(content, protocol=2))

    return files.path(name, make)


def _float_label(batch: dict) -> None:
    batch[b"labels"] = [float(label) for label in batch[b"labels"]]
    batch[b"labels"][3] = 1.5


def _idx_5x5(files: Files) -> Path:
    from fixtures_data import idx_bytes

    def make(folder: Path) -> None:
        write_idx(folder, n_train=100, n_test=50, gz=False)
        (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((100, 5, 5), np.uint8)))

    return files.path("mnist-5x5", make)


def _tensors_many_classes(files: Files) -> Path:
    def make(folder: Path) -> None:
        folder.mkdir()
        classes = np.array([f"c{k}" for k in range(100_001)])
        for split in ("train", "test"):
            np.savez(folder / f"{split}.npz", x=np.zeros((4, 3), np.float32), y=np.arange(4), classes=classes)

    return files.path("tensors-many-classes", make)


def _text(files: Files, name: str, text: str) -> Path:
    return files.path(name, lambda path: path.write_text(text))


def _recipe(files: Files, name: str, body: str) -> Path:
    return _text(files, f"{name}.yaml", "kd: {loss: ce}\nmodel: convnet-4\ndata: {name: digits}\n" + body)


def _marked_out_with_deep_marker(files: Files, out: Path) -> Path:
    """--out holding kdlab's config.yaml and a marker nested 100,000 levels deep."""
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "kdlab-run.json").write_text("[" * 100_000 + "]" * 100_000)
    return out


DEEP = "[" * 100_000 + "]" * 100_000
SETTING = """data: {name: digits}
students: [convnet-4, convnet-8, convnet-16]
teachers: {large: {model: convnet-16}}
seeds: 1000000000
"""


# --- the cases: (id, arguments given Files and --out, the message or a fragment naming the fix) ---

Args = Callable[[Files, Path], list]


def _train(*extra: object) -> Args:
    return lambda files, out: ["train", *DIGITS, *extra, "--out", out]


def _distill(*extra: object) -> Args:
    return lambda files, out: ["distill", "--teacher", files.teacher, *DIGITS, *extra, "--out", out]


CASES: list[tuple[str, Args, str]] = [
    # every numeric run setting: huge, zero, negative, NaN, inf, of another type
    ("epochs-1e9", _train("--epochs", "1000000000"),
     "optim.epochs=1000000000 is invalid: it must be at most 100000, e.g. --epochs 200"),
    ("epochs-inf", _train("--set", "optim.epochs=.inf"), "optim.epochs=inf is not a valid int: give optim.epochs a int"),
    ("batch-1e12", _train("--batch-size", "1000000000000"),
     "batch size 1000000000000 x 1 process(es) is larger than the 1437 training images: lower --batch-size"),
    ("batch-empty", _train("--set", "optim.batch_size="), "optim.batch_size=None is not a valid int"),
    ("workers-1e6", _train("--set", "data.num_workers=1000000"),
     "data.num_workers=1000000 is invalid: it must be at most 256 processes, e.g. 4"),
    ("cache-limit-1e300", _train("--set", "kd.cache_limit_gb=1e300"),
     "kd.cache_limit_gb=1e+300 is invalid: it must be at most 1e+06 (a petabyte), e.g. 8"),
    ("lr-1e308", _train("--lr", "1e308"),
     "optim.lr=1e+308 is invalid: it must be at most 10 (larger steps diverge), e.g. --lr 0.1"),
    ("lr-overflowing-flag", _train("--lr", "1e309"), "optim.lr=inf must be positive and finite, e.g. --lr 0.1"),
    ("lr-list", _train("--set", "optim.lr=[0.1]"), "optim.lr=[0.1] is not a valid float: give optim.lr a float"),
    ("lr-map", _train("--set", "optim.lr={a: 1}"), "optim.lr={'a': 1} is not a valid float"),
    ("weight-decay-1e308", _train("--set", "optim.weight_decay=1e308"),
     "optim.weight_decay=1e+308 is invalid: it must be at most 1 (it would shrink the weights faster than they learn)"),
    ("gamma-1e308", _train("--set", "optim.gamma=1e308"),
     "optim.gamma=1e+308 is invalid: it must be at most 1 (the factor that lowers the learning rate"),
    ("eps-1e308", _train("--set", "optim.name=adamw", "--set", "optim.eps=1e308", "--lr", "0.001"),
     "optim.eps=1e+308 is invalid: it must be at most 1 (it would drown the gradient), e.g. 1e-8"),
    ("momentum-inf", _train("--set", "optim.momentum=.inf"), "optim.momentum=inf is invalid: it must be in [0, 1)"),
    ("image-size-0", _train("--set", "data.image_size=0"),
     "data.image_size=0 is invalid: it must be a crop size in [1, 4096] pixels (or absent: the dataset's own)"),
    ("image-size-negative", _train("--set", "data.image_size=-1"), "data.image_size=-1 is invalid"),
    ("image-size-1e6", _train("--set", "data.image_size=1000000"), "data.image_size=1000000 is invalid"),
    ("subset-0", _train("--subset", "0"), "data.subset=0 must be a positive number of images (or absent: all)"),
    ("subset-nan", _train("--set", "data.subset=.nan"), "data.subset=nan is not a valid int"),
    ("test-subset-beyond-split", _train("--set", "data.test_subset=100000"),
     "test_subset: subset size 100000 is out of range: choose between 10 (one per class) and 360 (the whole split)"),
    ("val-split-beyond-split", _train("--val-split", "100000"),
     "val_split=100000 is out of range: choose between 10 (one per class) and 1436"),
    ("noise-rate-1", _train("--label-noise", "symmetric:1"), "invalid label noise 'symmetric:1'"),
    ("noise-rate-1.5", _train("--label-noise", "asymmetric:1.5"), "and 0 <= RATE < 1, e.g. symmetric:0.4"),
    ("seed-1e20", _train("--set", "seed=1.0e+20"), "seed=100000000000000000000 is outside [0, 4294967295]"),
    ("seed-list", _train("--set", "seed=[1, 2]"), "seed=[1, 2] is not a valid int: give seed a int value"),
    ("noise-seed-huge", _train("--set", "data.noise_seed=4294967296"), "data.noise_seed=4294967296 is outside"),
    ("select-band-inverted", _train("--set", "data.select=samples:random:0.5-0.2"),
     "data.select band '0.5-0.2' must be LOWER-UPPER with 0 <= lower < upper <= 1, e.g. 0-0.1"),
    # floor(142 * 0.005) = 0 per class; the official counts keep 142 - int(141.29) = 1 of each class.
    ("select-band-empties-classes",
     _train("--set", "data.select=samples:random:0-0.005", "--set", "data.select_count=floor"),
     "data.select band 0-0.005 of samples keeps no sample of 10 class(es): 0 (142 samples), 1 (146 samples)"),
    ("config-file-lr", lambda f, out: ["train", *DIGITS, "--config", _text(f, "lr.yaml", "optim: {lr: 1.0e+308}\n"),
                                       "--out", out], "optim.lr=1e+308 is invalid: it must be at most 10"),
    ("nproc-1e6", lambda f, out: ["train", "--nproc", "1000000", *DIGITS, "--out", out],
     "--nproc 1000000 is more processes than this machine runs"),
    ("nproc-5000-digits", lambda f, out: ["train", "--nproc", "9" * 5000, *DIGITS, "--out", out],
     "is not a positive integer: e.g. --nproc 2"),
    # loss settings
    ("tau-1e308", _distill("--tau", "1e308"), "kd.tau=1e+308 is invalid: it must be at most 10000, or inf"),
    ("dkd-beta-1e308", _distill("--loss", "dkd", "--set", "kd.dkd_beta=1e308"),
     "kd.dkd_beta=1e+308 is outside [0, 10000]: DKD's weight of NCKD (non-target classes), e.g. 8"),
    ("dist-gamma-inf", _distill("--loss", "dist", "--set", "kd.dist_gamma=.inf"),
     "kd.dist_gamma=inf is outside [0, 10000]"),
    ("dkd-warmup-1e20", _distill("--loss", "dkd", "--set", "kd.dkd_warmup=1.0e+20"),
     "kd.dkd_warmup=100000000000000000000 is outside [0, 100000]"),
    # batches a loss or BatchNorm cannot train on
    ("dist-batch-1", _distill("--loss", "dist", "--batch-size", "1"),
     "optim.batch_size=1 is too small: loss dist needs at least 2 samples per batch (it reads statistics over "
     "the batch); raise --batch-size"),
    ("dist-last-batch-1", _distill("--loss", "dist", "--batch-size", "4"),
     "the last training batch of each epoch would hold 1 of the 1437 training samples at batch size 4: loss dist "
     "needs at least 2 samples per batch (it reads statistics over the batch); choose e.g. --batch-size 5"),
    ("batchnorm-batch-1", _train("--batch-size", "1"),
     "batch size 1 is too small: --model convnet-4 has BatchNorm layers, which need at least 2 samples per batch "
     "in training; choose e.g. --batch-size 3"),
    ("batchnorm-last-batch-1", _train("--batch-size", "2"),
     "the last training batch of each epoch would hold 1 of the 1437 training samples at batch size 2: --model "
     "convnet-4 has BatchNorm layers"),
    ("batchnorm-last-batch-1-subset", _train("--batch-size", "8", "--subset", "17"),
     "would hold 1 of the 17 training samples at batch size 8: --model convnet-4 has BatchNorm layers, which need "
     "at least 2 samples per batch in training; choose e.g. --batch-size 9"),
    ("ensemble-of-65", lambda f, out: ["distill", *[arg for _ in range(65) for arg in ("--teacher", f.teacher)],
                                       *DIGITS, "--out", out],
     "kd.teacher lists 65 teachers: an ensemble holds at most 64 (the paper's has 3)"),
    # model names that ask for absurd sizes
    ("wrn-10000-1000", _train("--model", "wrn-10000-1000"),
     "model 'wrn-10000-1000' would have 1.61e+14 parameters (6.45e+05 GB of float32 weights), more than kdlab's "
     "limit of 2^31 parameters: choose a smaller model (fewer or narrower layers)"),
    ("mlp-99999999999", _train("--model", "mlp-99999999999"), "model 'mlp-99999999999' would have 1e+22 parameters"),
    ("convnet-100000", _train("--model", "convnet-100000"), "model 'convnet-100000' would have 9e+11 parameters"),
    ("model-5000-digits", _train("--model", "mlp-" + "9" * 5000),
     "its hidden has 5000 digits: give mlp-{hidden} fields of a sensible size"),
    ("chain-absurd-second-stage", lambda f, out: ["chain", "--stage", "convnet-4:ce", "--stage", "wrn-10000-1000:kl",
                                                  "--dataset", "digits", "--epochs", "1", *QUIET, "--out", out],
     "model 'wrn-10000-1000' would have 1.61e+14 parameters"),  # refused before stage 1 trains
    # checkpoints that ask for absurd sizes
    ("checkpoint-1e9-classes", lambda f, out: ["distill", "--teacher", _checkpoint(f, "classes.pt", num_classes=10**9),
                                               *DIGITS, "--out", out],
     "names a model kdlab cannot build: num_classes=1000000000 is invalid: kdlab builds classifiers of 2 to 100000 "
     "classes"),
    ("checkpoint-image-size-1e6", lambda f, out: ["distill", "--teacher", _checkpoint(f, "size.pt", image_size=10**6),
                                                  *DIGITS, "--out", out],
     "image_size=1000000 is invalid: kdlab builds models for images of 1 to 4096 pixels a side"),
    ("checkpoint-input-shape", lambda f, out: ["distill", "--teacher",
                                               _checkpoint(f, "shape.pt", input_shape=[3, 10**5, 10**5]),
                                               *DIGITS, "--out", out],
     "samples of shape [3, 100000, 100000] hold 30000000000 values, more than kdlab's limit of 2^28 per sample"),
    ("checkpoint-absurd-model", lambda f, out: ["distill", "--teacher",
                                                _checkpoint(f, "model.pt", model_name="wrn-10000-1000"),
                                                *DIGITS, "--out", out],
     "names a model kdlab cannot build: model 'wrn-10000-1000' would have"),
    # JSON a run folder holds
    ("summary-nested-100000", lambda f, out: ["train", *DIGITS, "--resume", "--out",
                                              _finished_run_with_summary(f, out, DEEP)],
     "summary.json is damaged (truncated, or not a JSON object): delete it, then run the same command with --resume"),
    ("marker-nested-100000", lambda f, out: ["train", *DIGITS, "--out", _marked_out_with_deep_marker(f, out)],
     "holds config.yaml but no kdlab-run.json, so it is not a run folder kdlab created"),
    # dataset files: values a reader must not cast
    ("svhn-x-float", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                     _svhn(f, "svhn-float", x=lambda x: x.astype(np.float64)), "--out", out],
     "train_32x32.mat holds X of float64 values, but SVHN's pixels are uint8: delete it and fetch it again"),
    ("svhn-x-nan", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                   _svhn(f, "svhn-nan", x=lambda x: _with(x.astype(np.float32), (0, 0, 0, 0), np.nan)),
                                   "--out", out],
     "holds X of float32 values, but SVHN's pixels are uint8"),
    ("svhn-x-int16", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                     _svhn(f, "svhn-int16", x=lambda x: x.astype(np.int16) * 300), "--out", out],
     "holds X of int16 values, but SVHN's pixels are uint8"),
    ("svhn-y-fraction", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                        _svhn(f, "svhn-y-half", y=lambda y: _with(y.astype(np.float64), (2, 0), 1.5)),
                                        "--out", out],
     "train_32x32.mat holds 1.5 (sample 2), not a class number: labels are integers 1..10 (10 is the digit 0)"),
    ("svhn-y-nan", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                   _svhn(f, "svhn-y-nan", y=lambda y: _with(y.astype(np.float64), (4, 0), np.nan)),
                                   "--out", out],
     "holds nan (sample 4), not a class number"),
    ("svhn-y-11", lambda f, out: ["train", *DIGITS, "--dataset", "svhn", "--data-dir",
                                  _svhn(f, "svhn-y-11", y=lambda y: _with(y, (5, 0), 11)), "--out", out],
     "holds the label 11 (sample 5), outside SVHN's 1..10: delete it and fetch it again"),
    ("cifar-label-fraction", lambda f, out: ["train", *DIGITS, "--dataset", "cifar10", "--data-dir",
                                             _cifar10(f, "cifar-half", batch=_float_label), "--out", out],
     "data_batch_1 (labels) holds 1.5 (sample 3), not a class number: labels are integers 0..9"),
    ("cifar-meta-classes", lambda f, out: ["train", *DIGITS, "--dataset", "cifar10", "--data-dir",
                                           _cifar10(f, "cifar-meta", meta=lambda m: m[b"label_names"].append(b"x")),
                                           "--out", out],
     "batches.meta names 11 classes (label_names), but cifar-10-batches-py has 10: delete it and fetch it again"),
    ("idx-5x5", lambda f, out: ["train", *DIGITS, "--dataset", "mnist", "--data-dir", _idx_5x5(f), "--out", out],
     "train-images-idx3-ubyte holds images of 5x5 pixels, not (Fashion-)MNIST's 28x28"),
    ("tensors-100001-classes", lambda f, out: ["train", *DIGITS, "--dataset", "tensors", "--data-dir",
                                               _tensors_many_classes(f), "--model", "mlp-4", "--out", out],
     "dataset tensors has num_classes=100001: kdlab trains classifiers of 2 to 100000 classes"),
    # recipes, settings and their planned runs
    ("recipe-grid-1e6-points", lambda f, out: ["sweep", _recipe(f, "grid", "grid: {seed: %s, data.subset_seed: %s, "
                                                                "data.noise_seed: %s}\n" % ((list(range(100)),) * 3)),
                                               "--out", out],
     "recipe grid plans 1000000 runs (grid 100 seed x 100 data.subset_seed x 100 data.noise_seed, 0 runs entries, "
     "1 seed(s), 0 teacher(s)), more than kdlab's limit of 10000: shorten the grid's lists or split the recipe"),
    ("recipe-seeds-1e9", lambda f, out: ["sweep", _recipe(f, "seeds", "seeds: 1000000000\n"), "--out", out],
     "seeds: seeds=1000000000 must be a whole number in 1..100"),
    ("sweep-jobs-1e6", lambda f, out: ["sweep", _recipe(f, "jobs", ""), "--jobs", "1000000", "--out", out],
     "Invalid value for '--jobs'"),
    ("setting-seeds-1e9", lambda f, out: ["reproduce", "--setting", _text(f, "setting.yaml", SETTING), "--out", out],
     "seeds=1000000000 must be a whole number in 1..100 (3 or more for a verdict)"),
    # paths the file system cannot hold: refused before any folder on the way is made
    ("out-name-5000", lambda f, out: ["train", *DIGITS, "--out", out / ("a" * 5000)],
     " characters): File name too long: use a shorter path (at most 255 characters per name)"),
    ("out-deep-name-300", lambda f, out: ["train", *DIGITS, "--out", out / ("c" * 300) / "run"],
     "cannot be created: its names are too long for the file system (at most 255 bytes per name); choose a "
     "shorter --out"),
    ("report-out-name-300", lambda f, out: ["report", f.teacher, "--out", out / ("b" * 300)],
     "cannot be created: its names are too long for the file system (at most 255 bytes per name)"),
    ("config-name-300", lambda f, out: ["train", "--config", f.root / ("c" * 300), "--out", out],
     " characters): File name too long: use a shorter path (at most 255 characters per name)"),
    ("teacher-name-5000", lambda f, out: ["distill", "--teacher", "t" * 5000, *DIGITS, "--out", out],
     "(5000 characters): File name too long: use a shorter path (at most 255 characters per name)"),
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_value_is_one_line_exit_2_and_nothing_written(
    files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    args: Args, message: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # a default folder (sweeps/, reproduce-*/) would appear here
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "user"
    home.mkdir()
    (home / "notes.txt").write_text("the user's own notes\n")
    out = home / "run"
    arguments = args(files, out)
    before = snapshot(home)
    folders = sorted(path for path in home.rglob("*") if path.is_dir())
    assert message in kdlab_error(capsys, *arguments)
    assert snapshot(home) == before  # nothing written, nothing removed
    assert sorted(path for path in home.rglob("*") if path.is_dir()) == folders  # no folder created
    assert sorted(path.name for path in tmp_path.iterdir()) == ["user"]


def test_the_table_covers_forty_cases() -> None:
    assert len(CASES) >= 40 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("count", "name", "data"),
    [
        (convnet_parameters, "convnet-4", {"width": 4, "num_classes": 10, "in_channels": 1}),
        (convnet_parameters, "convnet-7", {"width": 7, "num_classes": 13, "in_channels": 3}),
        (mlp_parameters, "mlp-16", {"hidden": 16, "num_classes": 10, "in_channels": 1, "image_size": 8}),
        (mlp_parameters, "mlp-5", {"hidden": 5, "num_classes": 3, "in_channels": 3, "image_size": 5}),
        (wrn_parameters, "wrn-10-1", {"depth": 10, "width": 1, "num_classes": 10, "in_channels": 1}),
        (wrn_parameters, "wrn-16-2", {"depth": 16, "width": 2, "num_classes": 100, "in_channels": 3}),
        (wrn_parameters, "wrn-22-3", {"depth": 22, "width": 3, "num_classes": 7, "in_channels": 3}),
    ],
)
def test_parameter_count_closed_forms_match_the_built_models(count, name: str, data: dict) -> None:
    # The closed form that refuses wrn-10000-1000 before allocating counts what the model holds.
    keywords = {key: value for key, value in data.items() if key not in ("width", "hidden", "depth")}
    expected = count_parameters(create_model(name, **keywords))
    assert count(**data) == expected
    assert {"convnet-4": 1702, "mlp-16": 1482, "wrn-16-2": 703284}.get(name, expected) == expected


def test_the_model_limit_is_2_to_the_31_parameters() -> None:
    # convnet-w holds 90 w^2 + ... parameters: the widest under 2^31 (2 classes, 1 channel) is 4884.
    assert convnet_parameters(4884, 2) < MAX_PARAMETERS < convnet_parameters(4885, 2)
    check_model_name("convnet-4884")
    with pytest.raises(UserError, match=r"model 'convnet-4885' would have 2.15e\+09 parameters"):
        check_model_name("convnet-4885")


@pytest.mark.parametrize(
    ("samples", "batch", "world", "message"),
    [
        (1437, 64, 1, None),  # last batch 29
        (1436, 4, 1, None),  # no last partial batch
        (1437, 4, 1, "the last training batch of each epoch would hold 1 of the 1437 training samples at batch "
                     "size 4: needs 2; choose e.g. --batch-size 5"),
        (1437, 3, 2, "would hold 1 of the 718 training samples per process at batch size 3: needs 2; choose e.g. "
                     "--batch-size 4"),  # 1437 // 2 = 718 per rank, 718 % 3 = 1
        (1437, 1, 1, "batch size 1 is too small: needs 2; choose e.g. --batch-size 3"),
        (10, 11, 1, "batch size 11 x 1 process(es) is larger than the 10 training images"),
    ],
)  # fmt: skip
def test_every_training_batch_is_checked_against_the_minimum(
    samples: int, batch: int, world: int, message: str | None
) -> None:
    if message is None:
        check_train_batches(samples, batch, world, [(2, "needs 2")])
        return
    with pytest.raises(UserError) as error:
        check_train_batches(samples, batch, world, [(2, "needs 2")])
    assert message in str(error.value)


def test_dist_declares_its_minimum_batch_and_the_config_checks_it() -> None:
    assert loss_spec("dist").min_batch == 2 and loss_spec("kl").min_batch == 1
    with pytest.raises(ValueError, match="min_batch=0 must be a whole number >= 1"):
        register_loss("bad-min-batch", label="X", min_batch=0)


def test_a_per_class_band_that_empties_a_class_is_refused_an_overall_one_records_it() -> None:
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 30)
    # The official counts keep n - int(round(n * 0.9, 2)) of each class: 20 - 18, 5 - int(4.5), 30 - 27.
    kept = select_indices(labels, parse_selection("samples:random:0-0.1"))
    assert torch.bincount(labels[kept]).tolist() == [2, 1, 3]
    # Ranked, they keep positions int(n * 0) to int(n * 0.1): none of the 5 of class 1.
    scores = {"entropy": torch.arange(len(labels), dtype=torch.float64)}
    with pytest.raises(UserError, match=r"keeps no sample of 1 class\(es\): 1 \(5 samples\)"):
        select_indices(labels, parse_selection("samples:entropy:0-0.1"), scores=scores)
    with pytest.raises(UserError) as error:
        select_indices(labels, parse_selection("samples:random:0-0.1"), count="floor")
    assert str(error.value) == (
        "data.select band 0-0.1 of samples keeps no sample of 1 class(es): 1 (5 samples); widen the band to at "
        "least 1/5 of a class, or rank all samples together with samples:random:0-0.1:overall"
    )
    kept = select_indices(
        labels, parse_selection("samples:random:0-0.2"), count="floor"
    )  # floor(5 * 0.2) = 1
    assert torch.bincount(labels[kept]).tolist() == [4, 1, 6]
    overall = select_indices(labels, parse_selection("samples:random:0-0.1:overall"), count="floor")
    assert len(overall) == 5  # floor(55 * 0.1): whichever classes they fall in
    overall = select_indices(labels, parse_selection("samples:random:0-0.1:overall"))
    assert len(overall) == 6  # 55 - int(round(55 * 0.9, 2)) = 55 - int(49.5)


@pytest.mark.parametrize(
    ("labels", "images", "classes", "message"),
    [
        (torch.tensor([0, 1, 12, 2]), torch.zeros(4, 3), 10,
         "the train split of test-bad-data has labels 0..12, but the dataset has 10 classes: labels are 0..9"),
        (torch.tensor([0.0, 1.5, 1.0, 0.0]), torch.zeros(4, 3), 2,
         "the train split of test-bad-data holds float32 labels [4] for 4 samples: a dataset gives one int64 label"),
        (torch.tensor([0, 1, 1, 0]), torch.tensor([[0.0], [1.0], [float("nan")], [2.0]]), 2,
         "the train split of test-bad-data holds NaN or inf inputs (the first in sample 2): clean or drop those"),
        (torch.tensor([0, 0, 0, 0]), torch.zeros(4, 3), 1,
         "dataset test-bad-data has num_classes=1: kdlab trains classifiers of 2 to 100000 classes"),
    ],
)  # fmt: skip
def test_a_dataset_factory_that_breaks_its_contract_is_refused(
    labels: torch.Tensor, images: torch.Tensor, classes: int, message: str
) -> None:
    # A plugin's dataset: kdlab's own readers check their files; this checks what any factory returns.
    from kdlab.data import DATASETS, load_dataset
    from kdlab.data.datasets import DatasetSplits, TensorData

    good = TensorData(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0]))
    DATASETS.register("test-bad-data")(
        lambda **_: DatasetSplits("test-bad-data", TensorData(images, labels), good, classes)
    )
    try:
        with pytest.raises(UserError) as error:
            load_dataset("test-bad-data")
    finally:
        DATASETS.unregister("test-bad-data")
    assert message in str(error.value)
