"""The running state of one epoch for a group of students, kept on the device.

Per student: the sum of each loss term and of the loss over the samples seen, the number of correct
training predictions, and the first step whose loss was not finite (-1: none). Adding to them never
reads a value back to the host, so the step loop never waits for the device. A mid-epoch
checkpoint stores :meth:`EpochState.progress` and ``--resume`` rebuilds the state from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdlab.device import World

NEVER = 2**62  # "no non-finite step" when the first bad step is reduced with min over ranks


class EpochState:
    """One group's running sums, made once and reset in place at each epoch's start.

    Every tensor here keeps its address for the whole run, and the step writes them in place, so
    that a step captured as a CUDA graph in one epoch keeps adding to them in the next. The index of
    the step being taken is a device counter too (``step``), advanced by the step itself.
    """

    def __init__(self, count: int, device: torch.device) -> None:
        self.device = device
        self.sums: list[dict[str, Tensor]] = [{} for _ in range(count)]
        self.correct = [torch.zeros((), device=device) for _ in range(count)]
        self.first_bad_step = [torch.full((), -1, device=device) for _ in range(count)]
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0  # samples seen by this process (after a restore on rank 0: by all processes)
        self.first_step = 0  # the step the epoch (re)starts at

    def begin(self, progress: list[dict[str, Any] | None], world: World) -> None:
        """Zero at an epoch's start; after a mid-epoch checkpoint, its totals over all ranks (kept by
        rank 0, the other ranks starting from zero) and its step. ``progress``: one entry per student."""
        keep = world.is_main and progress[0] is not None
        for sums, correct, bad, saved in zip(
            self.sums, self.correct, self.first_bad_step, progress, strict=True
        ):
            for total in sums.values():
                total.zero_()
            correct.zero_()
            bad.fill_(-1)
            if saved is not None and keep:
                for name, value in saved["sums"].items():
                    sums.setdefault(name, torch.zeros((), device=self.device)).copy_(value)
                correct.copy_(saved["correct"])
        self.seen = progress[0]["seen"] if keep else 0
        self.first_step = progress[0]["step"] if progress[0] is not None else 0
        self.step.fill_(self.first_step)

    def add(self, index: int, terms: dict[str, Tensor], logits: Tensor, targets: Tensor) -> None:
        """Accumulate student ``index``'s step: ``terms`` hold the batch means, ``"loss"`` included."""
        size = len(targets)
        sums = self.sums[index]
        for name, value in terms.items():
            if name in sums:
                sums[name].add_(value.detach() * size)
            else:  # the first step of the run names the terms (before any capture)
                sums[name] = value.detach() * size
        self.correct[index].add_((logits.detach().argmax(dim=1) == targets).sum())
        bad = ~torch.isfinite(terms["loss"].detach()) & (self.first_bad_step[index] < 0)
        self.first_bad_step[index].copy_(torch.where(bad, self.step, self.first_bad_step[index]))

    def next_step(self) -> None:
        self.step.add_(1)

    def totals(self, index: int, world: World) -> dict[str, Tensor]:
        """Student ``index``'s sums and ``"correct"`` over all ranks (a collective)."""
        names = sorted(self.sums[index])
        stacked = world.all_reduce(torch.stack([self.sums[index][n] for n in names] + [self.correct[index]]))
        return dict(zip([*names, "correct"], stacked, strict=True))

    def first_bad(self, index: int, world: World) -> int | None:
        """The first step (0-based) at which student ``index``'s loss was not finite on any rank."""
        step = self.first_bad_step[index].clone()
        step = world.all_reduce(torch.where(step < 0, torch.full_like(step, NEVER), step), "min")
        found = int(step.item())
        return None if found == NEVER else found

    def progress(self, step: int, world: World) -> list[dict[str, Any]]:
        """One entry per student for a mid-epoch ``last.pt`` after ``step`` steps (a collective)."""
        seen_total = int(world.all_reduce(torch.tensor(self.seen, device=self.device)).item())
        saved = []
        for index in range(len(self.sums)):
            totals = self.totals(index, world)
            correct = totals.pop("correct")
            saved.append(
                {
                    "step": step,
                    "seen": seen_total,
                    "sums": {name: total.clone() for name, total in totals.items()},
                    "correct": correct.clone(),
                }
            )
        return saved
