"""Taking a trained model out of kdlab: :func:`load_student` in Python, ``kdlab export`` to files.

The input convention, the same for every way out: what ``torchvision.transforms.ToTensor`` gives,
float images in [0, 1] of shape ``[B, C, H, W]`` (the training size: ``input_shape``), with the
dataset's normalisation ``(x - mean) / std`` done inside the model (:class:`NormalizedModel`).
A dataset without normalisation (empty ``mean``/``std``) passes its inputs through unchanged.
Outputs are logits ``[B, num_classes]``.

Formats of ``kdlab export`` (:data:`FORMATS`):

- ``safetensors``: the weights of the :class:`NormalizedModel` (``model.*``, ``mean``, ``std``) and,
  in the header's metadata, what rebuilding it needs (model name, classes, input shape, mean/std,
  dataset, kdlab version, the source checkpoint's sha256). ``load_student(FILE)`` reads it back.
- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch axis (input ``inputs``,
  output ``logits``); needs ``onnx`` and ``onnxscript`` (``pip install 'kdlab[export]'``). The
  legacy TorchScript-based exporter needs ``onnx`` too and is deprecated for removal in torch 2.14.
- ``pt2``: ``torch.export`` with a dynamic batch axis, saved with ``torch.export.save`` (load with
  ``torch.export.load(FILE).module()``): PyTorch's successor to TorchScript.
- ``torchscript``: ``torch.jit.trace`` + ``torch.jit.save``, for libtorch (C++) consumers; torch
  2.14 deprecates both (FutureWarning), so kdlab says so once and prefers ``pt2``.

Files are written as kdlab writes everything (docs/export.md): atomically, never through a link,
never over a file kdlab did not write. Each folder kdlab exports into holds a manifest,
``kdlab-export.json``, listing the files it wrote there with their sha256; an existing ``--out`` is
overwritten only when listed there with the same bytes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import UserError, did_you_mean, first_line, shown
from kdlab.plugins import import_plugins
from kdlab.runs import (
    RunFolder,
    _check_creatable,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    load_model_state,
    resolve_checkpoint,
)

STUDENT_FORMAT = "kdlab-student-v1"  # the safetensors metadata marker
MANIFEST_NAME = "kdlab-export.json"
MANIFEST_FORMAT = "kdlab-export-v1"
FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
CHECKPOINTS = ("last", "best")
# Packages a format needs beyond kdlab's own dependencies: the optional extra kdlab[export].
EXTRA_PACKAGES = {"onnx": ("onnx", "onnxscript")}
INPUT_CONVENTION = "float images in [0, 1] [B, C, H, W] (ToTensor output); normalised inside"
ONNX_LIMIT_BYTES = 2**31 - 2**24  # protobuf's 2 GiB per message, less room for the graph


class NormalizedModel(nn.Module):
    """A trained model with its input normalisation built in: ``model((x - mean) / std)``.

    ``x``: float ``[B, C, ...]``, images in [0, 1]; ``mean``/``std``: float32 buffers ``[C]`` (or
    ``[1]``, one value for every channel) broadcast along axis 1. Empty buffers mean no
    normalisation: ``x`` reaches ``model`` unchanged, whatever its dtype. ``info`` holds what kdlab
    knows of the model (``model_name``, ``num_classes``, ``input_shape`` ``[C, H, W]``, ``dataset``...).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        mean, std = list(mean or ()), list(std or ())
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std {len(std)}: give one per channel")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.normalizes = bool(mean)  # a Python bool: tracing and torch.export see a constant branch
        self.info: dict[str, Any] = dict(info or {})

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel (axis 1), as kdlab's loader computes the training inputs."""
        if not self.normalizes:
            return x
        if not x.is_floating_point():  # uint8 pixels would be normalised 255 times too large
            raise TypeError(
                f"the model takes float images in [0, 1], got {x.dtype}: pass images.float() / 255 "
                "(or torchvision's ToTensor output)"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, ...]`` inputs -> logits ``[B, num_classes]``."""
        return self.model(self.normalize(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """The penultimate features of a kdlab model (``model.forward_features``) of the inputs."""
        return self.model.forward_features(self.normalize(x))


# --- loading ---------------------------------------------------------------------------------


def load_student(
    source: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu"
) -> NormalizedModel:
    """The trained model of a kdlab run, in eval mode on ``device``, with its dataset's normalisation
    built in (:class:`NormalizedModel`; the raw module is ``.model``).

    ``source``: a finished run folder (``checkpoint`` ``"last"``, the default, or ``"best"``), a
    kdlab checkpoint file, or a ``.safetensors`` file written by ``kdlab export``. Feed it float
    images in [0, 1] ``[B, C, H, W]``; it returns logits ``[B, num_classes]``.
    """
    student = _load_file(_source_file(source, checkpoint))
    if isinstance(device, str):
        from kdlab.device import resolve_device

        device = resolve_device(device)
    return student.to(device).eval()


def _source_file(source: str | Path, checkpoint: str | None) -> Path:
    """The file to read for ``source``: a run folder's checkpoint (:func:`_checkpoint_path`), a
    checkpoint file, or a ``.safetensors`` export (exports in other formats are refused)."""
    path = _source_path(source)
    if path.suffix in (".onnx", ".pt2") and path.is_file():
        runtime = "onnxruntime" if path.suffix == ".onnx" else "torch.export.load(FILE).module()"
        raise UserError(
            f"{path} is an export in {path.suffix[1:]} format, which kdlab does not read back: load it with "
            f"{runtime}, or pass the run folder or its .safetensors export"
        )
    return _checkpoint_path(path, checkpoint)


def _load_file(path: Path) -> NormalizedModel:
    """A :class:`NormalizedModel` from a kdlab checkpoint or a ``.safetensors`` export."""
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    return _from_checkpoint(load_checkpoint(path), path)


def _checkpoint_path(source: str | Path, checkpoint: str | None = None) -> Path:
    """The checkpoint file to read: a finished run folder's ``checkpoints/{checkpoint}.pt`` (default
    last), or ``source`` itself when it is a file (then ``checkpoint`` must be None)."""
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise UserError(
            f"--checkpoint {shown(checkpoint)} is not a checkpoint of a run{did_you_mean(str(checkpoint), CHECKPOINTS)}: "
            "choose last or best"
        )
    path = _source_path(source)
    if not path.is_dir():
        if checkpoint is not None:
            raise UserError(
                f"--checkpoint {checkpoint} chooses a checkpoint of a run folder, but {path} is a file: "
                "pass the run folder, or drop --checkpoint"
            )
        return resolve_checkpoint(path)
    last = resolve_checkpoint(path)  # a run folder that finished: the same checks for best.pt
    if checkpoint in (None, "last"):
        return last
    best = RunFolder(path).best_checkpoint
    if not best.is_file():
        raise UserError(
            f"{path} holds no checkpoints/best.pt: use its last checkpoint (drop --checkpoint best)"
        )
    return best


def _source_path(source: str | Path) -> Path:
    if not str(source).strip():  # Path("") is ".": never read the working folder by accident
        raise UserError("the run to read is empty: name a run folder or a checkpoint file")
    return Path(source).expanduser()


def _from_checkpoint(checkpoint: dict[str, Any], path: Path) -> NormalizedModel:
    from kdlab.teacher import checkpoint_model

    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    model = checkpoint_model(checkpoint, path)  # imports the plugins the run recorded first
    mean, std = _normalization(checkpoint, path, config)
    image_size = checkpoint.get("image_size")
    image_size = image_size if isinstance(image_size, int) and not isinstance(image_size, bool) else None
    in_channels = checkpoint.get("in_channels")
    shape = checkpoint.get("input_shape")  # recorded since any-tensor data: [C, H, W], [20], [12], ...
    if shape is None and image_size and in_channels:
        shape = [in_channels, image_size, image_size]
    info = {
        "model_name": checkpoint["model_name"],
        "num_classes": checkpoint["num_classes"],
        "in_channels": in_channels,
        "image_size": image_size,
        "input_shape": list(shape) if shape is not None else None,
        "input_dtype": "int64" if checkpoint.get("input_dtype") == "int64" else "float32",
        "dataset": checkpoint.get("dataset") if isinstance(checkpoint.get("dataset"), str) else None,
        "imports": config["imports"] if isinstance(config.get("imports"), list) else [],
        "mean": mean,
        "std": std,
    }
    return NormalizedModel(model, mean, std, info)


def _normalization(
    checkpoint: dict[str, Any], path: Path, config: dict[str, Any]
) -> tuple[list[float], list[float]]:
    """The checkpoint's input mean and std (empty: none). Checkpoints written before kdlab recorded
    them: the dataset's own values, from the dataset (where the run found it)."""
    mean, std = checkpoint.get("mean"), checkpoint.get("std")
    if mean is None and std is None:
        name = checkpoint.get("dataset")
        if not isinstance(name, str):
            raise UserError(
                f"{path} records neither its input normalisation nor its dataset: use a checkpoint of a kdlab run"
            )
        from kdlab.data import load_dataset

        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        try:
            splits = load_dataset(name, data.get("data_dir"))
        except UserError as error:
            raise UserError(
                f"{path} predates kdlab recording the input normalisation in checkpoints, and its dataset "
                f"cannot be read to find it: {error}"
            ) from None
        mean, std = splits.mean, splits.std
    return _check_normalization(mean, std, path)


