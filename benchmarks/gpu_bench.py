"""GPU throughput of kdlab's engine on synthetic CIFAR-100-shaped data, and projected wall times.

Arms (each: one warm-up epoch, then one timed epoch of ``Trainer.train_epoch``, test set included):

1. teacher training: WRN-28-4, cross-entropy;
2. KD, live teacher: WRN-28-4 -> WRN-16-2;
3. KD, teacher-logit cache (on ``--cache-images`` images: the build is 162 teacher passes);
4. 8 students in lockstep, live teacher;
5. 8 students in lockstep, cache.

For each: images/s (whole epoch; and the step loop alone as the engine logs it), achieved TFLOP/s
from ``torch.utils.flop_counter`` counts against the device's bf16 dense peak, and for arm 2 the
number of host-device synchronisations inside the epoch (``torch.cuda.set_sync_debug_mode``).
Projections: the paper's 200-epoch WRN-28-4 -> WRN-16-2 run (50k images, live and cached) and the
50-student alpha x tau grid (groups of 8 in lockstep on one cache).

    benchmarks/gpu.sh              # one H100/H200, under 8 minutes
    benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU: proves the script runs
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from common import flops_per_image, machine, register_dataset, run_config, save_random_teacher, timed

from kdlab.engine import Trainer

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's datasheets, matched against the device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0}
PAPER_EPOCHS, PAPER_TRAIN_IMAGES, GRID_STUDENTS, LOCKSTEP_GROUP = 200, 50_000, 50, 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models and sizes on the CPU")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--cache-images", type=int, default=10_000, help="images of the cache arms")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher", default="wrn-28-4")
    parser.add_argument("--student", default="wrn-16-2")
    parser.add_argument("--compile", action="store_true", help="torch.compile teacher and students")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.test_images, args.cache_images, args.batch_size = 128, 64, 32, 32
        args.teacher, args.student = "wrn-10-2", "wrn-10-1"
    return args


def device_peak() -> float | None:
    """The device's bf16 dense peak in TFLOP/s, or None (CPU, unknown GPU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class SyncWatch:
    """The training loader, counting CUDA synchronisations from its first batch to its end."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.count = loader, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for batch in self.loader:
                    torch.cuda.set_sync_debug_mode("warn")
                    yield batch
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.count = sum("synchroniz" in str(warning.message) for warning in caught)


def run_arm(configs: list, flops_per_image: float, watch_syncs: bool = False) -> dict[str, float]:
    """Set up a Trainer for ``configs`` (cache build included), warm up one epoch, time the next.

    ``flops_per_image``: FLOPs of one image through the arm's step (all its models together).
    """
    setup, trainer = timed(lambda: Trainer(configs))
    students = [trainer.build_student(config, resume=False, overwrite=True) for config in configs]
    trainer.train_epoch(students, 0)  # warm-up: cuDNN autotuning, compilation, allocator growth
    watch = None
    if watch_syncs and torch.cuda.is_available():
        watch = trainer.train_loader = SyncWatch(trainer.train_loader)
    synchronize()
    epoch, _ = timed(lambda: (trainer.train_epoch(students, 1), synchronize()))
    epoch_s = epoch.wall
    images = len(trainer.splits.train)
    loop_rate = students[0].metrics[-1]["train_images_per_s"]
    return {
        "setup_s": setup.wall,
        "images": images,
        "images_per_s": images / epoch_s,
        "loop_images_per_s": loop_rate,
        "tflops": loop_rate * flops_per_image / 1e12,
        # The paper's epoch: 50k images through the step loop, plus what this epoch spent outside it
        # (the test set, checkpoints), which does not grow with the training set.
        "paper_epoch_s": PAPER_TRAIN_IMAGES / loop_rate + (epoch_s - images / loop_rate),
        "syncs": watch.count if watch is not None else math.nan,
    }


def main() -> None:
    args = parse_args()
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    full, splits = register_dataset("synthetic", args.images, args.test_images, name="bench-full")
    subset, _ = register_dataset("synthetic", args.cache_images, args.test_images, name="bench-cache")
    teacher_flops = flops_per_image(args.teacher, splits, train=False)
    teacher_step_flops = flops_per_image(args.teacher, splits, train=True)
    student_flops = flops_per_image(args.student, splits, train=True)
    peak = device_peak()
    print(f"machine: {machine()}; device {device}; bf16 dense peak {peak or 'unknown'} TFLOP/s")
    print(
        f"data: synthetic CIFAR-100-shaped, {args.images} train / {args.test_images} test images, batch "
        f"{args.batch_size}; cache arms on {args.cache_images} images; compile {args.compile}; channels_last "
        f"{not args.no_channels_last}; FLOP/image: teacher forward {teacher_flops / 1e9:.2f} G, teacher step "
        f"{teacher_step_flops / 1e9:.2f} G, student step {student_flops / 1e9:.2f} G"
    )
    shared = {
        "device": device,
        "amp": "bf16" if device == "cpu" else "auto",  # auto = bf16 on CUDA; opt-in on the CPU
        "channels_last": not args.no_channels_last,
        "compile": args.compile,
        "optim": {"batch_size": args.batch_size},
    }
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        teacher = save_random_teacher(folder / "teacher.pt", args.teacher, splits)
        kd = {
            "teacher": str(teacher),
            "loss": "kl",
            "alpha": 0.9,
            "tau": 4.0,
            "cache_dir": str(folder / "cache"),
        }

        def students(name: str, count: int, cache: bool) -> list:
            data = subset if cache else full
            return [
                run_config(data, args.student, folder / name / str(i), kd={**kd, "cache": cache}, **shared)
                for i in range(count)
            ]

        group = LOCKSTEP_GROUP
        arms = {
            "teacher training": run_arm(
                [run_config(full, args.teacher, folder / "teacher-run", **shared)], teacher_step_flops
            ),
            "KD, live teacher": run_arm(
                students("live", 1, False), teacher_flops + student_flops, watch_syncs=True
            ),
            "KD, cache": run_arm(students("cache", 1, True), student_flops),
            f"{group} students lockstep, live": run_arm(
                students("lockstep", group, False), teacher_flops + group * student_flops
            ),
            f"{group} students lockstep, cache": run_arm(
                students("lockstep-cache", group, True), group * student_flops
            ),
        }

    print(
        f"\n{'arm':<28} {'img/s':>9} {'loop img/s':>11} {'TFLOP/s':>8} {'of peak':>8} {'syncs in epoch':>15}"
    )
    for name, result in arms.items():
        of_peak = f"{100 * result['tflops'] / peak:>7.1f}%" if peak else f"{'-':>8}"
        syncs = "-" if math.isnan(result["syncs"]) else f"{result['syncs']:.0f}"
        print(
            f"{name:<28} {result['images_per_s']:>9.0f} {result['loop_images_per_s']:>11.0f} "
            f"{result['tflops']:>8.2f} {of_peak} {syncs:>15}"
        )
    views = 162  # CIFAR: (2 * 4 + 1)^2 crops x 2 flips
    # The cache arm's setup is mostly the build; counting all of it makes the rate a lower bound.
    build_rate = views * arms["KD, cache"]["images"] / arms["KD, cache"]["setup_s"]
    build_s = views * PAPER_TRAIN_IMAGES / build_rate
    groups = math.ceil(GRID_STUDENTS / group)
    projections = {
        "paper's KD run, live teacher": PAPER_EPOCHS * arms["KD, live teacher"]["paper_epoch_s"],
        "paper's KD run, cache + build": PAPER_EPOCHS * arms["KD, cache"]["paper_epoch_s"] + build_s,
        f"{GRID_STUDENTS}-student grid, lockstep, live": groups
        * PAPER_EPOCHS
        * arms[f"{group} students lockstep, live"]["paper_epoch_s"],
        f"{GRID_STUDENTS}-student grid, lockstep + cache + build": groups
        * PAPER_EPOCHS
        * arms[f"{group} students lockstep, cache"]["paper_epoch_s"]
        + build_s,
    }
    print(
        f"\ncache build: >= {build_rate:.0f} views/s -> {build_s / 60:.1f} min for CIFAR-100 (50k images x 162 views)"
    )
    print(f"projected wall time ({PAPER_EPOCHS} epochs of 50k images, test set every epoch):")
    for name, seconds in projections.items():
        print(f"  {name:<44} {seconds / 60:>8.1f} min")


if __name__ == "__main__":
    main()
