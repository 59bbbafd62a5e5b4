"""The running state of one epoch for a group of students, kept on the device.

Per student: the sum of each loss term and of the loss over the samples seen, the number of correct
training predictions, and the first step whose loss was not finite (-1: none). Adding to them never
reads a value back to the host, so the step loop never waits for the device. A mid-epoch
checkpoint stores :meth:`EpochState.progress` and ``--resume`` rebuilds the state from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdlab.device import World

NEVER = 2**62  # "no non-finite step" when the first bad step is reduced with min over ranks


@dataclass
class EpochState:
    sums: list[dict[str, Tensor]]
    correct: list[Tensor]
    first_bad_step: list[Tensor]
    seen: int  # samples seen by this process (after a restore on rank 0: by all processes)
    first_step: int  # the step the epoch (re)starts at
    device: torch.device

    @classmethod
    def begin(cls, progress: list[dict[str, Any] | None], device: torch.device, world: World) -> EpochState:
        """Zero at an epoch's start; after a mid-epoch checkpoint, its totals over all ranks (kept by
        rank 0, the other ranks starting from zero) and its step. ``progress``: one entry per student."""
        zero = torch.zeros((), device=device)
        keep = world.is_main and progress[0] is not None
        sums = [
            {name: value.to(device) if keep else zero.clone() for name, value in saved["sums"].items()}
            if saved is not None
            else {}
            for saved in progress
        ]
        correct = [saved["correct"].to(device) if keep else zero.clone() for saved in progress]
        return cls(
            sums=sums,
            correct=correct,
            first_bad_step=[torch.full((), -1, device=device) for _ in progress],
            seen=progress[0]["seen"] if keep else 0,
            first_step=progress[0]["step"] if progress[0] is not None else 0,
            device=device,
        )

    def add(self, index: int, terms: dict[str, Tensor], logits: Tensor, targets: Tensor, step: int) -> None:
        """Accumulate student ``index``'s step: ``terms`` hold the batch means, ``"loss"`` included."""
        size = len(targets)
        sums = self.sums[index]
        for name, value in terms.items():
            if name in sums:
                sums[name] = sums[name] + value.detach() * size
            else:
                sums[name] = value.detach() * size
        self.correct[index] += (logits.detach().argmax(dim=1) == targets).sum()
        bad = ~torch.isfinite(terms["loss"].detach()) & (self.first_bad_step[index] < 0)
        self.first_bad_step[index] = torch.where(
            bad, torch.full_like(self.first_bad_step[index], step), self.first_bad_step[index]
        )

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