def _check_normalization(mean: object, std: object, source: Path) -> tuple[list[float], list[float]]:
    """Lists of finite floats of one length, every std > 0; a UserError naming ``source`` otherwise."""
    values = []
    for value in (mean, std):
        value = list(value) if isinstance(value, (list, tuple)) else None
        if value is None or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            value = None
        values.append(value)
    mean_list, std_list = values
    if (
        mean_list is None
        or std_list is None
        or len(mean_list) != len(std_list)
        or min(std_list, default=1) <= 0
    ):
        raise UserError(
            f"{source} holds an invalid input normalisation (mean {shown(mean)}, std {shown(std)}): the file "
            "is damaged; use another checkpoint or export it again"
        )
    return [float(v) for v in mean_list], [float(v) for v in std_list]


def _from_safetensors(path: Path) -> NormalizedModel:
    """A :class:`NormalizedModel` from a file of ``kdlab export --format safetensors``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises its own error type, and OSError, for a damaged file
        raise UserError(
            f"cannot read {path} ({first_line(error, 120)}): it is truncated or not a safetensors file; "
            "export it again"
        ) from None
    if metadata.get("format") != STUDENT_FORMAT:
        raise UserError(
            f"{path} is not a kdlab student export (no '{STUDENT_FORMAT}' in its metadata): pass a file "
            "written by kdlab export, a kdlab run folder or checkpoint"
        )
    info = _read_metadata(metadata, path)
    import_plugins(info["imports"])  # a model of the user's: its plugin registers it
    from kdlab.models import create_model

    try:
        shape = tuple(info["input_shape"]) if info["input_shape"] else None
        model = create_model(
            info["model_name"], info["num_classes"], info["in_channels"], info["image_size"], shape
        )
    except UserError as error:
        raise UserError(f"{path} names a model kdlab cannot build: {error}") from None
    student = NormalizedModel(model, info["mean"], info["std"], info)
    what = f"{info['model_name']} with {info['num_classes']} classes"
    load_model_state(student, tensors, path, what)
    return student


# The metadata (safetensors metadata is a str -> str mapping): format, model_name, kdlab_version,
# source_checkpoint, source_sha256 and input as text, these as JSON (checked when read back):
_JSON_KEYS = (
    "num_classes", "in_channels", "image_size", "input_shape", "input_dtype", "mean", "std", "dataset", "imports",
)  # fmt: skip


def _metadata(student: NormalizedModel, source: Path, source_sha256: str) -> dict[str, str]:
    import kdlab

    info = student.info
    text = {
        "format": STUDENT_FORMAT,
        "model_name": info["model_name"],
        "kdlab_version": kdlab.__version__,
        "source_checkpoint": str(source),
        "source_sha256": source_sha256,
        "input": INPUT_CONVENTION if info["mean"] else "inputs as the dataset gives them; no normalisation",
    }
    return text | {key: json.dumps(info[key]) for key in _JSON_KEYS}


def _read_metadata(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        info = {key: json.loads(metadata[key]) for key in _JSON_KEYS if key != "input_dtype"}
        info["input_dtype"] = (
            "int64" if json.loads(metadata.get("input_dtype", '"float32"')) == "int64" else "float32"
        )
        info["model_name"] = metadata["model_name"]
    except (KeyError, ValueError) as error:
        raise UserError(
            f"{path} has damaged kdlab metadata ({type(error).__name__}: {shown(str(error))}): export it again"
        ) from None

    def positive(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    shape, image_size = info["input_shape"], info["image_size"]
    if not (
        positive(info["num_classes"])
        and (info["in_channels"] is None or positive(info["in_channels"]))
        and (image_size is None or positive(image_size))
        and (shape is None or (isinstance(shape, list) and shape and all(map(positive, shape))))
    ):
        raise UserError(
            f"{path} has damaged kdlab metadata (num_classes {shown(info['num_classes'])}, in_channels "
            f"{shown(info['in_channels'])}, image_size {shown(image_size)}, input_shape {shown(shape)}): "
            "export it again"
        )
    info["mean"], info["std"] = _check_normalization(info["mean"], info["std"], path)
    if not isinstance(info["imports"], list):
        info["imports"] = []
    return info


# --- exporting -------------------------------------------------------------------------------


@dataclass
class Exported:
    """What :func:`export_student` wrote: ``path``, from ``source`` (a checkpoint), as ``format``."""

    path: Path
    source: Path
    format: str
    info: dict[str, Any]

    def describe(self) -> str:
        """One line for the command line."""
        info = self.info
        shape = info["input_shape"]
        inputs = (
            f"float [B, {', '.join(map(str, shape))}] in [0, 1], normalised inside"
            if shape and info["mean"]
            else "as the dataset gives them"
        )
        return (
            f"exported {self.source} to {self.path} ({self.format}: {info['model_name']}, "
            f"{info['num_classes']} classes; inputs {inputs})"
        )


def export_student(
    source: str | Path,
    format: str = "safetensors",
    out: str | Path | None = None,
    checkpoint: str | None = None,
) -> Exported:
    """Write the trained model of ``source`` (a finished run folder, a kdlab checkpoint file or a
    ``.safetensors`` export) to
    ``out`` as ``format`` (:data:`FORMATS`); default ``out``: ``RUN/export/student.EXT``
    (``student-best.EXT`` for ``checkpoint="best"``). Every input is checked before anything is written.
    """
    if format not in FORMATS:
        raise UserError(
            f"--format {shown(format)} is not an export format{did_you_mean(str(format), FORMATS)}: "
            f"choose one of {', '.join(FORMATS)}"
        )
    _require_packages(format)
    path = _source_file(source, checkpoint)
    run = _source_path(source)
    out = _out_path(run, out, format, checkpoint)
    if run.is_dir():
        holder = RunFolder(run).holder()
        if holder is not None:
            raise UserError(
                f"run {run} is being written by another kdlab process (pid {holder}): wait for it to finish, "
                "then export"
            )
    manifest = _check_out(out, "student" + FORMATS[format])
    student = _load_file(path).eval()
    source_sha256 = file_sha256(path)
    data = _EXPORTERS[format](student, path, source_sha256)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    _record(out, manifest, format, path, source_sha256)
    return Exported(out, path, format, student.info)


def _require_packages(format: str) -> None:
    missing = [name for name in EXTRA_PACKAGES.get(format, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"--format {format} needs the package(s) {', '.join(missing)}: pip install 'kdlab[export]'"
        )


def _out_path(run: Path, out: str | Path | None, format: str, checkpoint: str | None) -> Path:
    extension = FORMATS[format]
    if out is None:
        if not run.is_dir():
            raise UserError(
                f"exporting the checkpoint file {run} needs --out: name the file to write, e.g. --out student{extension}"
            )
        return run / "export" / (("student-best" if checkpoint == "best" else "student") + extension)
    if not str(out).strip():
        raise UserError(f"--out is empty: name the file to write, e.g. --out student{extension}")
    out = Path(out).expanduser()
    other = next((name for name, ext in FORMATS.items() if out.suffix == ext and name != format), None)
    if other is not None:
        raise UserError(
            f"--out {out} ends with {out.suffix}, the extension of {other} files, but --format is {format}: "
            f"use --format {other}, or end --out with {extension}"
        )
    return out


def _check_out(out: Path, example: str) -> dict[str, Any]:
    """Refuse an ``out`` kdlab may not write (a link, a folder, a file of the user's, a folder it
    cannot create); writes nothing. Returns the folder's manifest entries (``{}`` when none).
    ``example`` is the file name the message for a folder suggests."""
    if out.is_symlink():
        raise UserError(
            f"--out {out} is a symbolic link; kdlab writes exports as real files, never through a link: "
            "remove the link or choose another --out"
        )
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name the file to write, e.g. --out {out / example}")
    if out.name == MANIFEST_NAME:
        raise UserError(f"--out {out} is the name of kdlab's export manifest: choose another file name")
    folder = out.parent
    if folder.is_symlink():
        raise UserError(
            f"--out {out}: its folder {folder} is a symbolic link; kdlab writes exports only into real folders, "
            "so that it never writes elsewhere: pass the real path, or remove the link"
        )
    if not folder.exists():
        _check_creatable(folder)
        return {}
    if not folder.is_dir():
        raise UserError(f"--out {out} cannot be created: {folder} is not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out} cannot be written: {folder} is not writable; choose a folder you can write"
        )
    manifest = _read_manifest(folder)
    if out.exists():
        if not out.is_file():
            raise UserError(f"--out {out} is not a regular file: name a file to write")
        entry = manifest.get(out.name)
        if not isinstance(entry, dict):
            raise UserError(
                f"--out {out} is a file kdlab did not write (not listed in {folder / MANIFEST_NAME}), and kdlab "
                "overwrites only its own exports: choose another --out, or move the file away"
            )
        if entry.get("sha256") != file_sha256(out):
            raise UserError(
                f"--out {out} was changed since kdlab exported it (its sha256 differs from the one in "
                f"{folder / MANIFEST_NAME}), so kdlab keeps it: choose another --out, or move the file away"
            )
    return manifest


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The ``files`` of ``folder/kdlab-export.json``; a UserError when that name holds anything
    but kdlab's manifest (a file of the user's, a link, a folder)."""
    path = folder / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return {}
    manifest = None
    if path.is_file() and not path.is_symlink() and path.stat().st_size <= 1 << 20:
        try:
            manifest = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            manifest = None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise UserError(
            f"{path} is not kdlab's export manifest (no '{MANIFEST_FORMAT}' marker), and kdlab overwrites only "
            "its own files: move it away, or choose another --out folder"
        )
    return manifest["files"]


