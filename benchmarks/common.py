"""What the benchmarks share: synthetic datasets in kdlab's registry, random teachers, FLOP counts,
run configs and a description of the machine.

The benchmarks go through kdlab's public engine (``Trainer``, ``train``, ``train_lockstep``), so a
synthetic dataset is registered under a name like any other and loaded by the engine itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdlab.config import RunConfig, build_config
from kdlab.data import DATASETS, DatasetSplits, TensorData, load_dataset
from kdlab.losses import loss_terms
from kdlab.models import create_model
from kdlab.runs import CHECKPOINT_FORMAT, atomic_torch_save

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def synthetic_splits(
    num_train: int, num_test: int, num_classes: int = 100, channels: int = 3, size: int = 32, seed: int = 0
) -> DatasetSplits:
    """CIFAR-100-shaped random data: uint8 ``[N, C, H, W]`` images, balanced labels, pad 4 + flips.

    Pixels are random: a benchmark measures time, and every operation costs the same on any pixels.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorData:
        images = torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)
        labels = torch.randperm(n, generator=generator) % num_classes
        return TensorData(images, labels)

    return DatasetSplits(
        name="synthetic",
        train=split(num_train),
        test=split(num_test),
        num_classes=num_classes,
        in_channels=channels,
        image_size=size,
        mean=CIFAR100_MEAN[:channels] if channels == 3 else (0.5,) * channels,
        std=CIFAR100_STD[:channels] if channels == 3 else (0.25,) * channels,
        pad=4,
        flip=True,
        class_names=[f"class_{i}" for i in range(num_classes)],
    )


def register_dataset(
    data: str, images: int, test_images: int, seed: int = 0, name: str | None = None, size: int = 32
) -> tuple[str, DatasetSplits]:
    """Register the benchmark's dataset in kdlab's registry as ``name``; returns ``(name, splits)``.

    ``data``: ``synthetic`` (CIFAR-100-shaped) or ``fashion-mnist`` (a class-balanced subset of the
    real files, 28x28x1, pad 2 + flips). ``name`` defaults to ``bench-{data}``; ``size``: the synthetic
    images' side (32, as CIFAR's).
    """
    if data == "synthetic":
        splits = synthetic_splits(images, test_images, seed=seed, size=size)
    elif data == "fashion-mnist":
        splits = load_dataset("fashion-mnist", subset=images, test_subset=test_images, subset_seed=seed)
    else:
        raise SystemExit(f"--data {data}: choose synthetic or fashion-mnist")
    name = name or f"bench-{data}"
    DATASETS.register(name)(lambda **_: dataclasses.replace(splits))  # a copy: trainers reassign splits
    return name, splits


def save_random_teacher(path: Path, model: str, splits: DatasetSplits, seed: int = 0) -> Path:
    """A kdlab checkpoint of a randomly initialised ``model`` (timing does not depend on the weights)."""
    torch.manual_seed(seed)
    network = create_model(model, splits.num_classes, splits.in_channels, splits.image_size)
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_name": model,
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "image_size": splits.image_size,
            "model": network.state_dict(),
        },
        path,
    )
    return path


def run_config(dataset: str, model: str, out: Path, **overrides: Any) -> RunConfig:
    """A benchmark run: one epoch, CPU threads as set, no progress bars or TensorBoard.

    ``overrides`` are top-level keys, or ``kd``/``optim``/``data`` dicts merged into theirs.
    """
    base: dict[str, Any] = {
        "model": model,
        "out": str(out),
        "progress": False,
        "tensorboard": False,
        "data": {"name": dataset},
        "optim": {"epochs": 1},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(base=base)


def _model_and_batch(model: str, splits: DatasetSplits, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    network = create_model(model, splits.num_classes, splits.in_channels, splits.image_size)
    return network, torch.randn(batch, splits.in_channels, splits.image_size, splits.image_size)


def _one_pass(network: torch.nn.Module, inputs: torch.Tensor, train: bool) -> None:
    """A teacher's forward (``train=False``: eval mode, inference mode) or a student's step
    (``train=True``: forward, cross-entropy, backward)."""
    if train:
        logits = network.train()(inputs)
        sum(
            loss_terms("ce", logits.float(), None, torch.zeros(len(inputs), dtype=torch.int64)).values()
        ).backward()
    else:
        with torch.inference_mode():
            network.eval()(inputs)


def flops_per_image(model: str, splits: DatasetSplits, train: bool, batch: int = 8) -> float:
    """FLOPs per image counted by ``torch.utils.flop_counter`` (convolutions and matmuls) in one
    teacher forward (``train=False``) or one student step (``train=True``; backward ~ 2x forward)."""
    network, inputs = _model_and_batch(model, splits, batch)
    counter = FlopCounterMode(display=False)
    with counter:
        _one_pass(network, inputs, train)
    return counter.get_total_flops() / batch


def seconds_per_image(model: str, splits: DatasetSplits, train: bool, batch: int, amp: bool) -> float:
    """Measured wall seconds per image of the same pass on the CPU (best of 3 batches after a warm-up)."""
    network, inputs = _model_and_batch(model, splits, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        _one_pass(network, inputs, train)
        return best([timed(lambda: _one_pass(network, inputs, train))[0] for _ in range(3)]).wall / batch


def lockstep_ceiling(students: int, teacher_flops: float, student_flops: float) -> float:
    """The most lockstep can gain over sequential runs: ``N (T + S) / (T + N S)``."""
    return students * (teacher_flops + student_flops) / (teacher_flops + students * student_flops)


class Seconds(NamedTuple):
    """Wall-clock and CPU seconds. CPU time counts every thread of this process plus the child
    processes it has reaped (DataLoader workers); unlike wall time it hardly grows when other
    processes share the cores, so on a busy machine its ratios are the steadier ones."""

    wall: float
    cpu: float

    def __add__(self, other: Seconds) -> Seconds:  # type: ignore[override]
        return Seconds(self.wall + other.wall, self.cpu + other.cpu)


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(function: Callable[[], Any]) -> tuple[Seconds, Any]:
    """``(Seconds, result)`` of one call."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = function()
    return Seconds(time.perf_counter() - wall, _cpu_seconds() - cpu), result


def best(times: list[Seconds]) -> Seconds:
    """The least wall and the least CPU time of several measurements of one thing (noise only adds)."""
    return Seconds(min(t.wall for t in times), min(t.cpu for t in times))


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads (None: leave torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


def machine() -> str:
    """One line: CPU model and cores (or the GPU), threads, torch version and the date."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads){gpu}, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}"
    )
