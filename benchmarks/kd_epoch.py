"""One KD epoch, teacher WRN-28-4 -> student WRN-16-2: kdlab's engine against the official loop.

The baseline follows the loop of the paper's code (jhoon-oh/kd_data, tools/traineval.py): a
torchvision-style Dataset that turns each uint8 array into a PIL image and applies RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor and Normalize per image, a DataLoader (batch 128, shuffled, 4 workers,
as the official setter), fp32 NCHW models, the teacher run on every batch; and after each epoch the
whole (augmented) training set evaluated again by student and teacher (eval mode, without no_grad,
a ``.item()`` per batch), then the test set. kdlab runs ``Trainer.train_epoch`` (data on the device,
batched crop/flip, test set every epoch, no training-set re-evaluation) in three modes: its CPU
default (fp32), bf16 autocast (``amp: bf16``, opt-in on CPU), and bf16 with the teacher-logit cache.

Every time is measured in this run on this machine, the arms interleaved, and each reported as the
best of ``--repeats`` epochs (other processes on a shared machine only ever add time); the ratios
are what to read.

    .venv/bin/python benchmarks/kd_epoch.py --images 1024 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdlab.cache import ViewGrid
from kdlab.data import DatasetSplits, TensorData
from kdlab.engine import Trainer
from kdlab.models import create_model
from kdlab.teacher import load_teacher

KDLAB_MODES = {  # name -> config overrides
    "kdlab fp32 (CPU default)": {"amp": "auto"},
    "kdlab bf16 (amp: bf16)": {"amp": "bf16"},
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


# --- the official loop ---------------------------------------------------------------------------


class PILImageDataset(Dataset):
    """torchvision's CIFAR/FashionMNIST ``__getitem__``: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, data: TensorData, transform: transforms.Compose) -> None:
        images = data.images.cpu().permute(0, 2, 3, 1).numpy()  # [N, H, W, C] like torchvision's .data
        self.images = images[..., 0] if images.shape[-1] == 1 else images
        self.targets = data.labels.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index], mode="L" if self.images.ndim == 3 else None)
        return self.transform(image), self.targets[index]


def official_loaders(splits: DatasetSplits, batch_size: int, workers: int) -> tuple[DataLoader, DataLoader]:
    """The official setter's train (crop + flip) and test loaders."""
    normalize = [transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)]
    train_transform = transforms.Compose(
        [
            transforms.RandomCrop(splits.image_size, padding=splits.pad),
            transforms.RandomHorizontalFlip(),
            *normalize,
        ]
    )
    train = PILImageDataset(splits.train, train_transform)
    test = PILImageDataset(splits.test, transforms.Compose(normalize))
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, pin_memory=False, num_workers=workers),
        DataLoader(test, batch_size=batch_size, pin_memory=False, num_workers=workers),
    )


def official_kd_loss(output, label, teacher_output, alpha: float, temperature: float) -> torch.Tensor:
    """tools/losses.py ``kd_loss``: batchmean KLDiv of softened outputs x alpha T^2 + (1 - alpha) CE."""
    kd = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(output / temperature, dim=1), F.softmax(teacher_output / temperature, dim=1)
    )
    return kd * (alpha * temperature * temperature) + nn.CrossEntropyLoss()(output, label) * (1.0 - alpha)


def official_eval(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """tools/traineval.py ``eval_model``: eval mode but no ``no_grad``, a ``.item()`` per batch."""
    teacher.eval()
    student.eval()
    losses, labels, predictions = [], [], []
    for image, label in loader:
        image, label = image.type(torch.FloatTensor), label.type(torch.LongTensor)
        pred_label = student(image)
        teacher_label = teacher(image)
        losses.append(official_kd_loss(pred_label, label, teacher_label, 0.9, 4.0).item())
        labels.append(label.cpu().detach().numpy())
        predictions.append(pred_label.cpu().detach().numpy())
    accuracy = np.mean(np.argmax(np.concatenate(predictions), axis=1) == np.concatenate(labels))
    return float(np.mean(losses)), float(accuracy)


class OfficialLoop:
    """The official training loop's state: fp32 NCHW teacher and student, SGD, the two loaders."""

    def __init__(self, splits: DatasetSplits, teacher_path: Path, args: argparse.Namespace) -> None:
        self.teacher = load_teacher(str(teacher_path), torch.device("cpu"))
        torch.manual_seed(0)
        self.student = create_model(args.student, splits.num_classes, splits.in_channels, splits.image_size)
        weights = [p for p in self.student.parameters() if p.ndim > 1]
        others = [p for p in self.student.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": others, "weight_decay": 0}, {"params": weights, "weight_decay": 5e-4}],
            lr=0.1, momentum=0.9, nesterov=True,
        )  # fmt: skip
        self.train_loader, self.test_loader = official_loaders(splits, args.batch_size, args.workers)

    def train_steps(self) -> None:
        self.student.train()
        for image, label in self.train_loader:
            image, label = image.type(torch.FloatTensor), label.type(torch.LongTensor)
            pred_label = self.student(image)
            teacher_label = self.teacher(image)
            self.optimizer.zero_grad()
            loss = official_kd_loss(pred_label, label, teacher_label, 0.9, 4.0)
            loss.backward()
            self.optimizer.step()

    def epoch(self) -> dict[str, Seconds]:
        """Seconds of each part of one official epoch."""
        train, _ = timed(self.train_steps)
        reevaluate, _ = timed(lambda: official_eval(self.teacher, self.student, self.train_loader))
        test, _ = timed(lambda: official_eval(self.teacher, self.student, self.test_loader))
        return {"train steps": train, "re-evaluate training set": reevaluate, "test set": test}


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
        official = None if args.skip_baseline else OfficialLoop(splits, teacher, args)
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
