"""Teachers: models rebuilt from run folders or checkpoints, frozen, and averaged when several.

A teacher spec is a kdlab run folder, a kdlab checkpoint file, or foreign torchvision weights:
``torchvision:NAME=PATH`` (a torchvision state dict, e.g. ``resnet152-f82ba261.pth``) or
``torchvision:NAME`` (the one file ``NAME-*.pth`` in torch hub's cache,
``~/.cache/torch/hub/checkpoints`` or ``$TORCH_HOME/hub/checkpoints``). kdlab never downloads
weights: fetch them once yourself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import teacher_specs
from kdlab.errors import UserError, did_you_mean, first_line, shown
from kdlab.models import Classifier, check_logits, create_model
from kdlab.models.features import set_feature_layer
from kdlab.runs import load_checkpoint, load_model_state, open_regular, resolve_checkpoint, unreadable_reason

FOREIGN_PREFIX = "torchvision:"


def model_from_checkpoint(spec: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a kdlab run folder (its last.pt) or checkpoint file; a UserError
    naming the first key whose shape differs when the weights do not fit the model it names.

    The model is built as its run built it (class count, and the data's ``in_channels``,
    ``image_size`` and ``input_shape`` where recorded) and remembers its run's ``features`` setting
    (:func:`kdlab.models.features.set_feature_layer`)."""
    return _load_checkpoint_model(spec, map_location)[0]


def _load_checkpoint_model(
    spec: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, int]:
    """``(model, num_classes)`` of a kdlab run folder or checkpoint (see :func:`model_from_checkpoint`)."""
    path = resolve_checkpoint(spec)
    checkpoint = load_checkpoint(path, map_location)
    return checkpoint_model(checkpoint, path), checkpoint["num_classes"]


def checkpoint_model(checkpoint: dict[str, Any], path: str | Path) -> nn.Module:
    """The model a loaded kdlab checkpoint (:func:`kdlab.runs.load_checkpoint`) names, holding its
    weights; ``path`` names the file in errors. A model of the user's is registered by its plugin,
    which the checkpoint's config names (``imports``, see kdlab.plugins): imported first. The model
    remembers its run's ``features`` setting (:func:`kdlab.models.features.set_feature_layer`)."""
    stored = checkpoint.get("config")
    imports = stored.get("imports") if isinstance(stored, dict) else None
    if imports:
        from kdlab.plugins import import_plugins

        import_plugins(imports if isinstance(imports, list) else [imports])
    name, num_classes = checkpoint["model_name"], checkpoint["num_classes"]
    config = checkpoint.get("config")
    features = config.get("features") if isinstance(config, dict) else None
    if features is not None and not isinstance(features, str):
        raise UserError(f"{path} records features={shown(features)}, not a layer name: the file is damaged")
    shape = checkpoint.get("input_shape")
    try:
        model = create_model(
            name,
            num_classes,
            checkpoint.get("in_channels"),
            checkpoint.get("image_size"),
            tuple(shape) if shape is not None else None,
        )
    except UserError as error:
        raise UserError(f"{path} names a model kdlab cannot build: {error}") from None
    load_model_state(model, checkpoint["model"], path, f"{name} with {num_classes} classes")
    set_feature_layer(model, features)
    return model


def torch_hub_weights(model_name: str) -> Path:
    """The single cached torchvision weights file ``NAME-<hash>.pth`` in torch hub's checkpoints folder."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{model_name}-*.pth"))
    fetch = (
        f'kdlab never downloads weights: fetch them once with python -c "import torchvision; '
        f"torchvision.models.get_model('{model_name}', weights='DEFAULT')\", or pass "
        f"--teacher {FOREIGN_PREFIX}{model_name}=PATH"
    )
    if not found:
        raise UserError(f"no cached torchvision weights {model_name}-*.pth in {folder}; {fetch}")
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise UserError(
            f"{folder} holds several {model_name} weights ({names}): choose one with "
            f"--teacher {FOREIGN_PREFIX}{model_name}=PATH"
        )
    return found[0]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat ``{key: tensor}`` from a weights-only file; unwraps ``{"state_dict": ...}``/``{"model": ...}``
    and DDP's ``module.`` prefix."""
    if not path.exists():
        raise UserError(f"weights file {path} does not exist: check the path after '='")
    with open_regular(path, fix="pass the weights file itself") as handle:
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged or unsafe file
            raise UserError(
                f"cannot read weights {path} ({unreadable_reason(handle, error)}): fetch them again"
            ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"{path} is not a state dict (a mapping of names to tensors): pass torchvision weights"
        )
    return {str(key).removeprefix("module."): value for key, value in state.items()}


