"""Where and in what precision a run computes: device choice, autocast, and the data-parallel world.

Used by the engine, the teacher-logit cache, evaluation and analysis; it imports none of them.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import UserError, shown

_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?|mps")


def check_device(name: str) -> None:
    """A UserError for a device name kdlab cannot train on here: not one of auto, cpu, cuda, cuda:N,
    mps (``meta``, a typo), or MPS on a machine without it. (CUDA's availability: resolve_device.)"""
    if not _DEVICE.fullmatch(name):
        raise UserError(
            f"--device {shown(name)} is not a device kdlab trains on: use auto, cpu, cuda, cuda:N or mps"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available here: use --device cpu or auto")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name is checked against this machine."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for but CUDA is not available here: use --device cpu or auto"
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        # Always with its index: streams, graphs and memory pools are made on the device selected
        # with it (kdlab.engine.step.CudaGraphs), never on whichever device happens to be current.
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise UserError(
                f"--device {name} names GPU {index}, but this machine has {count} (cuda:0 to cuda:{count - 1}): "
                "choose one of them"
            )
        device = torch.device("cuda", index)
    return device


# What ``amp: auto`` means on each kind of device, chosen from measurements (docs/benchmarks.md):
# on an H200 at batch 128 a KD epoch took 0.95-1.05 s under bf16 autocast against 0.74-0.82 s in
# fp32 (whose convolutions cuDNN runs as TF32 by default): a step bound by kernel launches gains
# nothing from bf16 arithmetic and pays for the casts. On this project's CPU bf16 is 2.5x faster but
# changes the numerics, so there it stays an opt-in. ``amp: bf16`` opts in anywhere.
AUTO_BF16 = {"cuda": False, "cpu": False}


def uses_bf16(amp: str, device: torch.device) -> bool:
    """``amp: bf16`` always; ``amp: off`` never; ``amp: auto`` where :data:`AUTO_BF16` says so."""
    return amp == "bf16" or (amp == "auto" and AUTO_BF16.get(device.type, False))


def autocast_context(config: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when :func:`uses_bf16` says so for ``config.amp``; otherwise nothing.

    Without autocast's weight-cast cache, which a captured CUDA graph cannot hold (each weight is
    cast once per forward anyway, so nothing is lost).
    """
    if uses_bf16(config.amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@dataclass
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """In place over all ranks (``op`` sum, min or max); the identity in a one-process run."""
        if self.size > 1:
            torch.distributed.all_reduce(tensor, getattr(torch.distributed.ReduceOp, op.upper()))
        return tensor


def current_world() -> World:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return World()
