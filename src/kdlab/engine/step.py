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
from typing import Any, Protocol

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


class CudaCalls:
    """The CUDA runtime calls a capture makes besides the graph's own, in one place: a test replaces
    them (and the graph) with fakes to check, on a machine without CUDA, what a failed capture leaves."""

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def set_stream(self, stream: Any) -> None:
        torch.cuda.set_stream(stream)

    def synchronize(self, device: torch.device) -> None:
        torch.cuda.synchronize(device)

    def end_pool(self, device: torch.device, pool: Any) -> None:
        """Stop routing allocations to the capture's private pool (what ``capture_end`` does after
        ``cudaStreamEndCapture`` succeeds, and skips when it fails)."""
        torch._C._cuda_endAllocateToPool(device.index, pool)

    def release_pool(self, device: torch.device, pool: Any) -> None:
        """Give back the capture's hold on its private pool (a graph that never finished its capture
        does not release it when it is destroyed)."""
        torch._C._cuda_releasePool(device.index, pool)


def capture_graph(
    graph: Any, function: Callable[[], None], device: torch.device, stream: Any, pool: Any, calls: CudaCalls
) -> None:
    """Record ``function()`` into ``graph`` on ``stream`` (a stream of ``device``, whose allocations
    go to the private ``pool``), with the current stream restored afterwards whatever happens.

    What ``torch.cuda.graph``'s context manager leaves behind when a capture fails, and this does
    not: when ``capture_end`` raises (a capture invalidated by an operation that cannot be
    captured: ``cudaStreamEndCapture`` returns an error, which also ends the capture), it skips
    restoring the current stream, so the rest of the run would execute on the capture stream, and
    it skips ending the allocator's routing to the capture's pool. Here, on any exception (raised by
    ``function`` or by ``capture_end``): the capture is ended (``capture_end``; its own error, if
    any, dropped in favour of the first one), the allocator's routing ended and the pool's hold
    released when ``capture_end`` did not do it, the partial graph reset, the previous stream made
    current again, and the first exception raised.
    """
    previous = calls.current_stream(device)
    calls.synchronize(device)  # the capture reads what the previous stream wrote (the static inputs)
    calls.set_stream(stream)
    try:
        graph.capture_begin(pool, capture_error_mode="thread_local")
        ended = False
        try:
            function()
            ended = True  # capture_end is called once, just below: a failure there is cleaned up too
            graph.capture_end()
        except BaseException:
            if not ended:
                try:
                    calls.set_stream(stream)  # capture_end must run on the stream the capture began on
                    graph.capture_end()
                except Exception:
                    _end_pool(calls, device, pool)
                else:
                    with contextlib.suppress(Exception):
                        graph.reset()  # an ended capture of half a step: never replayed
            else:
                _end_pool(calls, device, pool)
            raise
    finally:
        calls.set_stream(previous)


def _end_pool(calls: CudaCalls, device: torch.device, pool: Any) -> None:
    """End the allocator's routing to a failed capture's pool and release it (each at most once, and
    quietly when ``capture_end`` got as far as doing it)."""
    with contextlib.suppress(Exception):
        calls.end_pool(device, pool)
    with contextlib.suppress(Exception):
        calls.release_pool(device, pool)


