"""One KD epoch, teacher WRN-28-4 -> student WRN-16-2: kdlab's engine against the official loop.

The baseline follows the loop of the paper's code (``official.py``: PIL transforms per image, a
4-worker DataLoader, fp32 NCHW, the teacher on every batch, the training set re-evaluated after each
epoch, then the test set). kdlab runs ``Trainer.train_epoch`` (data on the device, batched crop/flip,
test set every epoch, no training-set re-evaluation) in five modes: its CPU default (fp32), fp32
with channels_last, fp32 with the teacher-logit cache, bf16 autocast (``amp: bf16``, opt-in on
CPU), and bf16 with the cache.

Every time is measured in this run on this machine, the arms interleaved, and each reported as the
best of ``--repeats`` epochs (other processes on a shared machine only ever add time); the ratios
are what to read.

    .venv/bin/python benchmarks/kd_epoch.py --images 1024 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import (
    Seconds,
    best,
    flops_per_image,
    machine,
    register_dataset,
    run_config,
    save_random_teacher,
    set_threads,
    timed,
)
from official import OfficialLoop

from kdlab.cache import ViewGrid
from kdlab.data import DatasetSplits
from kdlab.engine import Trainer
from kdlab.models import create_model
from kdlab.teacher import load_teacher

KDLAB_MODES = {  # name -> config overrides (kd.cache set: auto would decide from the run's epochs)
    "kdlab fp32 (CPU default)": {"amp": "auto", "kd": {"cache": False}},
    "kdlab fp32 + channels_last": {"amp": "auto", "channels_last": True, "kd": {"cache": False}},
    "kdlab fp32 + teacher-logit cache": {"amp": "auto", "kd": {"cache": True}},
    "kdlab bf16 (amp: bf16)": {"amp": "bf16", "kd": {"cache": False}},
    "kdlab bf16 + teacher-logit cache": {"amp": "bf16", "kd": {"cache": True}},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024, help="training images (CPU: ~1024-2048)")
    parser.add_argument("--test-images", type=int, default=None, help="default: images / 5, as CIFAR")
    parser.add_argument("--data", default="synthetic", help="synthetic (CIFAR-100-shaped) or fashion-mnist")
    parser.add_argument("--teacher", default="wrn-28-4")
    parser.add_argument("--student", default="wrn-16-2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="the official loop's DataLoader workers")
    parser.add_argument(
        "--repeats", type=int, default=2, help="epochs of each arm, interleaved; the best of them is reported"
    )
    parser.add_argument(
        "--cache-stand-in",
        default="mlp-64",
        help="teacher that builds the cache for the cache mode: the lookup costs the same whatever the "
        "teacher, and a WRN-28-4 build (162 teacher passes over the data) is projected instead of run",
    )
    parser.add_argument("--skip-baseline", action="store_true", help="time kdlab only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    return parser.parse_args()


# --- kdlab ---------------------------------------------------------------------------------------


class KdlabArm:
    """A Trainer and its student for one mode; ``epoch()`` times ``Trainer.train_epoch``."""

    def __init__(
        self, dataset: str, teacher: Path, folder: Path, args: argparse.Namespace, **overrides
    ) -> None:
        kd = {"teacher": str(teacher), "loss": "kl", "alpha": 0.9, "tau": 4.0, **overrides.pop("kd", {})}
        kd["cache_dir"] = str(folder / "cache")
        config = run_config(
            dataset,
            args.student,
            folder / "run",
            device="cpu",
            kd=kd,
            optim={"batch_size": args.batch_size},
            **overrides,
        )
        self.setup, self.trainer = timed(lambda: Trainer([config]))
        self.student = self.trainer.build_student(config, resume=False, overwrite=True)
        self.epochs = 0

    def epoch(self) -> Seconds:
        seconds, _ = timed(lambda: self.trainer.train_epoch([self.student], self.epochs))
        self.epochs += 1
        return seconds


def teacher_inference_rate(teacher: Path, splits: DatasetSplits, batch_size: int, amp: bool) -> float:
    """Images/s of the teacher's forward under inference mode (what a cache build runs), 3 batches."""
    model = load_teacher(str(teacher), torch.device("cpu"))
    inputs = torch.randn(batch_size, splits.in_channels, splits.image_size, splits.image_size)
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), context:
        model(inputs)  # warm-up
        seconds, _ = timed(lambda: [model(inputs) for _ in range(3)])
    return 3 * batch_size / seconds.wall


