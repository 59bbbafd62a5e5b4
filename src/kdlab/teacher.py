"""Teachers: models rebuilt from run folders or checkpoints, frozen, and averaged when several."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.models import create_model
from kdlab.runs import load_checkpoint, resolve_checkpoint


def model_from_checkpoint(spec: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a kdlab run folder (its last.pt) or checkpoint file."""
    checkpoint = load_checkpoint(resolve_checkpoint(spec), map_location)
    model = create_model(
        checkpoint["model_name"],
        checkpoint["num_classes"],
        checkpoint["in_channels"],
        checkpoint.get("image_size"),
    )
    model.load_state_dict(checkpoint["model"])
    return model


class EnsembleTeacher(nn.Module):
    """The mean of several teachers' logits (the official code sums them, changing the MSE target's scale)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_classes = members[0].num_classes

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def load_teacher(spec: str | Path | Sequence[str | Path], device: torch.device) -> nn.Module:
    """A frozen teacher in eval mode on ``device``; a list of specs gives an ``EnsembleTeacher``."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    members = [model_from_checkpoint(item) for item in specs]
    counts = {member.num_classes for member in members}
    if len(counts) > 1:
        from kdlab.errors import UserError

        raise UserError(
            f"ensemble teachers disagree on the number of classes ({sorted(counts)}): use teachers of one dataset"
        )
    teacher = members[0] if len(members) == 1 else EnsembleTeacher(members)
    return teacher.to(device).eval().requires_grad_(False)
