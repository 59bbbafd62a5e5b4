"""The training step over a group of students: forward, named loss terms, backward, optimiser step.

Every student of the group sees the same batch and the same teacher logits; each has its own loss,
optimiser and sums in the epoch state. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import Tensor, nn

from kdlab.config import RunConfig
from kdlab.data import Batch
from kdlab.engine.state import EpochState
from kdlab.engine.student import Student
from kdlab.errors import UserError
from kdlab.losses import loss_spec, loss_terms


def train_step(
    students: list[Student],
    batch: Batch,
    teacher_logits: Tensor | None,
    state: EpochState,
    step: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    epoch: int = 0,
    teacher_features: Tensor | None = None,
) -> None:
    """One SGD step of every student on ``batch``; its loss terms are added to ``state``.

    Each loss gets what its registration says it reads (``kdlab.losses.INPUTS``): the teacher's
    logits and features, the 1-based epoch, and the student's penultimate features, for which the
    student runs as ``classifier(forward_features(x))`` (the same logits as ``forward``).
    """
    for index, student in enumerate(students):
        kd = student.config.kd
        spec = loss_spec(kd.loss)
        inputs: dict[str, Tensor | int | None] = {"epoch": epoch + 1, "teacher_features": teacher_features}
        with autocast():
            if "student_features" in spec.reads:
                features = student.model.forward_features(batch.inputs)
                logits = student.model.classifier(features)
                inputs["student_features"] = features.float()
            else:
                logits = student.module(batch.inputs)
        terms = loss_terms(
            kd.loss, logits.float(), teacher_logits, batch.targets, **inputs, **spec.hyperparameters(kd)
        )
        loss = sum(terms.values())
        student.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student.optimizer.step()
        state.add(index, {"loss": loss, **terms}, logits, batch.targets, step)


def check_feature_losses(configs: list[RunConfig], teacher: nn.Module | None, world_size: int) -> None:
    """A UserError when a loss reads penultimate features that this group cannot provide."""
    reads = set().union(*(loss_spec(config.kd.loss).reads for config in configs))
    if "teacher_features" in reads and not (
        hasattr(teacher, "forward_features") and hasattr(teacher, "classifier")
    ):
        raise UserError(
            "this loss reads the teacher's penultimate features, which an ensemble or foreign teacher does "
            "not expose: use one kdlab teacher"
        )
    if "student_features" in reads and world_size > 1:
        raise UserError(
            "losses that read the student's penultimate features run in one process (the features bypass "
            "DistributedDataParallel): drop --nproc"
        )
