"""Taking the student out: kdlab.load_student and `kdlab export` (safetensors, onnx, pt2, torchscript).

A convnet-4 and an mlp-16 are trained on digits once (module fixtures); every check compares what
comes out with the engine's own numbers (summary.json) or with the PyTorch module, and every bad
input goes through ``kdlab.cli.main``: exit 2, one line, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures_engine import kdlab_error, make_config

import kdlab
from kdlab.cli import main
from kdlab.data import load_dataset
from kdlab.errors import UserError
from kdlab.export import MANIFEST_NAME, NormalizedModel, load_student
from kdlab.runs import atomic_torch_save, file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _train(root: Path, model: str, epochs: int) -> Path:
    from kdlab.engine import train

    config = make_config(root / "run")
    config.model, config.optim.epochs = model, epochs
    train(config)
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A convnet-4 trained 2 epochs on digits (about 65% test accuracy)."""
    return _train(tmp_path_factory.mktemp("student"), "convnet-4", 2)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return _train(tmp_path_factory.mktemp("mlp"), "mlp-16", 1)


@pytest.fixture(scope="module")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split as a user has it: float images in [0, 1] ``[360, 1, 8, 8]``, labels."""
    test = load_dataset("digits").test
    return test.images.float() / 255, test.labels


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * int((model(images).argmax(dim=1) == labels).sum()) / len(labels)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def kdlab_ok(capsys: pytest.CaptureFixture[str], args: list) -> str:
    """Run ``kdlab ARGS``; it must succeed. Returns stdout."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    return captured.out


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: files by their bytes, links by their target, folders by name."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            entries[name] = "-> " + os.readlink(path)
        elif path.is_file():
            entries[name] = path.read_bytes()
        else:
            entries[name] = "folder"
    return entries


# --- load_student --------------------------------------------------------------------------------


