"""Where and in what precision a run computes: device choice, autocast, and the data-parallel world.

Used by the engine, the teacher-logit cache, evaluation and analysis; it imports none of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name is checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for but CUDA is not available here: use --device cpu or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def uses_bf16(amp: str, device: torch.device) -> bool:
    """``amp: bf16`` always; ``amp: auto`` on CUDA only; ``amp: off`` never."""
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


def autocast_context(config: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when :func:`uses_bf16` says so for ``config.amp``; otherwise nothing."""
    if uses_bf16(config.amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