def _record(out: Path, manifest: dict[str, Any], format: str, source: Path, source_sha256: str) -> None:
    """Add ``out`` to its folder's manifest (dropping entries whose files are gone)."""
    import kdlab

    folder = out.parent
    files = {name: entry for name, entry in manifest.items() if (folder / name).is_file()}
    files[out.name] = {
        "sha256": file_sha256(out),
        "format": format,
        "source_checkpoint": str(source),
        "source_sha256": source_sha256,
        "kdlab": kdlab.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(folder / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "files": files})


def _example_input(student: NormalizedModel, source: Path, format: str) -> Tensor:
    """Two random inputs of the training shape: what tracing and torch.export run the model on
    (two, not one: torch.export specialises a batch of 1)."""
    shape = student.info.get("input_shape")
    if not shape:
        raise UserError(
            f"{source} does not record its input size (input_shape), which a {format} export needs to run "
            "the model once: export --format safetensors instead"
        )
    if student.info.get("input_dtype") == "int64":  # token ids: any valid index will do
        return torch.zeros(2, *shape, dtype=torch.int64)
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))


def _exporter_failed(format: str, student: NormalizedModel, error: Exception) -> UserError:
    return UserError(
        f"{student.info['model_name']} cannot be exported to {format} ({type(error).__name__}: "
        f"{first_line(error, 160)}): export --format safetensors instead"
    )


