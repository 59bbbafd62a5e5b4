"""The training step over a group of students: forward, named loss terms, backward, optimiser step.

Every student of the group sees the same batch and the same teacher logits; each has its own loss,
optimiser and sums in the epoch state. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import Tensor

from kdlab.data import Batch
from kdlab.engine.state import EpochState
from kdlab.engine.student import Student
from kdlab.losses import loss_terms


def train_step(
    students: list[Student],
    batch: Batch,
    teacher_logits: Tensor | None,
    state: EpochState,
    step: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """One SGD step of every student on ``batch``; its loss terms are added to ``state``."""
    for index, student in enumerate(students):
        with autocast():
            logits = student.module(batch.inputs)
        kd = student.config.kd
        terms = loss_terms(kd.loss, logits.float(), teacher_logits, batch.targets, alpha=kd.alpha, tau=kd.tau)
        loss = sum(terms.values())
        student.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student.optimizer.step()
        state.add(index, {"loss": loss, **terms}, logits, batch.targets, step)
