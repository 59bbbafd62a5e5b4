"""Data-parallel processes: torchrun's environment in, one process per device, rank 0 decides and writes.

``torchrun --nproc_per_node=N -m kdlab train ...`` starts N copies of kdlab with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``kdlab train ... --nproc
N`` does the same by handing its own command line to ``torch.distributed.run`` (``--standalone``,
one machine). The engine calls :func:`init_from_env` before it builds anything: with
``WORLD_SIZE > 1`` the process joins the group (backend nccl on CUDA, gloo on CPU), takes the GPU
``cuda:LOCAL_RANK``, and leaves the group when the process exits. Without torchrun's variables
nothing happens and the run is the one-process case of the same code.

What each rank does is the engine's business (it shards every epoch's permutation, all-reduces
the metric sums, and only rank 0 writes); this module owns joining, leaving, launching, and
:func:`main_process_decides`, which makes a check that only rank 0 may run (it looks at files rank
0 is about to write) end the same way on every rank.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from kdlab.errors import UserError

T = TypeVar("T")

# Commands that train, and so may be launched as several processes.
LAUNCHABLE_COMMANDS = ("train", "distill")
# The most processes --nproc and --jobs start: one per GPU, or per CPU core on CPU (never a fork bomb).
MOST_PROCESSES = max(8, os.cpu_count() or 1)


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's global rank (``RANK``), 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group once per process; returns the device this process trains on.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (whatever index ``--device`` named) and the
    backend is nccl; on CPU the backend is gloo. A group the caller initialised already is used as is.
    """
    world_size = env_world_size()
    if world_size <= 1 and not is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process with LOCAL_RANK {local_rank} has no GPU (this machine has "
                f"{torch.cuda.device_count()}): launch at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not is_initialized():
        if not dist.is_available():
            raise UserError("this PyTorch build has no torch.distributed: run with one process")
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise UserError(
                f"WORLD_SIZE={world_size} is set but {', '.join(missing)} are not: start several "
                "processes with torchrun or `kdlab ... --nproc N`, or unset WORLD_SIZE"
            )
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return device


def _leave() -> None:
    if is_initialized():
        dist.destroy_process_group()


def main_process_decides(check: Callable[[], T]) -> T:
    """Run ``check`` on rank 0 only and return its result on every rank; its UserError too.

    For decisions about files only rank 0 writes (may ``--out`` be used, is there a checkpoint):
    other ranks must not look, as rank 0 may already be writing, but must stop with the same
    one-line error rather than wait for a rank that has left.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return check()
    outcome: list[tuple[bool, object] | None] = [None]
    if dist.get_rank() == 0:
        try:
            outcome = [(True, check())]
        except UserError as error:
            outcome = [(False, str(error))]
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise UserError(str(value))
    return value  # type: ignore[return-value]


def split_nproc(argv: list[str]) -> tuple[int, list[str]]:
    """``["train", ..., "--nproc", "2", ...]`` -> ``(2, argv without the option)``; 1 when absent."""
    nproc, rest, index = 1, [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--nproc" or arg.startswith("--nproc="):
            text = arg.partition("=")[2] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            index += 1 if "=" in arg else 2
            if not text.isdigit() or len(text) > 9 or int(text) < 1:
                raise UserError(f"--nproc {text[:40]!r} is not a positive integer: e.g. --nproc 2")
            nproc = int(text)
            if nproc > MOST_PROCESSES:
                raise UserError(
                    f"--nproc {nproc} is more processes than this machine runs (at most {MOST_PROCESSES}: one per "
                    "GPU, or per CPU core): e.g. --nproc 2"
                )
        else:
            rest.append(arg)
            index += 1
    return nproc, rest


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``kdlab ARGV`` as ``nproc`` processes through ``torch.distributed.run --standalone``.

    Returns the exit code to leave with: 0, a failing rank's code (2 for a user error), or
    ``128 + signal`` when this launcher was stopped by a signal (its workers got SIGTERM, saved and
    stopped). Among failed ranks, one that exited by itself is preferred (rank 0 first, so its
    one-line message is the one that counts) over one that torchrun's agent killed because another
    rank had already failed: when every rank fails on the same user error, the slower one is often
    stopped by the agent's SIGTERM, and its signal is not what went wrong.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun's agent logs each worker failure as a multi-line report and each signal as a warning;
    # the workers' own one-line messages (and our exit code) already say what happened. Its loggers
    # set their own levels, so each is quietened, not just the parent.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "kdlab", *argv]
    )
    try:
        run(args)
    except ChildFailedError as error:
        return _exit_code({rank: failure.exitcode for rank, failure in error.failures.items()})
    except SignalException as error:
        return 128 + int(error.sigval)
    return 0


def _exit_code(codes: dict[int, int]) -> int:
    """The exit code of a failed launch from each failed rank's code (negative: killed by that signal)."""
    by_preference = sorted(codes, key=lambda rank: (codes[rank] <= 0, rank))
    code = codes[by_preference[0]]
    return 128 - code if code < 0 else code


def launch_if_requested(argv: list[str]) -> tuple[int | None, list[str]]:
    """Handle ``--nproc N`` of a training command line: ``(launcher's exit code, argv)`` when it ran
    ``N > 1`` processes, else ``(None, argv without --nproc)`` for this process to run.

    Inside a torchrun worker (``LOCAL_RANK`` set) the option is dropped, never relaunched.
    """
    if not argv or argv[0] not in LAUNCHABLE_COMMANDS:
        return None, argv
    nproc, rest = split_nproc(argv)
    if "LOCAL_RANK" in os.environ:  # a rank: it must not outlive its launcher (kill -9 of it)
        from kdlab.experiments.pool import die_with_parent

        die_with_parent(os.getppid())
        return None, rest
    if nproc == 1:
        return None, rest
    return launch(nproc, rest), rest
