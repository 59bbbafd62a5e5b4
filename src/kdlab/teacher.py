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

import torch
from torch import Tensor, nn

from kdlab.errors import UserError, did_you_mean, first_line
from kdlab.models import Classifier, create_model
from kdlab.runs import load_checkpoint, load_model_state, open_regular, resolve_checkpoint, unreadable_reason

FOREIGN_PREFIX = "torchvision:"


def teacher_specs(value: str | Path | Sequence[str | Path] | None) -> list[str]:
    """A teacher setting as a list of specs: None or empty -> ``[]``, one spec -> ``[spec]``, a list
    (an ensemble) -> its specs. The one place where ``kd.teacher``'s two forms are told apart."""
    if not value:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    return [str(item) for item in items]


def model_from_checkpoint(spec: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a kdlab run folder (its last.pt) or checkpoint file; a UserError
    naming the first key whose shape differs when the weights do not fit the model it names."""
    path = resolve_checkpoint(spec)
    checkpoint = load_checkpoint(path, map_location)
    name, num_classes = checkpoint["model_name"], checkpoint["num_classes"]
    image_size = checkpoint.get("image_size")
    try:
        model = create_model(
            name, num_classes, checkpoint["in_channels"], image_size if isinstance(image_size, int) else None
        )
    except UserError as error:
        raise UserError(f"{path} names a model kdlab cannot build: {error}") from None
    load_model_state(model, checkpoint["model"], path, f"{name} with {num_classes} classes")
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


def teacher_member(spec: str | Path) -> nn.Module:
    """One teacher from a spec (see the module docstring), in train mode on the CPU."""
    text = str(spec)
    if text.startswith(FOREIGN_PREFIX):
        model_name, _, path = text.removeprefix(FOREIGN_PREFIX).partition("=")
        return load_foreign_weights(model_name, path or None)
    return model_from_checkpoint(spec)


class EnsembleTeacher(nn.Module):
    """The mean (default) or the sum of several teachers' logits.

    The official code sums them; that scales the logits by the number of members, which changes the
    MSE target and, for KL, acts like dividing tau by it. ``reduction="sum"`` reproduces it.
    """

    def __init__(self, members: Sequence[nn.Module], reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise UserError(f"ensemble reduction {reduction!r} is invalid: choose mean or sum")
        self.members = nn.ModuleList(members)
        self.num_classes = members[0].num_classes
        self.reduction = reduction

    def extra_repr(self) -> str:  # in the repr, hence in the logit cache's key (kdlab.cache)
        return f"reduction={self.reduction}"

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.stack([member(x) for member in self.members])
        return logits.sum(dim=0) if self.reduction == "sum" else logits.mean(dim=0)


def load_teacher(
    spec: str | Path | Sequence[str | Path], device: torch.device, ensemble: str = "mean"
) -> nn.Module:
    """A frozen teacher in eval mode on ``device``; a list of specs gives an ``EnsembleTeacher`` combining
    its members' logits by ``ensemble`` (mean or sum)."""
    members = [teacher_member(item) for item in teacher_specs(spec)]
    counts = {member.num_classes for member in members}
    if len(counts) > 1:
        raise UserError(
            f"ensemble teachers disagree on the number of classes ({sorted(counts)}): use teachers of one dataset"
        )
    teacher = members[0] if len(members) == 1 else EnsembleTeacher(members, ensemble)
    return teacher.to(device).eval().requires_grad_(False)


def teacher_files(value: str | Path | Sequence[str | Path] | None) -> list[str]:
    """The files or run folders a teacher setting reads (torchvision weights: the path after '=')."""
    files = []
    for spec in teacher_specs(value):
        path = spec.partition("=")[2] if spec.startswith(FOREIGN_PREFIX) else spec
        if path:
            files.append(path)
    return files


def check_teacher(teacher: nn.Module, specs: object, inputs: Tensor, dataset: str) -> None:
    """Run the teacher once on a batch of the data before training: a UserError if it cannot take
    the images, or if its logits (or an ensemble member's) are NaN or inf, naming that teacher."""
    members = list(teacher.members) if isinstance(teacher, EnsembleTeacher) else [teacher]
    names = teacher_specs(specs)  # type: ignore[arg-type]
    for member, name in zip(members, names, strict=True):
        try:
            with torch.inference_mode():
                logits = member(inputs)
        except RuntimeError as error:
            raise UserError(
                f"teacher {name} cannot take the images of {dataset} ({list(inputs.shape[1:])}): {first_line(error)}; "
                f"use a teacher trained on {dataset}"
            ) from None
        if not torch.isfinite(logits).all():
            raise UserError(
                f"teacher {name} outputs NaN or inf logits on {dataset}: its weights are damaged (a run that "
                "diverged?); use another teacher checkpoint"
            )
