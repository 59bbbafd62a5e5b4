"""Stopping a run: SIGTERM/SIGINT between steps, and losses that stopped being finite.

A signal only sets a flag; the loop reads it between steps, saves a checkpoint and raises
:class:`~kdlab.errors.RunInterrupted`. With several processes every rank must stop at the same step,
so the flag is agreed by an all-reduce, every ``STOP_CHECK_STEPS`` steps (each agreement is a sync).

A loss that is NaN or inf is found at the end of the epoch (a device flag per student, see
:class:`~kdlab.engine.state.EpochState`): :class:`NotFinite` says where; a single run stops with
its :class:`NonFiniteLoss`, a student of a group is recorded as diverged (``kdlab.engine.loop``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kdlab.device import World
from kdlab.engine.state import EpochState
from kdlab.engine.student import Student
from kdlab.errors import RunInterrupted, UserError

STOP_CHECK_STEPS = 20

# In a sweep's worker process (see keep_stop_signals): the first stop signal it got, whenever it came.
_kept: list[int] | None = None


def keep_stop_signals() -> None:
    """For a worker process that runs one task after another: a SIGTERM is kept instead of killing
    the process, so that one arriving while no run listens (data loading, model building, between
    runs) still stops the run at its first step with a checkpoint, and every later run of the
    process stops too. A worker killed by a signal would leave its run without a checkpoint and
    its semaphores leaked."""
    global _kept
    _kept = []
    signal.signal(signal.SIGTERM, _keep)


def _keep(signum: int, frame: Any) -> None:
    if _kept is not None and not _kept:
        _kept.append(signum)


def kept_stop() -> int | None:
    """The SIGTERM this worker process kept (see :func:`keep_stop_signals`), or None."""
    return _kept[0] if _kept else None


class StopRequests:
    """The signal that asked this run to stop, if any, agreed over the ranks of ``world``."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world = world
        self.device = device
        self.signum: int | None = None

    @property
    def check_every(self) -> int:
        """Steps between two looks at the flag: every step alone, every STOP_CHECK_STEPS with ranks."""
        return 1 if self.world.size == 1 else STOP_CHECK_STEPS

    def agreed(self) -> int | None:
        """The signal that asked this run to stop, or None; with several processes, agreed by all
        ranks (a collective: every rank must call it at the same step)."""
        if self.world.size == 1:
            return self.signum
        flag = torch.tensor(self.signum or 0, device=self.device)
        return int(self.world.all_reduce(flag, "max").item()) or None

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While training, SIGTERM and SIGINT ask the loop to stop after the current step; a second
        SIGINT (Ctrl-C twice) stops at once, keeping the previous checkpoint. A stop the worker
        process kept before (:func:`keep_stop_signals`) stops at the first step. Handlers can only
        be set from the main thread."""
        self.signum = self.signum or kept_stop()
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signum = self.signum or signum
            _keep(signum, frame)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def interrupted(students: list[Student], signum: int, when: str) -> RunInterrupted:
    """The stop of ``students``, whose checkpoints were just saved (none: every run of the group had
    diverged, and each says so in its summary.json)."""
    name = signal.Signals(signum).name
    if not students:
        return RunInterrupted(f"stopped by {name} {when}; every run of the group had diverged", signum)
    folders = ", ".join(str(student.run.path) for student in students)
    return RunInterrupted(
        f"stopped by {name} {when}; checkpoint saved in {folders}: continue with --resume", signum
    )


class NonFiniteLoss(UserError):
    """A run's loss (or weights) became NaN or inf and the run stops: one line, exit 2.

    ``where`` names the run, epoch and step; ``advice`` what was kept and how to go on. A caller that
    knows other ways on (``kdlab sweep`` has no --overwrite) words its own advice after ``where``.
    """

    def __init__(self, where: str, advice: str) -> None:
        super().__init__(f"{where}; {advice}")
        self.where, self.advice = where, advice

    def __reduce__(self) -> tuple[Any, ...]:  # pickled back from a sweep's worker process
        return type(self), (self.where, self.advice)


@dataclass(frozen=True)
class NotFinite:
    """Where a student stopped being finite, 0-based: the ``epoch`` and the ``step`` whose loss was
    NaN or inf, or (``weights``) the step by which its weights were found so though its loss stayed
    finite (a finite loss whose gradient was not, at a step after which the loss was not computed
    again: the epoch's last, or the last before a stop)."""

    epoch: int
    step: int
    weights: bool = False

    @property
    def reason(self) -> str:
        if self.weights:
            return "the weights became NaN or inf (the loss stayed finite)"
        return "the loss became NaN or inf"

    def where(self, student: Student) -> str:
        """``RUN: the loss became NaN or inf at epoch E, step S`` (1-based), or ``RUN: the weights
        became NaN or inf by epoch E, step S (the loss stayed finite)``."""
        at = f"epoch {self.epoch + 1}, step {self.step + 1}"
        if self.weights:
            return f"{student.run.path}: the weights became NaN or inf by {at} (the loss stayed finite)"
        return f"{student.run.path}: the loss became NaN or inf at {at}"

    def error(self, student: Student) -> NonFiniteLoss:
        """What a single run stops with: nothing of the failing epoch was saved, so ``last.pt`` (if
        any) is the last finite state. Changing --lr is not a resume (``check_resume`` refuses it):
        the advice is to start again."""
        last = student.run.last_checkpoint
        advice = (
            f"{last} keeps the last finite state: fix the data and --resume, or start again with a lower --lr "
            "and --overwrite"
            if last.is_file()
            else "no checkpoint was saved: lower --lr or check the data, then --overwrite"
        )
        return NonFiniteLoss(self.where(student), advice)


def first_non_finite(
    students: list[Student], state: EpochState, world: World, epoch: int
) -> dict[int, NotFinite]:
    """``{index: NotFinite}`` of the students whose loss was NaN or inf in this epoch, on any rank
    (a collective: every rank calls it at the same point), at the first such step."""
    found = {}
    for index in range(len(students)):
        step = state.first_bad(index, world)
        if step is not None:
            found[index] = NotFinite(epoch, step)
    return found


@torch.no_grad()
def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite (one sync): what a
    checkpoint must be before it is written, even when every loss was finite."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
