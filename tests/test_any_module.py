"""Models and data of your own (issue 15, item 2): any ``nn.Module`` returning logits, registered in
this file, trains and distils on tensor files through the real command line; penultimate features
come from a forward hook; hostile tensor files are one-line errors that write nothing.

The data: three Gaussian blobs in 20-D (600 samples, float32 ``.npz``), clearly separable, and a
token-id dataset (int64 ``[N, 12]``) whose class is the topic of most of a sample's tokens.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_engine import kdlab_error
from test_errors import snapshot
from torch import nn

from kdlab.analysis.analyze import collect_outputs
from kdlab.cli import main
from kdlab.data import load_dataset, make_loader
from kdlab.errors import UserError
from kdlab.losses import LOSSES, register_loss
from kdlab.models import MODELS, create_model
from kdlab.models.features import (
    FeatureTap,
    check_features,
    forward_with_features,
    last_linear,
    set_feature_layer,
)
from kdlab.runs import load_checkpoint
from kdlab.teacher import model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
FEATURES = 20  # blob dimensions
VOCABULARY, LENGTH = 30, 12  # token ids 0..29, 12 per sample


def mlp(widths: list[int]) -> Callable[..., nn.Module]:
    """A factory of a plain ``nn.Sequential`` MLP (no kdlab base class) sized from the data."""

    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        sizes = [math.prod(input_shape), *widths]
        for size_in, size_out in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(size_in, size_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))

    return build


class BagOfEmbeddings(nn.Module):
    """Token ids int64 ``[B, L]`` -> mean of their embeddings ``[B, 16]`` -> logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))


class NoLinear(nn.Module):
    """Logits from a 1x1 convolution of the features as channels: no nn.Linear anywhere."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.mix = nn.Conv1d(FEATURES, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x[:, :, None])[:, :, 0]


class SpareLayer(nn.Module):
    """A Linear model with a registered layer that its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.spare = nn.Linear(FEATURES, 3), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


REGISTERED = {
    "test-mlp-teacher": mlp([64, 64]),  # layers 0 Flatten, 1 Linear, 2 ReLU, 3 Linear, 4 ReLU, 5 Linear
    "test-mlp-student": mlp([16]),
    "test-bag": lambda num_classes: BagOfEmbeddings(num_classes),
    "test-no-linear": lambda num_classes: NoLinear(num_classes),
    "test-three-logits": lambda input_shape: nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 3)
    ),
    "test-not-a-module": lambda num_classes: [num_classes],
    "test-spare": SpareLayer,
}


@pytest.fixture(scope="module", autouse=True)
def registered_models():
    """The models of this file, registered as a user's import would, and removed afterwards."""
    for name, factory in REGISTERED.items():
        MODELS.register(name)(factory)
    yield
    for name in REGISTERED:
        MODELS.unregister(name)


def run_cli(*args: object) -> None:
    try:
        main([str(arg) for arg in args])
    except SystemExit as error:
        assert error.code in (0, None), error.code


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 samples of 3 Gaussian blobs in 20-D (unit noise, centres 4 apart on fixed axes)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, FEATURES))
    centres[0, 0], centres[1, 1], centres[2, 2] = 2.8, 2.8, 2.8  # pairwise distance ~4 noise widths
    labels = rng.permutation(np.arange(n) % 3)
    return (centres[labels] + rng.normal(size=(n, FEATURES))).astype(np.float32), labels.astype(np.int64)


def tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``[n, 12]``: 5 tokens of the class's topic (ids 5c..5c+4) among 7 noise tokens (15..29)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    topic = 5 * labels[:, None] + rng.integers(0, 5, size=(n, 5))
    noise = rng.integers(15, VOCABULARY, size=(n, LENGTH - 5))
    ids = rng.permuted(np.concatenate([topic, noise], axis=1), axis=1)
    return ids.astype(np.int64), labels.astype(np.int64)


