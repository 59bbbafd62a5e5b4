"""Stopping a run: SIGTERM/SIGINT between steps, and losses that stopped being finite.

A signal only sets a flag; the loop reads it between steps, saves a checkpoint and raises
:class:`~kdlab.errors.RunInterrupted`. With several processes every rank must stop at the same step,
so the flag is agreed by an all-reduce, every ``STOP_CHECK_STEPS`` steps (each agreement is a sync).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
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
    folders = ", ".join(str(student.run.path) for student in students)
    return RunInterrupted(
        f"stopped by {signal.Signals(signum).name} {when}; checkpoint saved in {folders}: continue with --resume",
        signum,
    )


def raise_if_not_finite(students: list[Student], state: EpochState, world: World, epoch: int) -> None:
    """A UserError naming epoch and step if a student's loss was NaN or inf (on any rank).

    Raised before anything of the epoch is saved, so ``last.pt`` stays the last good checkpoint.
    """
    for index, student in enumerate(students):
        step = state.first_bad(index, world)
        if step is not None:
            last = student.run.last_checkpoint
            kept = (
                f"{last} keeps the last good state: lower --lr or check the data, then --resume"
                if last.is_file()
                else "no checkpoint was saved: lower --lr or check the data, then --overwrite"
            )
            raise UserError(
                f"{student.run.path}: the loss became NaN or inf at epoch {epoch + 1}, step {step + 1}; {kept}"
            )