class CudaGraphs:
    """What capturing the step needs from CUDA, on one device (``cuda:N`` for any N).

    Every stream, capture and memory pool is made and used with the run's device selected
    (``torch.cuda.device``): a stream, the capture's stream and pool, and PyTorch's default capture
    stream otherwise belong to the *current* device (0 unless selected), while the step's kernels
    run on the device of its tensors; a capture on device 0 of kernels launched on device N records
    an empty graph (those kernels run at once instead), and every replay then does nothing.
    """

    def __init__(self, device: torch.device, calls: CudaCalls | None = None) -> None:
        self.device = device
        self.calls = calls or CudaCalls()
        with self.selected():
            self.stream = torch.cuda.Stream(device)  # the warm-up steps' and the captures' stream

    def selected(self) -> contextlib.AbstractContextManager:
        """The run's device made current for the block."""
        return torch.cuda.device(self.device)

    def warm_up(self, function: Callable[[], None]) -> None:
        """``function()`` on the side stream, which first waits for the current stream and is then
        waited for (what capture requires of the steps before it)."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            function()
        current.wait_stream(self.stream)

    def capture(self, function: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """A graph of ``function()``, in a private pool of this device (:func:`capture_graph`)."""
        graph = torch.cuda.CUDAGraph()
        capture_graph(graph, function, self.device, self.stream, torch.cuda.graph_pool_handle(), self.calls)
        return graph


def graph_backend(device: torch.device, world_size: int, wanted: bool) -> CudaGraphs | None:
    """How the step is captured: on CUDA with one process when ``cuda_graph: true`` (DDP's
    all-reduce is not captured); None (eager) otherwise."""
    if wanted and device.type == "cuda" and world_size == 1:
        return CudaGraphs(device)
    return None


class TrainStep:
    """The group's step: :func:`train_step` eagerly, or replayed from one captured CUDA graph.

    ``graphs`` (:class:`CudaGraphs`, or a test's fake with the same methods) captures the step; None:
    eager. Counters for the benchmarks and tests: ``warmed`` (eager warm-up steps), ``captures``,
    ``replays`` (the capture's own first replay included); ``fallback``: why the run went eager.
    """

    def __init__(
        self,
        units: list[Unit],
        state: EpochState,
        teacher: StepTeacher,
        autocast: Autocast,
        batch_size: int,
        graphs: CudaGraphs | None,
    ) -> None:
        self.units, self.state, self.teacher, self.autocast = units, state, teacher, autocast
        self.batch_size, self.graphs = batch_size, graphs
        # A loss that reads the epoch (a warm-up ramp) is a Python number in the graph: capture again
        # in each epoch.
        self.per_epoch = any(
            "epoch" in loss_spec(student.config.kd.loss).reads for unit in units for student in unit.students
        )
        self.epoch = 0  # the epoch being trained (what the captured graph holds when per_epoch)
        self.graph: Any = None
        self.static: tuple[Tensor, Tensor, Tensor | None] | None = None
        self.warmed = 0
        self.captures = 0
        self.replays = 0
        self.fallback: str | None = None

    @property
    def capture(self) -> bool:
        """Whether full batches are (to be) captured and replayed."""
        return self.graphs is not None

    def eager(self, inputs: Tensor, targets: Tensor, rows: Tensor | None, epoch: int | None = None) -> None:
        """One step now, of ``epoch`` (default: the epoch being trained)."""
        teacher = self.teacher(inputs, rows)
        epoch = self.epoch if epoch is None else epoch
        train_step(self.units, inputs, targets, teacher, self.state, self.autocast, epoch)

    def __call__(self, inputs: Tensor, targets: Tensor, rows: Tensor | None, epoch: int) -> None:
        if epoch != self.epoch and self.per_epoch:
            self.graph = None  # captured again below, with this epoch's number
        self.epoch = epoch
        if self.graphs is None or len(targets) != self.batch_size:
            self.eager(inputs, targets, rows)
            return
        with self.graphs.selected():
            if self.graph is not None:
                for static, batch in zip(self.static, (inputs, targets, rows), strict=True):
                    if static is not None:
                        static.copy_(batch, non_blocking=True)
                self.graph.replay()
                self.replays += 1
            elif self.warmed < WARMUP_STEPS:
                self.graphs.warm_up(lambda: self.eager(inputs, targets, rows))
                self.warmed += 1
            else:
                self._capture(inputs, targets, rows)

    def _capture(self, inputs: Tensor, targets: Tensor, rows: Tensor | None) -> None:
        """Capture the step on static copies of this batch, then replay it: this batch's step.

        Checked once per capture, at its first replay: the replay must advance the step counter
        (``EpochState.step``) by one, and the capture itself must not (a capture runs nothing). Any
        failure, of the capture (any exception) or of the check, makes the rest of the run eager,
        with one line naming the reason; this batch is then trained eagerly unless the capture
        already ran it.
        """
        self.static = (inputs.clone(), targets.clone(), None if rows is None else rows.clone())
        before = int(self.state.step)  # host reads: once per capture
        try:
            # The epoch as a number, as the graph holds it: a graph replayed in a later epoch would
            # still train with this one's (why a loss that reads it is captured again each epoch).
            static, epoch = self.static, self.epoch
            graph = self.graphs.capture(lambda: self.eager(*static, epoch))
        except Exception as error:  # any: an op that cannot be captured, a loss that breaks under capture
            self._go_eager(f"the training step could not be captured as a CUDA graph ({first_line(error)})")
            if int(self.state.step) == before:  # (a step that ran during the capture advanced it)
                self.eager(inputs, targets, rows)
            return
        self.captures += 1
        captured_at = int(self.state.step)
        graph.replay()
        self.replays += 1
        after = int(self.state.step)
        if captured_at == before and after == before + 1:
            self.graph = graph
            return
        if captured_at != before:
            reason = "its kernels ran during the capture instead of being recorded"
        else:
            reason = "its first replay did not advance the step counter (an empty graph)"
        self._go_eager(f"the captured training step is not usable: {reason}")
        if captured_at == before and after == before:
            self.eager(inputs, targets, rows)  # nothing ran this batch's step yet

    def _go_eager(self, reason: str) -> None:
        self.graphs, self.graph, self.static, self.fallback = None, None, None, reason
        print(
            f"kdlab: {reason}; training eagerly from here (set cuda_graph: false to skip the attempt)",
            file=sys.stderr,
        )