def write_npz(folder: Path, **splits: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, arrays in splits.items():
        np.savez(folder / f"{split}.npz", **arrays)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("any-module")


@pytest.fixture(scope="module")
def blob_dir(root: Path) -> Path:
    (x_train, y_train), (x_test, y_test) = blobs(450, seed=0), blobs(150, seed=1)
    return write_npz(root / "blobs", train={"x": x_train, "y": y_train}, test={"x": x_test, "y": y_test})


def tensors_args(data_dir: Path, model: str, out: Path, epochs: int = 3) -> list[object]:
    return ["--dataset", "tensors", "--data-dir", data_dir, "--model", model, "--epochs", epochs,
            "--batch-size", 32, "--lr", 0.05, "--out", out, *QUIET]  # fmt: skip


@pytest.fixture(scope="module")
def runs(root: Path, blob_dir: Path) -> dict[str, Path]:
    """A Sequential teacher trained on the blobs, and Sequential students distilled from it by kl and mse."""
    teacher = root / "teacher"
    run_cli("train", *tensors_args(blob_dir, "test-mlp-teacher", teacher))
    students = {"teacher": teacher}
    for loss in ("kl", "mse"):
        students[loss] = root / loss
        run_cli(
            "distill",
            "--teacher",
            teacher,
            "--loss",
            loss,
            *tensors_args(blob_dir, "test-mlp-student", root / loss),
        )
    return students


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# --- any module, any tensors ---------------------------------------------------------------------------


def test_a_plain_sequential_teacher_and_students_train_and_distill(runs: dict[str, Path], blob_dir: Path):
    # The report: a Sequential teacher, then `kdlab distill` (was: 'Sequential' object has no
    # attribute 'num_classes', exit 1). Three blobs: chance is 33%; measured 95.3-96.0% after 3 epochs.
    for name, run in runs.items():
        assert summary(run)["test_acc_best"] > 90, name
    for loss in ("kl", "mse"):
        assert math.isfinite(summary(runs[loss])["logit_distance"])
    checkpoint = load_checkpoint(runs["teacher"] / "checkpoints" / "last.pt")
    assert (checkpoint["num_classes"], checkpoint["input_shape"]) == (3, [FEATURES])
    assert checkpoint["in_channels"] is None and checkpoint["image_size"] is None
    # The rebuilt model is the same plain Sequential, and `kdlab eval` reads the run's own data folder.
    model = model_from_checkpoint(runs["kl"]).eval()
    assert type(model) is nn.Sequential
    x_test, y_test = blobs(150, seed=1)
    with torch.no_grad():
        accuracy = 100 * (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    assert accuracy == pytest.approx(summary(runs["kl"])["test_acc_last"])
    run_cli("eval", runs["kl"])


def test_analyze_reads_penultimate_features_through_the_hook(runs: dict[str, Path], blob_dir: Path, capsys):
    out = runs["teacher"].parent / "analysis"
    run_cli("analyze", runs["kl"], runs["mse"], "--out", out)
    results = json.loads((out / "analysis.json").read_text())
    x_train = torch.from_numpy(blobs(450, seed=0)[0])
    for name in ("teacher", str(runs["kl"]), str(runs["mse"])):
        entry = results["runs"][name]
        # The default layer: the input of the last Linear, here the last ReLU's output, by hand.
        model = model_from_checkpoint(runs["teacher"] if name == "teacher" else name).eval()
        with torch.no_grad():
            hand = model[:-1](x_train).norm(dim=1)
        assert entry["penultimate_norm"]["mean"] == pytest.approx(hand.mean().item(), rel=1e-6), name
        assert "projection" in entry and "note" not in entry  # those features feed the last Linear
    assert (out / "penultimate_norm.png").is_file() and (out / "projection.png").is_file()


def test_token_ids_reach_an_embedding_model_unchanged(root: Path):
    (x_train, y_train), (x_test, y_test) = tokens(450, seed=0), tokens(150, seed=1)
    folder = write_npz(root / "tokens", train={"x": x_train, "y": y_train}, test={"x": x_test, "y": y_test})
    splits = load_dataset("tensors", folder)
    batch = next(iter(make_loader(splits, "train", 8, train=True, seed=0)))
    assert batch.inputs.dtype == torch.int64 and bool(
        (batch.inputs == torch.from_numpy(x_train)[batch.indices]).all()
    )
    assert (splits.in_channels, splits.image_size, splits.input_shape) == (None, None, (LENGTH,))
    run = root / "bag"
    run_cli("train", *tensors_args(folder, "test-bag", run, epochs=3), "--set", "optim.lr=0.5")
    assert summary(run)["test_acc_best"] > 80  # chance 33%; measured 100%


def test_the_hook_equals_forward_features_on_a_builtin_convnet():
    torch.manual_seed(0)
    model = create_model("convnet-4", 10, 1).eval()
    inputs = torch.randn(5, 1, 8, 8)
    assert last_linear(model)[0] == "classifier"
    tap = FeatureTap(model)
    with torch.no_grad(), tap.capture():
        logits = model(inputs)
    with torch.no_grad():
        assert torch.equal(tap.features(5), model.forward_features(inputs))
        assert torch.equal(logits, model.classifier(model.forward_features(inputs)))
        fast_logits, fast_features = forward_with_features(model, inputs)  # the fast path
        assert torch.equal(fast_features, tap.features(5)) and torch.equal(fast_logits, logits)


def test_a_named_layer_gives_its_output_and_the_projection_only_when_it_feeds_the_last_linear():
    torch.manual_seed(0)
    model = create_model("test-mlp-teacher", 3, input_shape=(FEATURES,)).eval()
    x_train, _ = blobs(64, seed=0)
    # A loader is any iterable of batches with .inputs.
    batches = [type("Batch", (), {"inputs": torch.from_numpy(x_train[i : i + 32])}) for i in (0, 32)]
    with torch.no_grad():
        hidden = model[:5](torch.from_numpy(x_train)).double()  # layer "4" (ReLU) feeds Linear "5"
        first = model[:2](torch.from_numpy(x_train)).double()  # layer "1": the first Linear's output
    set_feature_layer(model, "4")
    outputs = collect_outputs(model, batches)
    assert torch.equal(outputs.features, hidden) and torch.equal(outputs.weight, model[5].weight.double())
    set_feature_layer(model, "1")
    outputs = collect_outputs(model, batches)
    assert torch.equal(outputs.features, first) and outputs.weight is None
    assert outputs.note.startswith("no 3-class projection: the features (layer '1') do not feed")
    # No Linear and no features: logits only, and why.
    outputs = collect_outputs(create_model("test-no-linear", 3).eval(), batches)
    assert outputs.features is None and outputs.logits.shape == (64, 3)
    assert "has no nn.Linear submodule" in outputs.note


def test_feature_layer_errors_name_the_layer_and_the_fix():
    model = create_model("test-mlp-teacher", 3, input_shape=(FEATURES,))
    inputs = torch.randn(4, FEATURES)
    set_feature_layer(model, "body.3")
    with pytest.raises(
        UserError, match=r"^features='body.3' is not a layer of m: choose one of 0, 1, 2, 3, 4, 5$"
    ):
        check_features(model, inputs, "m")
    with pytest.raises(
        UserError, match=r"^m has no nn.Linear submodule, so kdlab cannot tell where its penultimate"
    ):
        check_features(create_model("test-no-linear", 3), inputs, "m")
    unused = SpareLayer()
    set_feature_layer(unused, "spare")
    with pytest.raises(UserError, match=r"^the output of layer 'spare' of m was never computed"):
        check_features(unused, inputs, "m")


def test_tensor_images_are_normalised_by_their_own_statistics_in_npz_and_pt(root: Path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(40) % 4
    npz = write_npz(root / "images-npz", train={"x": images, "y": labels, "classes": np.array(list("abcde"))},
                    test={"x": images[:8], "y": labels[:8]})  # fmt: skip
    pt = root / "images-pt"
    pt.mkdir()
    torch.save(
        {"x": torch.from_numpy(images), "y": torch.from_numpy(labels), "classes": list("abcde")},
        pt / "train.pt",
    )
    torch.save({"x": torch.from_numpy(images[:8]), "y": torch.from_numpy(labels[:8])}, pt / "test.pt")
    for folder in (npz, pt):
        splits = load_dataset("tensors", folder)
        hand_mean = [images[:, c].mean() / 255 for c in range(3)]
        hand_std = [images[:, c].std() / 255 for c in range(3)]
        assert splits.mean == pytest.approx(hand_mean, rel=1e-12) and splits.std == pytest.approx(
            hand_std, rel=1e-12
        )
        assert (splits.num_classes, splits.class_names, splits.in_channels, splits.image_size) == (
            5,
            list("abcde"),
            3,
            8,
        )
        assert splits.image_inputs and (splits.pad, splits.flip) == (1, False)
        batch = next(iter(make_loader(splits, "test", 8, train=False)))
        expected = (
            torch.from_numpy(images[:8]).float() / 255 - torch.tensor(hand_mean).view(1, 3, 1, 1).float()
        )
        expected = expected / torch.tensor(hand_std).view(1, 3, 1, 1).float()
        assert torch.allclose(batch.inputs, expected, atol=1e-5)


def test_subsets_validation_noise_selection_and_the_cache_work_on_tensors(
    runs: dict[str, Path], blob_dir: Path, tmp_path
):
    # The teacher holds out the student's 30 validation samples too: one that trained on them is refused
    # (kdlab.identity.check_teacher_data).
    teacher = tmp_path / "teacher"
    run_cli("train", *tensors_args(blob_dir, "test-mlp-teacher", teacher), "--subset", 300, "--val-split", 30)
    out = tmp_path / "kl-everything"
    run_cli("distill", "--teacher", teacher, "--loss", "kl",
            *tensors_args(blob_dir, "test-mlp-student", out, epochs=2), "--subset", 300, "--val-split", 30,
            "--label-noise", "symmetric:0.2", "--set", "data.select=samples:random:0-0.8:overall",
            "--set", "kd.cache=true", "--set", f"kd.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    result = summary(out)
    assert result["val_images"] == 30 and result["train_images"] == 216  # 80% of the 270 kept
    assert result["test_acc_best"] > 80
    assert json.loads((out / "selection.json").read_text())["kept"] == 216
    assert 0.1 < json.loads((out / "label_noise.json").read_text())["realised_rate"] < 0.3
    (cache,) = (tmp_path / "cache").glob("*.npy")
    assert np.load(cache, mmap_mode="r").shape == (216, 1, 3)  # one view per sample: not images


@pytest.fixture
def feature_loss():
    """A loss that reads both models' penultimate features (norm matching), registered for one test."""
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    @register_loss("test-normgap", label="NormGap", reads=("student_features", "teacher_features"))
    def norm_gap(student_logits, targets, *, student_features, teacher_features):
        shapes.append((tuple(student_features.shape), tuple(teacher_features.shape)))
        gap = student_features.norm(dim=1) - teacher_features.norm(dim=1)
        return {"ce": F.cross_entropy(student_logits, targets), "norm": gap.square().mean()}

    yield shapes
    LOSSES.unregister("test-normgap")


def test_a_feature_loss_reads_both_plain_modules_through_their_hooks(
    feature_loss, runs: dict[str, Path], blob_dir: Path, root: Path, capsys
):
    out = root / "normgap"
    distill = ["distill", "--teacher", runs["teacher"], "--loss", "test-normgap"]
    run_cli(*distill, *tensors_args(blob_dir, "test-mlp-student", out, epochs=1))
    # The default layers: the last Linear's inputs, 64 wide in the teacher, 16 in the student; every step.
    assert feature_loss and set(feature_loss) == {
        ((32, 16), (32, 64)),
        ((2, 16), (2, 64)),
    }  # 450 = 14 * 32 + 2
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text())["train_norm"])
    # A named layer: the output of the student's first Linear (layer "1"), recorded in the run.
    feature_loss.clear()
    run_cli(*distill, *tensors_args(blob_dir, "test-mlp-student", root / "normgap-1", epochs=1),
            "--set", "features=1")  # fmt: skip
    assert {student for student, _ in feature_loss} == {(32, 16), (2, 16)}
    assert load_checkpoint(root / "normgap-1" / "checkpoints" / "last.pt")["config"]["features"] == "1"
    # A student without a Linear and no features setting: refused before anything is written.
    line = kdlab_error(
        capsys, *distill, *tensors_args(blob_dir, "test-no-linear", root / "normgap-x", epochs=1)
    )
    assert line == (
        "--model test-no-linear has no nn.Linear submodule, so kdlab cannot tell where its penultimate features "
        "are: set features=LAYER to the layer whose output they are (one of mix)"
    )
    assert not (root / "normgap-x").exists()


# --- hostile tensor files through the command line -----------------------------------------------------


def _npy_header_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy file whose header claims ``shape`` float32 but that holds 8 bytes of data."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _pt_claiming_a_terabyte(folder: Path) -> None:
    """train.pt whose pickle says x's storage holds 4 * 10^12 bytes (the file holds 240)."""
    (folder / "train.npz").unlink()
    torch.save({"x": torch.zeros(3, 20), "y": torch.zeros(3, dtype=torch.int64)}, folder / "honest.pt")
    with zipfile.ZipFile(folder / "honest.pt") as honest, zipfile.ZipFile(folder / "train.pt", "w") as forged:
        for name in honest.namelist():
            data = honest.read(name)
            if name.endswith("data.pkl"):  # the storage size 60 (elements), as BININT1 'K<', becomes 10^12
                data = data.replace(b"K<t", b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00t", 1)
            forged.writestr(name, data)
    (folder / "honest.pt").unlink()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


GOOD_X, GOOD_Y = blobs(60, seed=3)
FRACTION_Y = GOOD_Y.astype(np.float64)
FRACTION_Y[2] = 1.5


def hostile(folder: Path, change: Callable[[Path], None]) -> Path:
    """A blob dataset (train and test .npz of 60 samples) with ``change`` applied."""
    if not folder.exists():
        write_npz(folder, train={"x": GOOD_X, "y": GOOD_Y}, test={"x": GOOD_X, "y": GOOD_Y})
        change(folder)
    return folder


def train_npz(**arrays) -> Callable[[Path], None]:
    return lambda folder: np.savez(folder / "train.npz", **arrays)


def nan_at_7(folder: Path) -> None:
    x = GOOD_X.copy()
    x[7, 3] = np.nan
    np.savez(folder / "train.npz", x=x, y=GOOD_Y)


# (case, change to the data folder, extra arguments, message). Each runs `kdlab train` on the result.
HOSTILE: list[tuple[str, Callable[[Path], None], list[object], str]] = [
    ("wrong-keys", train_npz(X=GOOD_X, y=GOOD_Y), [],
     "train.npz lacks x (it holds X, y): a tensor file holds x, y and optionally classes; save x [N, ...]"),
    ("unknown-key", train_npz(x=GOOD_X, y=GOOD_Y, weights=GOOD_Y), [], "train.npz holds unknown keys weights"),
    ("length-mismatch", train_npz(x=GOOD_X, y=GOOD_Y[:-1]), [],
     "train.npz holds 60 samples in x but 59 labels in y: give one label per sample"),
    ("labels-with-fractions", train_npz(x=GOOD_X, y=FRACTION_Y), [],
     "train.npz holds 1.5 (sample 2), not a class number: labels are integers 0..K-1"),
    ("negative-label", train_npz(x=GOOD_X, y=np.r_[GOOD_Y[:4], -1, GOOD_Y[5:]]), [],
     "train.npz holds the negative label -1 (sample 4): labels are 0..K-1"),
    ("label-far-beyond-the-samples", train_npz(x=GOOD_X, y=np.r_[GOOD_Y[:-1], 10**9]), [],
     "tensors: a label is 1000000000, but the splits hold 120 samples: labels are 0..K-1 for K classes"),
    ("nan-in-x", nan_at_7, [],
     "train.npz holds NaN, inf or values beyond float32's range (1 value(s), the first in sample 7): clean or drop"),
    ("float64-beyond-float32", train_npz(x=GOOD_X.astype(np.float64) * np.r_[1e300, np.ones(59)][:, None], y=GOOD_Y), [],
     "values beyond float32's range (20 value(s), the first in sample 0)"),
    ("empty-split", lambda f: np.savez(f / "test.npz", x=GOOD_X[:0], y=GOOD_Y[:0]), [],
     "test.npz holds no samples (x is [0, 20]): every split needs at least one"),
    ("header-claims-1e12-elements",
     lambda f: (np.save(f / "y.npy", GOOD_Y), _zip(f / "train.npz", {"x.npy": _npy_header_claiming((10**12, 20)),
                                                                     "y.npy": (f / "y.npy").read_bytes()})), [],
     "train.npz is truncated or corrupt (x claims float32 [1000000000000, 20], 80000000000000 bytes, but the "
     "archive holds 8): save it again with np.savez"),
    ("object-array", train_npz(x=np.array([GOOD_X[0], "text"], dtype=object), y=GOOD_Y[:2]), [],
     "train.npz: x is an array of Python objects, which kdlab never unpickles: save x and y as numeric arrays"),
    ("sample-shapes-differ", lambda f: np.savez(f / "test.npz", x=GOOD_X[:, :10], y=GOOD_Y), [],
     "test.npz holds samples of float32 [10], but "),
    ("not-a-zip", lambda f: (f / "train.npz").write_bytes(b"x,y\n1,2\n"), [],
     "train.npz is not a readable .npz archive (File is not a zip file)"),
    ("strings-as-x", train_npz(x=np.array([["a"] * 3] * 60), y=GOOD_Y), [],
     "strings-as-x/train.npz holds <U1 values: kdlab reads float, integer or bool arrays"),
    ("one-dimensional-x", train_npz(x=GOOD_X[:, 0], y=GOOD_Y), [],
     "is [60], not [N, ...] with sample i in x[i]: reshape one feature per sample to [N, 1]"),
    ("samples-of-no-values", train_npz(x=GOOD_X[:, :0], y=GOOD_Y), [],
     "samples-of-no-values/train.npz has samples of shape [0]: each sample needs at least one value"),
    ("one-class", lambda f: (np.savez(f / "train.npz", x=GOOD_X, y=0 * GOOD_Y),
                             np.savez(f / "test.npz", x=GOOD_X, y=0 * GOOD_Y)), [],
     "tensors: every label is 0: a classifier needs at least 2 classes"),
    ("no-test-file", lambda f: (f / "test.npz").unlink(), [], "has no test.npz or test.pt: pass --data-dir DIR"),
    ("npz-and-pt-both", lambda f: torch.save({"x": torch.zeros(2, 20), "y": torch.zeros(2)}, f / "train.pt"), [],
     "holds both train.npz and train.pt: keep one train file"),
    ("pt-with-code", lambda f: ((f / "train.npz").unlink(),
                                torch.save({"x": _Payload(f.parent / "pwned"), "y": torch.zeros(2)}, f / "train.pt")),
     [], "train.pt (it holds objects other than tensors and plain containers, which weights-only loading refuses)"),
    ("pt-expanded-view", lambda f: ((f / "train.npz").unlink(),
                                    torch.save({"x": torch.zeros(1, 1).expand(10**12, 20), "y": torch.zeros(2)},
                                               f / "train.pt")), [],
     "train.pt: x [1000000000000, 20] repeats its data (an expanded view of 4 bytes): save x.contiguous()"),
    ("pt-storage-claims-a-terabyte", _pt_claiming_a_terabyte, [],
     "train.pt (record size (240 bytes) does not match expected size (4000000000000 bytes"),
    ("pt-not-a-dict", lambda f: ((f / "train.npz").unlink(), torch.save([torch.zeros(2)], f / "train.pt")), [],
     "train.pt holds a list, not a dict of tensors"),
    ("crop-on-features", lambda f: None, ["--set", "data.augment=crop"],
     "data.augment=crop crops and flips uint8 images [N, C, H, W], but the samples of tensors are float32 [20]: "
     "use data.augment=none"),
    ("augmented-selection-on-features", lambda f: None, ["--set", "data.select=samples:entropy:0-0.5",
                                                          "--set", "data.select_pass=augmented", "--teacher-run"],
     "data.select_pass=augmented scores crop+flip views of images, but the samples of tensors are not uint8 images"),
    ("features-layer-missing", lambda f: None, ["--set", "features=body.3"],
     "features='body.3' is not a layer of --model test-mlp-student: choose one of 0, 1, 2, 3"),
    ("features-layer-never-runs", lambda f: None, ["--model", "test-spare", "--set", "features=spare"],
     "the output of layer 'spare' of --model test-spare was never computed: the layer does not run in the model's "
     "forward; set features= to a layer the forward uses"),
    ("model-ignores-num-classes", lambda f: None, ["--model", "test-three-logits", "--four-classes"],
     "--model test-three-logits returns float32 [4, 3] for 4 samples, not logits [4, 4]"),
    ("factory-returns-no-module", lambda f: None, ["--model", "test-not-a-module"],
     "the factory of model 'test-not-a-module' returned a list, not a torch.nn.Module: make it return the module"),
    ("no-data-dir", lambda f: None, ["--no-data-dir"], "tensors needs a data folder: pass --data-dir DIR"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "extra", "message"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_hostile_tensor_files_are_one_line_exit_2_and_write_nothing(
    root: Path,
    runs: dict[str, Path],
    blob_dir: Path,
    capsys,
    request,
    change,
    extra: list[object],
    message: str,
) -> None:
    case = request.node.callspec.id
    data_dir = hostile(root / "hostile" / case, change)
    if "--four-classes" in extra:  # labels 0..3, for a model that always returns 3 logits
        extra = [item for item in extra if item != "--four-classes"]
        four = np.arange(60) % 4
        write_npz(data_dir, train={"x": GOOD_X, "y": four}, test={"x": GOOD_X, "y": four})
    command = ["train"]
    if "--teacher-run" in extra:
        extra = [item for item in extra if item != "--teacher-run"]
        command = ["distill", "--teacher", runs["teacher"], "--loss", "kl"]
        data_dir = (
            blob_dir  # the teacher's own data: a teacher of other files is refused first (kdlab.identity)
        )
    out = root / "hostile-out" / case
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("the user's own notes\n")
    arguments = [*command, *tensors_args(data_dir, "test-mlp-student", out, epochs=1), *extra]
    if "--no-data-dir" in extra:
        arguments = [item for item in arguments if item not in ("--no-data-dir", "--data-dir", data_dir)]
    before = snapshot(out)
    assert message in kdlab_error(capsys, *arguments)
    assert snapshot(out) == before
    assert not (root / "hostile" / "pwned").exists()  # no payload ever ran