def _safetensors_bytes(student: NormalizedModel, source: Path, source_sha256: str) -> bytes:
    from safetensors.torch import save

    # Own contiguous copies: safetensors refuses tensors that share memory or have odd strides.
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in student.state_dict().items()}
    return save(tensors, metadata=_metadata(student, source, source_sha256))


def _onnx_bytes(student: NormalizedModel, source: Path, source_sha256: str) -> bytes:
    size = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    if size > ONNX_LIMIT_BYTES:
        raise UserError(
            f"{source} holds {size / 2**30:.1f} GiB of weights, more than one ONNX file holds (2 GiB): "
            "export --format safetensors or pt2 instead"
        )
    sample = _example_input(student, source, "onnx")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            student,
            (sample,),
            dynamo=True,
            input_names=["inputs"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        return program.model_proto.SerializeToString()
    except Exception as error:  # the exporter raises many types for a model it cannot convert
        raise _exporter_failed("onnx", student, error) from None


def _pt2_bytes(student: NormalizedModel, source: Path, source_sha256: str) -> bytes:
    sample = _example_input(student, source, "pt2")
    batch = torch.export.Dim("batch", min=1)
    buffer = io.BytesIO()
    try:
        program = torch.export.export(student, (sample,), dynamic_shapes=({0: batch},))
        torch.export.save(program, buffer)
    except Exception as error:  # torch.export raises many types for a model it cannot capture
        raise _exporter_failed("pt2", student, error) from None
    return buffer.getvalue()


def _torchscript_bytes(student: NormalizedModel, source: Path, source_sha256: str) -> bytes:
    sample = _example_input(student, source, "torchscript")
    print(
        "kdlab: warning: torch 2.14 deprecates TorchScript (torch.jit.trace/save); --format pt2 "
        "(torch.export) is its successor",
        file=sys.stderr,
    )
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation kdlab just stated once
            traced = torch.jit.trace(student, sample)
            torch.jit.save(traced, buffer)
    except Exception as error:  # tracing raises many types for a model it cannot record
        raise _exporter_failed("torchscript", student, error) from None
    return buffer.getvalue()


_EXPORTERS: dict[str, Callable[[NormalizedModel, Path, str], bytes]] = {
    "safetensors": _safetensors_bytes,
    "onnx": _onnx_bytes,
    "pt2": _pt2_bytes,
    "torchscript": _torchscript_bytes,
}