def load_foreign_weights(model_name: str, path: str | Path | None = None) -> Classifier:
    """kdlab's ``model_name`` (a torchvision ImageNet name) holding torchvision weights from ``path``
    (default: :func:`torch_hub_weights`).

    Our wrapper keeps torchvision's modules under ``body.`` and moves its final linear layer (``fc``
    for ResNets, ``classifier.1`` for MobileNetV2, ...) to ``classifier``: key ``K`` becomes
    ``body.K``, and the two keys left over (``HEAD.weight [K, D]``, ``HEAD.bias [K]``) become
    ``classifier.*``. The class count K and input channels are read from the weights.
    """
    from kdlab.models.imagenet import TORCHVISION_NAMES

    if model_name not in TORCHVISION_NAMES:
        raise UserError(
            f"'{model_name}' is not a torchvision model kdlab wraps{did_you_mean(model_name, TORCHVISION_NAMES)}: "
            f"choose one of {', '.join(TORCHVISION_NAMES)}"
        )
    path = Path(path).expanduser() if path is not None else torch_hub_weights(model_name)
    state = _read_state_dict(path)
    model = create_model(model_name, num_classes=1000)
    body_keys = [key.removeprefix("body.") for key in model.state_dict() if key.startswith("body.")]
    head_keys = sorted(set(state) - set(body_keys))
    heads = {key.rpartition(".")[0] for key in head_keys}
    missing = [key for key in body_keys if key not in state]
    if missing or len(heads) != 1 or {key.rpartition(".")[2] for key in head_keys} != {"bias", "weight"}:
        shown = ", ".join((missing or head_keys)[:3])
        raise UserError(
            f"{path} does not hold torchvision {model_name} weights ({'missing' if missing else 'unexpected'} "
            f"keys {shown}...): pass weights of {model_name}, or name the right model"
        )
    head = heads.pop()
    num_classes = state[f"{head}.weight"].shape[0]
    in_channels = next(state[key].shape[1] for key in body_keys if state[key].ndim == 4)
    if (num_classes, in_channels) != (1000, 3):
        model = create_model(model_name, num_classes=num_classes, in_channels=in_channels)
    remapped = {f"body.{key}": state[key] for key in body_keys}
    remapped |= {f"classifier.{part}": state[f"{head}.{part}"] for part in ("weight", "bias")}
    try:
        model.load_state_dict(remapped)
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), "")
        raise UserError(
            f"{path} does not fit torchvision {model_name} ({detail[:160]}): pass weights of {model_name}"
        ) from None
    return model


def teacher_member(spec: str | Path) -> tuple[nn.Module, int]:
    """One teacher from a spec (see the module docstring), in train mode on the CPU, with the number
    of classes it predicts (recorded in its checkpoint, or read from torchvision weights)."""
    text = str(spec)
    if text.startswith(FOREIGN_PREFIX):
        model_name, _, path = text.removeprefix(FOREIGN_PREFIX).partition("=")
        model = load_foreign_weights(model_name, path or None)
        return model, model.num_classes
    return _load_checkpoint_model(spec)


