"""The training step of a group of students: one function over static shapes, eager on the CPU and
one CUDA graph on a GPU.

One step (:func:`train_step`): the teacher's logits (a live forward, or a gather from the logit
cache by rows computed beforehand), then for each *unit* (one student, or N students stacked as one
module, :mod:`kdlab.engine.stacked`) its forward, each student's named loss terms, one backward and
one optimiser step, and each student's sums added to the :class:`EpochState`. Nothing reads a
value back to the host, the learning rate lives in a device tensor and the optimiser is fused, so
the whole step can be captured once and replayed (:class:`TrainStep`).

On CUDA (one process, ``cuda_graph: true``): the first ``WARMUP_STEPS`` full batches train eagerly
on a side stream (they are real training steps: cuDNN picks its kernels, the optimiser makes its
momentum buffers, ``torch.compile`` compiles), the next full batch is copied into static buffers,
captured and replayed, and every later full batch is copied into those buffers and replayed.
Shapes are static: a last partial batch runs through the same function eagerly, so CPU and GPU
train on exactly the same samples and nothing is dropped or padded. Signals are read between
replays (a host flag, every step), non-finite losses at the end of the epoch (a device flag). A
loss that reads the epoch holds it as a number in the graph: such a group is captured again in
each epoch.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from kdlab.cache import TeacherLogitCache
from kdlab.config import RunConfig, loss_values
from kdlab.engine.state import EpochState
from kdlab.engine.student import Student, set_lr
from kdlab.errors import UserError, first_line
from kdlab.losses import loss_spec, loss_terms
from kdlab.models.features import check_features, feature_layer, forward_with_features
from kdlab.teacher import EnsembleTeacher

WARMUP_STEPS = 3  # eager steps before capture (PyTorch's whole-network capture example uses 3)

Autocast = Callable[[], contextlib.AbstractContextManager]


TeacherOutputs = tuple[Tensor | None, Tensor | None]  # (logits [B, K], penultimate features [B, D])


def live_teacher_logits(teacher: nn.Module, inputs: Tensor, autocast: Autocast) -> Tensor:
    """The frozen teacher's float32 logits; cloned out of inference mode so autograd may read them."""
    with torch.inference_mode(), autocast():
        logits = teacher(inputs)
    return logits.float().clone()


@dataclass
class StepTeacher:
    """Where the step's teacher outputs come from: the cache's rows, the live teacher (with its
    penultimate features when a loss reads them: ``features``), or nowhere (no student of the group
    reads a teacher). Holds no reference to the Trainer."""

    teacher: nn.Module | None
    cache: TeacherLogitCache | None
    autocast: Autocast
    features: bool = False

    def __call__(self, inputs: Tensor, rows: Tensor | None) -> TeacherOutputs:
        if self.features:
            with torch.inference_mode(), self.autocast():
                logits, features = forward_with_features(self.teacher, inputs, "the teacher")
            return logits.float().clone(), features.float().clone()
        if self.cache is not None:
            return self.cache.gather(rows), None
        if self.teacher is None:
            return None, None
        return live_teacher_logits(self.teacher, inputs, self.autocast), None


class Unit(Protocol):
    """What the step trains at once: ``students`` (their ``slots`` in the EpochState), one module
    and one optimiser."""

    students: list[Student]
    slots: list[int]
    optimizer: torch.optim.Optimizer

    def forward(self, inputs: Tensor, features: bool) -> list[tuple[Tensor, Tensor | None]]:
        """Each student's logits ``[B, K]``, and with ``features`` its penultimate features ``[B, D]``
        (:func:`kdlab.models.features.forward_with_features`: the same logits as ``forward``)."""
        ...

    def train(self) -> None: ...

    def zero_grad(self) -> None: ...

    def step(self) -> None: ...  # the optimiser step, each student's parameters by its own gradient

    def publish(self) -> None: ...  # each student's model and optimiser now hold its current state


class OneStudent:
    """A unit of one student: its own module and optimiser."""

    def __init__(self, student: Student, slot: int) -> None:
        self.students, self.slots = [student], [slot]
        self.optimizer = student.optimizer

    def forward(self, inputs: Tensor, features: bool) -> list[tuple[Tensor, Tensor | None]]:
        student = self.students[0]
        if not features:
            return [(student.module(inputs), None)]
        return [forward_with_features(student.model, inputs, f"--model {student.config.model}")]

    def train(self) -> None:
        self.students[0].module.train()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def publish(self) -> None:
        """Nothing to do: the student trains its own model."""


def set_units_lr(units: list[Unit], lr: Callable[[Student], float]) -> None:
    """Each unit's rate (students of a stacked unit share their optimiser settings)."""
    for unit in units:
        for student in unit.students:
            student.lr = lr(student)
        set_lr(unit.optimizer, unit.students[0].lr)


def reads_features(unit: Unit) -> bool:
    """Whether a loss of one of the unit's students reads the student's penultimate features."""
    return any("student_features" in loss_spec(student.config.kd.loss).reads for student in unit.students)