def test_load_student_gives_the_engines_test_accuracy(run: Path, digits_test) -> None:
    images, labels = digits_test
    student = kdlab.load_student(run)
    assert isinstance(student, NormalizedModel) and not student.training
    digits = load_dataset("digits")
    assert student.mean.tolist() == torch.tensor(digits.mean).tolist()  # float32 of the train-set mean
    assert student.std.tolist() == torch.tensor(digits.std).tolist()
    assert student.info["input_shape"] == [1, 8, 8] and student.info["num_classes"] == 10
    # The whole test split in one batch, from [0, 1] images: exactly the accuracy the engine measured.
    assert accuracy(student, images, labels) == summary(run)["test_acc_last"]
    assert accuracy(load_student(run, checkpoint="best"), images, labels) == summary(run)["test_acc_best"]
    # The normalisation is inside: the raw module on (x - mean) / std gives the same logits.
    mean, std = digits.mean[0], digits.std[0]
    with torch.no_grad():
        assert torch.equal(student(images), student.model((images - mean) / std))
    with pytest.raises(TypeError, match="float images in"):
        student(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_mlp_student_loads_without_an_image_size(mlp_run: Path, digits_test) -> None:
    images, labels = digits_test
    student = load_student(mlp_run)
    assert student.model.image_size == 8  # from the checkpoint, not from an argument
    assert accuracy(student, images, labels) == summary(mlp_run)["test_acc_last"]


def test_a_checkpoint_without_normalisation_takes_it_from_its_dataset(
    run: Path, tmp_path: Path, digits_test
) -> None:
    """Checkpoints written before kdlab recorded mean/std: the dataset gives them (digits: computed)."""
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del checkpoint["mean"], checkpoint["std"]
    atomic_torch_save(checkpoint, tmp_path / "old.pt")
    images, _ = digits_test
    with torch.no_grad():
        assert torch.equal(load_student(tmp_path / "old.pt")(images), load_student(run)(images))


def test_no_normalisation_passes_inputs_unchanged() -> None:
    """Datasets without normalisation (e.g. token ids): empty mean/std, inputs of any dtype as given."""
    identity = NormalizedModel(torch.nn.Identity())
    tokens = torch.arange(6).view(2, 3)
    assert identity(tokens) is tokens
    assert identity.mean.shape == (0,) and identity.std.shape == (0,)
    assert NormalizedModel(torch.nn.Identity(), [0.5], [0.25])(torch.ones(1, 2, 1)).tolist() == [
        [[2.0], [2.0]]
    ]


# --- kdlab export ----------------------------------------------------------------------------------


def test_safetensors_round_trip_is_bitwise(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_test
) -> None:
    from safetensors import safe_open

    exported = tmp_path / "run"
    shutil.copytree(run, exported)
    out = kdlab_ok(capsys, ["export", exported])  # safetensors is the default format
    path = exported / "export" / "student.safetensors"
    assert f"to {path} (safetensors: convnet-4, 10 classes; inputs float [B, 1, 8, 8]" in out
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    source = exported / "checkpoints" / "last.pt"
    assert metadata["source_sha256"] == file_sha256(source)
    assert metadata["source_checkpoint"] == str(source)
    assert metadata["model_name"] == "convnet-4" and metadata["kdlab_version"] == kdlab.__version__
    assert json.loads(metadata["input_shape"]) == [1, 8, 8] and json.loads(metadata["dataset"]) == "digits"
    assert json.loads(metadata["mean"]) == list(load_dataset("digits").mean)
    original, loaded = load_student(exported), load_student(path)
    assert original.state_dict().keys() == loaded.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images, _ = digits_test
    with torch.no_grad():
        assert torch.equal(original(images), loaded(images))
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert manifest["files"]["student.safetensors"]["sha256"] == file_sha256(path)
    # The safetensors file is a source too: converted to pt2, the same logits.
    kdlab_ok(capsys, ["export", path, "--format", "pt2", "--out", tmp_path / "from-safetensors.pt2"])
    with torch.no_grad():
        assert torch.equal(
            torch.export.load(tmp_path / "from-safetensors.pt2").module()(images), loaded(images)
        )
    with pytest.raises(
        UserError,
        match="is an export in pt2 format, which kdlab does not read back: load it with torch.export",
    ):
        load_student(tmp_path / "from-safetensors.pt2")
    # Exporting again replaces kdlab's own file; best goes to its own name.
    kdlab_ok(capsys, ["export", exported])
    kdlab_ok(capsys, ["export", exported, "--checkpoint", "best"])
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == ["student-best.safetensors", "student.safetensors"]


def test_onnx_export_matches_pytorch(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_test
) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "models" / "digits.onnx"
    kdlab_ok(capsys, ["export", run, "--format", "onnx", "--out", path])
    model = onnx.load(str(path))
    (inputs,) = model.graph.input
    assert inputs.name == "inputs"
    assert [dim.dim_param or dim.dim_value for dim in inputs.type.tensor_type.shape.dim] == ["batch", 1, 8, 8]
    evaluator = ReferenceEvaluator(model)
    student = load_student(run)
    images, _ = digits_test
    for batch in (images[:1], images[:5]):  # a dynamic batch axis
        (logits,) = evaluator.run(None, {"inputs": batch.numpy()})
        with torch.no_grad():
            assert (torch.from_numpy(logits) - student(batch)).abs().max() < 1e-4
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert manifest["files"]["digits.onnx"]["format"] == "onnx"


def test_pt2_and_torchscript_give_the_same_logits(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_test
) -> None:
    exported = tmp_path / "run"
    shutil.copytree(run, exported)
    kdlab_ok(capsys, ["export", exported, "--format", "pt2"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export", str(exported), "--format", "torchscript"])
    (warning,) = capsys.readouterr().err.strip().splitlines()  # torch's FutureWarnings said once, by kdlab
    assert warning.startswith("kdlab: warning: torch 2.14 deprecates TorchScript")
    program = torch.export.load(exported / "export" / "student.pt2").module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(exported / "export" / "student.pt")
    student = load_student(exported)
    images, _ = digits_test
    with torch.no_grad():
        for batch in (images[:1], images[:7], images):
            assert torch.equal(program(batch), student(batch))
            assert torch.equal(scripted(batch), student(batch))


# --- bad input: exit 2, one line, nothing written --------------------------------------------------


def _copy(run: Path, tmp: Path, change: Callable[[Path], None] | None = None) -> Path:
    copy = tmp / "run"
    shutil.copytree(run, copy)
    if change is not None:
        change(copy)
    return copy


def _export_folder(tmp: Path) -> Path:
    folder = tmp / "models"
    folder.mkdir()
    return folder


def _users_file(tmp: Path) -> Path:
    path = _export_folder(tmp) / "student.onnx"
    path.write_bytes(b"the user's own model\n")
    return path


def _symlink(tmp: Path) -> Path:
    target = tmp / "elsewhere.safetensors"
    target.write_bytes(b"not kdlab's\n")
    link = _export_folder(tmp) / "student.safetensors"
    link.symlink_to(target)
    return link


def _linked_folder(tmp: Path) -> Path:
    real = _export_folder(tmp)
    (tmp / "link").symlink_to(real)
    return tmp / "link" / "student.safetensors"


def _users_manifest(tmp: Path) -> Path:
    folder = _export_folder(tmp)
    (folder / MANIFEST_NAME).write_text('{"my": "settings"}\n')
    return folder / "student.safetensors"


def _changed_export(run: Path, tmp: Path) -> Path:
    """A previous kdlab export the user has since edited."""
    out = tmp / "models" / "student.safetensors"
    with pytest.raises(SystemExit):
        main(["export", str(run), "--out", str(out)])
    out.write_bytes(out.read_bytes() + b"edited")
    return out


def _junk_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "last.pt").write_bytes(b"\0" * 512)


CASES = [
    ("unknown-format",
     lambda run, tmp: ([run, "--format", "onx"], run),
     "--format 'onx' is not an export format (did you mean onnx?): choose one of safetensors, onnx, pt2, torchscript"),
    ("unknown-checkpoint",
     lambda run, tmp: ([run, "--checkpoint", "worst"], run),
     "--checkpoint 'worst' is not a checkpoint of a run: choose last or best"),
    ("run-missing",
     lambda run, tmp: ([tmp / "nope"], tmp),
     "nope does not exist: pass a finished run folder or a checkpoint file"),
    ("run-not-finished",
     lambda run, tmp: ([(copy := _copy(run, tmp, lambda r: (r / "summary.json").unlink()))], copy),
     "is unfinished (no summary.json): finish it with `kdlab train ... --out"),
    ("corrupted-checkpoint",
     lambda run, tmp: ([(copy := _copy(run, tmp, _junk_checkpoint))], copy),
     "last.pt (not a PyTorch zip archive: truncated or corrupt): use another checkpoint"),
    ("checkpoint-file-without-out",
     lambda run, tmp: ([(copy := _copy(run, tmp)) / "checkpoints" / "last.pt"], copy),
     "last.pt needs --out: name the file to write, e.g. --out student.safetensors"),
    ("checkpoint-choice-on-a-file",
     lambda run, tmp: ([run / "checkpoints" / "last.pt", "--checkpoint", "best", "--out", tmp / "s.pt2",
                        "--format", "pt2"], tmp),
     "--checkpoint best chooses a checkpoint of a run folder, but"),
    ("out-suffix-of-another-format",
     lambda run, tmp: ([run, "--out", tmp / "student.onnx"], tmp),
     "student.onnx ends with .onnx, the extension of onnx files, but --format is safetensors: use --format onnx, or end --out with .safetensors"),
    ("out-is-a-symlink",
     lambda run, tmp: ([run, "--out", _symlink(tmp)], tmp),
     "student.safetensors is a symbolic link; kdlab writes exports as real files, never through a link"),
    ("out-folder-is-a-symlink",
     lambda run, tmp: ([run, "--out", _linked_folder(tmp)], tmp),
     "link is a symbolic link; kdlab writes exports only into real folders"),
    ("out-is-a-users-file",
     lambda run, tmp: ([run, "--format", "onnx", "--out", _users_file(tmp)], tmp),
     "student.onnx is a file kdlab did not write (not listed in"),
    ("out-is-a-folder",
     lambda run, tmp: ([run, "--out", _export_folder(tmp)], tmp),
     "models is a folder: name the file to write, e.g. --out "),
    ("out-is-empty",
     lambda run, tmp: ([run, "--out", ""], tmp),
     "--out is empty: name the file to write, e.g. --out student.safetensors"),
    ("out-folder-holds-a-users-manifest",
     lambda run, tmp: ([run, "--out", _users_manifest(tmp)], tmp),
     "kdlab-export.json is not kdlab's export manifest (no 'kdlab-export-v1' marker)"),
    ("out-changed-since-export",
     lambda run, tmp: ([run, "--out", _changed_export(run, tmp)], tmp),
     "student.safetensors was changed since kdlab exported it"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: Callable[[Path, Path], tuple[list, Path]],
    message: str,
) -> None:
    arguments, watched = args(run, tmp_path)
    before, run_before = snapshot(watched), snapshot(run)
    assert message in kdlab_error(capsys, "export", *arguments)
    assert snapshot(watched) == before
    assert snapshot(run) == run_before


def test_onnx_without_its_extra_names_the_extra(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: find_spec gives None
    before = snapshot(run)
    line = kdlab_error(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "s.onnx")
    assert line == "--format onnx needs the package(s) onnxscript: pip install 'kdlab[export]'"
    assert snapshot(run) == before and not any(tmp_path.iterdir())


def test_a_run_being_written_is_not_exported(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(run, tmp_path)
    holder = subprocess.Popen(  # another process holding the run's lock, as a kdlab writer does
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "os.write(fd, str(os.getpid()).encode()); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
         "time.sleep(60)", str(copy / ".kdlab-run.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(copy)
        line = kdlab_error(capsys, "export", copy)
        assert line == (
            f"run {copy} is being written by another kdlab process (pid {holder.pid}): wait for it to "
            "finish, then export"
        )
        assert snapshot(copy) == before
    finally:
        holder.kill()
        holder.wait()


def test_damaged_or_foreign_safetensors_are_refused(tmp_path: Path, run: Path) -> None:
    from safetensors.torch import save_file

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="damaged.safetensors .*: it is truncated or not a safetensors file"):
        load_student(damaged)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="is not a kdlab student export \\(no 'kdlab-student-v1'"):
        load_student(foreign)


@pytest.mark.parametrize("format", ["pt2", "onnx"])
def test_a_model_the_exporter_cannot_capture_is_one_line(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    format: str,
) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 0\nmore lines")

    monkeypatch.setattr(torch.export, "export", refuse)  # as for a model with data-dependent control flow
    line = kdlab_error(capsys, "export", run, "--format", format, "--out", tmp_path / f"s.{format}")
    assert line.startswith(f"convnet-4 cannot be exported to {format} (")
    assert line.endswith("): export --format safetensors instead")
    assert not any(tmp_path.iterdir())


def test_onnx_refuses_weights_over_its_file_limit(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdlab.export

    size = sum(t.numel() * t.element_size() for t in load_student(run).state_dict().values())
    monkeypatch.setattr(kdlab.export, "ONNX_LIMIT_BYTES", size - 1)
    line = kdlab_error(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "s.onnx")
    assert (
        "holds 0.0 GiB of weights, more than one ONNX file holds (2 GiB): export --format safetensors" in line
    )
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_without_an_input_size_exports_weights_only(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_test
) -> None:
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["image_size"] = None  # a convnet needs no size; tracing needs an example input
    checkpoint.pop("input_shape", None)  # as checkpoints written before input_shape was recorded
    atomic_torch_save(checkpoint, tmp_path / "sizeless.pt")
    line = kdlab_error(
        capsys, "export", tmp_path / "sizeless.pt", "--format", "pt2", "--out", tmp_path / "s.pt2"
    )
    assert line.endswith(
        "sizeless.pt does not record its input size (input_shape), which a pt2 export needs to run the model "
        "once: export --format safetensors instead"
    )
    kdlab_ok(capsys, ["export", tmp_path / "sizeless.pt", "--out", tmp_path / "s.safetensors"])
    images, _ = digits_test
    with torch.no_grad():
        assert torch.equal(load_student(tmp_path / "s.safetensors")(images), load_student(run)(images))


def test_a_checkpoint_without_normalisation_or_dataset_is_refused(tmp_path: Path) -> None:
    from fixtures_engine import random_teacher

    path = random_teacher(tmp_path / "bare.pt", in_channels=1)
    with pytest.raises(UserError, match="bare.pt records neither its input normalisation nor its dataset"):
        load_student(path)


def test_damaged_kdlab_metadata_is_refused(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    kdlab_ok(capsys, ["export", run, "--out", tmp_path / "good.safetensors"])
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    for change, message in [
        ({"input_shape": "[1, -8, 8]"}, "has damaged kdlab metadata (num_classes 10, in_channels 1, image_size 8, "
                                        "input_shape [1, -8, 8]): export it again"),
        ({"mean": "[0.3, 0.4]"}, "holds an invalid input normalisation (mean [0.3, 0.4], std"),
        ({"num_classes": "ten"}, "has damaged kdlab metadata (JSONDecodeError: "),
    ]:  # fmt: skip
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata | change)
        with pytest.raises(UserError) as error:
            load_student(tmp_path / "bad.safetensors")
        assert message in str(error.value)