def warm_up(splits: DatasetSplits, args: argparse.Namespace) -> None:
    """One forward+backward of each model in each precision, so no arm pays oneDNN's first-call setup."""
    inputs = torch.randn(args.batch_size, splits.in_channels, splits.image_size, splits.image_size)
    for name in (args.teacher, args.student):
        model = create_model(name, splits.num_classes, splits.in_channels, splits.image_size)
        for amp in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(inputs).float().sum().backward()


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    test_images = args.test_images or max(args.batch_size, args.images // 5)
    dataset, splits = register_dataset(args.data, args.images, test_images)
    teacher_flops = flops_per_image(args.teacher, splits, train=False)
    student_flops = flops_per_image(args.student, splits, train=True)
    views = ViewGrid(splits.pad, splits.flip).num_views
    print(f"machine: {machine()}")
    print(
        f"data: {args.data}, {args.images} training / {test_images} test images of "
        f"{splits.in_channels}x{splits.image_size}x{splits.image_size}, {splits.num_classes} classes, "
        f"batch {args.batch_size}; teacher {args.teacher} ({teacher_flops / 1e9:.2f} GFLOP/image forward), "
        f"student {args.student} ({student_flops / 1e9:.2f} GFLOP/image train step)"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        teacher = save_random_teacher(folder / "teacher.pt", args.teacher, splits)
        stand_in = save_random_teacher(folder / "stand-in.pt", args.cache_stand_in, splits)
        warm_up(splits, args)
        official = (
            None
            if args.skip_baseline
            else OfficialLoop(splits, teacher, args.student, args.batch_size, args.workers)
        )
        arms = {}
        for index, (name, overrides) in enumerate(KDLAB_MODES.items()):
            uses_cache = overrides.get("kd", {}).get("cache", False)
            arms[name] = KdlabArm(
                dataset, stand_in if uses_cache else teacher, folder / f"arm{index}", args, **overrides
            )
        official_times: list[dict[str, Seconds]] = []
        kdlab_times: dict[str, list[Seconds]] = {name: [] for name in arms}
        for repeat in range(args.repeats):  # interleaved, so that load from other processes hits every arm
            if official is not None:
                official_times.append(official.epoch())
            for name, arm in arms.items():
                kdlab_times[name].append(arm.epoch())
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        rate = teacher_inference_rate(teacher, splits, 2 * args.batch_size, amp=True)

    print(f"\nbest of {args.repeats} interleaved epoch(s) per arm; speed-up = official epoch / arm epoch")
    header = f"{'arm':<40} {'wall s':>7} {'CPU s':>7} {'img/s':>6}"
    print(f"{header}   speed-up wall (full / w/o re-eval)   speed-up CPU (full / w/o re-eval)")
    row = "{:<40} {:>7.1f} {:>7.1f} {:>6.1f}"
    if official_times:
        parts = {part: best([times[part] for times in official_times]) for part in official_times[0]}
        for part, seconds in parts.items():
            images = test_images if part == "test set" else args.images
            print(row.format(f"official: {part}", seconds.wall, seconds.cpu, images / seconds.wall))
        full = parts["train steps"] + parts["re-evaluate training set"] + parts["test set"]
        without = parts["train steps"] + parts["test set"]
        print(row.format("official: epoch", full.wall, full.cpu, args.images / full.wall))
        print(
            row.format(
                "official: epoch w/o re-evaluation", without.wall, without.cpu, args.images / without.wall
            )
        )
    for name, times in kdlab_times.items():
        seconds = best(times)
        line = row.format(name, seconds.wall, seconds.cpu, args.images / seconds.wall)
        if official_times:
            line += f"   {full.wall / seconds.wall:>17.2f}x / {without.wall / seconds.wall:.2f}x"
            line += f"   {full.cpu / seconds.cpu:>17.2f}x / {without.cpu / seconds.cpu:.2f}x"
        print(line)
    cache_arm = arms["kdlab bf16 + teacher-logit cache"]
    build = views * args.images / rate
    print(
        f"\ncache: {views} views per image; built here by the stand-in {args.cache_stand_in} in "
        f"{cache_arm.setup.wall:.1f} s. A {args.teacher} build = {views} teacher passes over the data = "
        f"{views} x {args.images} / {rate:.0f} img/s (bf16 inference measured here) = {build:.0f} s; it pays "
        f"off after {views} student-epochs (students x epochs), since each replaces one teacher pass."
    )


if __name__ == "__main__":
    main()