def train_step(
    units: list[Unit],
    inputs: Tensor,
    targets: Tensor,
    teacher: TeacherOutputs,
    state: EpochState,
    autocast: Autocast,
    epoch: int,
) -> None:
    """One SGD step of every student on ``(inputs, targets)``; its loss terms are added to ``state``.

    Each loss gets what its registration says it reads (``kdlab.losses.INPUTS``): the teacher's
    logits and features, the 1-based epoch, and the student's penultimate features.
    """
    teacher_logits, teacher_features = teacher
    for unit in units:
        with autocast():
            outputs = unit.forward(inputs, reads_features(unit))
        losses = []
        for slot, student, (logits, features) in zip(unit.slots, unit.students, outputs, strict=True):
            kd = student.config.kd
            spec = loss_spec(kd.loss)
            given: dict[str, Tensor | int | None] = {"epoch": epoch + 1, "teacher_features": teacher_features}
            if "student_features" in spec.reads:
                given["student_features"] = features.float()
            terms = loss_terms(kd.loss, logits.float(), teacher_logits, targets, **given, **loss_values(kd))
            loss = sum(terms.values())
            state.add(slot, {"loss": loss, **terms}, logits, targets)
            losses.append(loss)
        unit.zero_grad()
        # Each student's parameters get the gradient of its own loss only: d(sum)/d(loss_i) = 1, and a
        # NaN loss of one student reaches no other student's gradient (its own parameters or slices).
        (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
        unit.step()
    state.next_step()


def check_feature_losses(
    configs: list[RunConfig], teacher: nn.Module | None, world_size: int, inputs: Tensor | None = None
) -> None:
    """A UserError when a loss reads penultimate features that this group cannot provide: an ensemble
    teacher, a teacher without a feature layer (:func:`kdlab.models.features.feature_layer`), or,
    given a few ``inputs`` of the data, a feature layer that does not run or gives no per-sample tensor."""
    reads = set().union(*(loss_spec(config.kd.loss).reads for config in configs))
    if "teacher_features" in reads:
        try:
            if teacher is None or isinstance(teacher, EnsembleTeacher):
                raise UserError("use one teacher (an ensemble has no single feature layer)")
            if inputs is None:
                feature_layer(teacher, "the teacher")
            else:
                check_features(teacher, inputs, "the teacher")
        except UserError as error:
            raise UserError(
                "this loss reads the teacher's penultimate features, which an ensemble or a model without a "
                f"feature layer does not expose: {error}"
            ) from None
    if "student_features" in reads and world_size > 1:
        raise UserError(
            "losses that read the student's penultimate features run in one process (the features bypass "
            "DistributedDataParallel): drop --nproc"
        )


class TrainStep:
    """The group's step: :func:`train_step` eagerly, or replayed from one captured CUDA graph."""

    def __init__(
        self,
        units: list[Unit],
        state: EpochState,
        teacher: StepTeacher,
        autocast: Autocast,
        batch_size: int,
        capture: bool,
    ) -> None:
        self.units, self.state, self.teacher, self.autocast = units, state, teacher, autocast
        self.batch_size, self.capture = batch_size, capture
        # A loss that reads the epoch (a warm-up ramp) is a Python number in the graph: capture again
        # in each epoch.
        self.per_epoch = any(
            "epoch" in loss_spec(student.config.kd.loss).reads for unit in units for student in unit.students
        )
        self.epoch = 0  # the epoch being trained (what the captured graph holds when per_epoch)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor, Tensor | None] | None = None
        self.side: torch.cuda.Stream | None = None  # the warm-up steps' stream
        self.warmed = 0
        self.replays = 0  # replays of the graph (the capture's own included)

    def eager(self, inputs: Tensor, targets: Tensor, rows: Tensor | None) -> None:
        teacher = self.teacher(inputs, rows)
        train_step(self.units, inputs, targets, teacher, self.state, self.autocast, self.epoch)

    def __call__(self, inputs: Tensor, targets: Tensor, rows: Tensor | None, epoch: int) -> None:
        if epoch != self.epoch and self.per_epoch:
            self.graph = None  # captured again below, with this epoch's number
        self.epoch = epoch
        if not self.capture or len(targets) != self.batch_size:
            self.eager(inputs, targets, rows)
        elif self.graph is not None:
            for static, batch in zip(self.static, (inputs, targets, rows), strict=True):
                if static is not None:
                    static.copy_(batch, non_blocking=True)
            self.graph.replay()
            self.replays += 1
        elif self.warmed < WARMUP_STEPS:
            self._warm_up(inputs, targets, rows)
        else:
            self._capture(inputs, targets, rows)

    def _warm_up(self, inputs: Tensor, targets: Tensor, rows: Tensor | None) -> None:
        """A real training step, eagerly on a side stream (what capture requires of the steps before it)."""
        side = self.side = self.side or torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.eager(inputs, targets, rows)
        torch.cuda.current_stream().wait_stream(side)
        self.warmed += 1

    def _capture(self, inputs: Tensor, targets: Tensor, rows: Tensor | None) -> None:
        """Capture the step on static copies of this batch, then replay it: this batch's step."""
        self.static = (inputs.clone(), targets.clone(), None if rows is None else rows.clone())
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a DataLoader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.eager(*self.static)
        except RuntimeError as error:  # an op that cannot be captured: train this run eagerly
            torch.cuda.synchronize()
            self.capture, self.static = False, None
            print(
                f"kdlab: the training step could not be captured as a CUDA graph ({first_line(error)}); "
                "training eagerly (set cuda_graph: false to skip the attempt)",
                file=sys.stderr,
            )
            self.eager(inputs, targets, rows)
            return
        self.graph = graph
        graph.replay()
        self.replays += 1


def capture_possible(device: torch.device, world_size: int, wanted: bool) -> bool:
    """Capture on CUDA with one process when ``cuda_graph: true`` (DDP's all-reduce is not captured)."""
    return wanted and device.type == "cuda" and world_size == 1