class EnsembleTeacher(nn.Module):
    """The mean (default) or the sum of several teachers' logits.

    The official code sums them; that scales the logits by the number of members, which changes the
    MSE target and, for KL, acts like dividing tau by it. ``reduction="sum"`` reproduces it.
    """

    def __init__(
        self, members: Sequence[nn.Module], reduction: str = "mean", num_classes: int | None = None
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise UserError(f"ensemble reduction {reduction!r} is invalid: choose mean or sum")
        self.members = nn.ModuleList(members)
        self.num_classes = (
            num_classes if num_classes is not None else getattr(members[0], "num_classes", None)
        )
        self.reduction = reduction

    def extra_repr(self) -> str:  # in the repr, hence in the logit cache's key (kdlab.cache)
        return f"reduction={self.reduction}"

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.stack([member(x) for member in self.members])
        return logits.sum(dim=0) if self.reduction == "sum" else logits.mean(dim=0)


def load_teacher(
    spec: str | Path | Sequence[str | Path],
    device: torch.device,
    ensemble: str = "mean",
    num_classes: int | None = None,
    dataset: str | None = None,
) -> nn.Module:
    """A frozen teacher in eval mode on ``device``; a list of specs gives an ``EnsembleTeacher`` combining
    its members' logits by ``ensemble`` (mean or sum). With ``num_classes``, a UserError unless the
    teacher predicts that many classes (those of ``dataset``), checked before it runs."""
    loaded = [teacher_member(item) for item in teacher_specs(spec)]
    members = [member for member, _ in loaded]
    counts = {classes for _, classes in loaded}
    if len(counts) > 1:
        raise UserError(
            f"ensemble teachers disagree on the number of classes ({sorted(counts)}): use teachers of one dataset"
        )
    predicted = counts.pop()
    if num_classes is not None and predicted != num_classes:
        raise UserError(
            f"the teacher predicts {predicted} classes but {dataset} has {num_classes}: use a teacher trained "
            f"on {dataset}"
        )
    teacher = members[0] if len(members) == 1 else EnsembleTeacher(members, ensemble, predicted)
    return teacher.to(device).eval().requires_grad_(False)


def member_file(spec: str | Path) -> Path:
    """The file one teacher spec reads: a run folder's ``checkpoints/last.pt``, a checkpoint file, or
    torchvision weights (the path after '=', else the cached ``NAME-*.pth``)."""
    text = str(spec)
    if text.startswith(FOREIGN_PREFIX):
        model_name, _, path = text.removeprefix(FOREIGN_PREFIX).partition("=")
        return Path(path).expanduser() if path else torch_hub_weights(model_name)
    return resolve_checkpoint(text)


def teacher_files(value: str | Path | Sequence[str | Path] | None) -> list[str]:
    """The files or run folders a teacher setting reads (torchvision weights: the path after '=')."""
    files = []
    for spec in teacher_specs(value):
        path = spec.partition("=")[2] if spec.startswith(FOREIGN_PREFIX) else spec
        if path:
            files.append(path)
    return files


def check_teacher(
    teacher: nn.Module, specs: object, inputs: Tensor, dataset: str, num_classes: int | None = None
) -> None:
    """Run the teacher once on a batch of the data before training: a UserError if it cannot take
    the inputs, does not return logits ``[B, num_classes]`` (when given), or if its logits (or an
    ensemble member's) are NaN or inf, naming that teacher."""
    members = list(teacher.members) if isinstance(teacher, EnsembleTeacher) else [teacher]
    names = teacher_specs(specs)  # type: ignore[arg-type]
    kind = "images" if inputs.dim() == 4 else "inputs"
    for member, name in zip(members, names, strict=True):
        try:
            with torch.inference_mode():
                logits = member(inputs)
        except UserError:
            raise
        except Exception as error:  # any module's forward: a user model may raise any type
            raise UserError(
                f"teacher {name} cannot take the {kind} of {dataset} ({list(inputs.shape[1:])}): {first_line(error)}; "
                f"use a teacher trained on {dataset}"
            ) from None
        if num_classes is not None:
            check_logits(logits, len(inputs), num_classes, f"teacher {name}")
        if not torch.isfinite(logits).all():
            raise UserError(
                f"teacher {name} outputs NaN or inf logits on {dataset}: its weights are damaged (a run that "
                "diverged?); use another teacher checkpoint"
            )


TEACHER_DATA_KEYS = ("name", "data_dir", "image_size")  # what a student takes from its teacher's run


def teacher_data(specs: object) -> tuple[str, dict[str, Any]] | None:
    """``(spec, {name, data_dir, image_size})`` of the data the teacher (an ensemble's members must
    agree) was trained on, from its checkpoint's config; None for weights kdlab did not train
    (torchvision weights) or checkpoints that do not record it."""
    found: tuple[str, dict[str, Any]] | None = None
    for spec in teacher_specs(specs):  # type: ignore[arg-type]
        if spec.startswith(FOREIGN_PREFIX):
            continue
        checkpoint = load_checkpoint(resolve_checkpoint(spec))
        stored = checkpoint.get("config")
        data = stored.get("data") if isinstance(stored, dict) else None
        if not isinstance(data, dict):
            data = {"name": checkpoint.get("dataset"), "image_size": checkpoint.get("image_size")}
        values = {key: data.get(key) for key in TEACHER_DATA_KEYS}
        if values["name"] is None:  # a checkpoint that does not say what it learnt: nothing to take
            continue
        if found is not None and (found[1]["name"], found[1]["image_size"]) != (
            values["name"],
            values["image_size"],
        ):
            raise UserError(
                f"ensemble teachers {found[0]} and {spec} were trained on different data ({found[1]['name']} vs "
                f"{values['name']}): use teachers of one dataset"
            )
        found = found or (spec, values)
    return found


DATA_FLAGS = {"name": "--dataset", "image_size": "data.image_size"}  # how the command line names them


def with_teacher_data(document: dict[str, Any], flags: dict[str, str] | None = None) -> dict[str, Any]:
    """A config document whose ``data`` takes the dataset, its folder and its image size from the
    teacher's run unless it names them; a dataset or image size other than the teacher's is a UserError
    naming both (a student distils on the data its teacher learnt)."""
    kd = document.get("kd") if isinstance(document.get("kd"), dict) else {}
    found = teacher_data(kd.get("teacher")) if kd.get("teacher") else None
    if found is None:
        return document
    spec, values = found
    data = dict(document.get("data") or {}) if isinstance(document.get("data"), dict) else {}
    for key in TEACHER_DATA_KEYS:
        if values[key] is None:
            continue
        if data.get(key) is None:
            data[key] = values[key]
        elif key != "data_dir" and str(data[key]).casefold() != str(values[key]).casefold():
            flag = (flags or DATA_FLAGS)[key]
            raise UserError(
                f"{flag} {data[key]} differs from teacher {spec}'s {values[key]}: drop {flag} (a student takes its "
                f"teacher's), or use a teacher trained on {data[key]}"
            )
    return {**document, "data": data}
