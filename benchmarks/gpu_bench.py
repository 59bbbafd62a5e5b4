"""GPU throughput of kdlab's engine on synthetic CIFAR-100-shaped data, against the official loop on
the same GPU, and projected wall times of the paper's runs.

Arms, all through kdlab's engine on the same ``--images`` training images (each: a Trainer, one
warm-up epoch, then the best of ``--epochs`` timed epochs of ``Trainer.train_epoch``, test set
included):

- teacher training (WRN-28-4, cross-entropy), captured;
- KD with a live teacher (WRN-28-4 -> WRN-16-2): eager fp32, eager bf16, captured fp32 (kdlab's
  default on CUDA), captured bf16, compiled + captured fp32 (``--no-compile`` drops it);
- KD with the teacher-logit cache (fp32, built once here: 162 teacher passes over the images);
- 8 students (alpha x tau grid points) sharing the teacher: lockstep (``stack: off``) and stacked
  (``stack: on``, one module), live and with the cache;
- the official structure (``official.py``: PIL transforms, 4 workers, fp32, training set
  re-evaluated), its epoch against kdlab's on the same images.

For each: images/s (whole epoch; and the step loop alone as the engine logs it), achieved TFLOP/s
from ``torch.utils.flop_counter`` counts against the device's bf16 dense peak, and for the KD arms
the host-device synchronisations inside an epoch (``torch.cuda.set_sync_debug_mode``). Then a check
that the captured step trains as the eager one does (deterministic kernels, weights compared), the
projections (the paper's 200-epoch run, the 50-student grid) and the issue's goals.

    benchmarks/gpu.sh              # one H100/H200, about 5 minutes
    benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU (eager: no CUDA graph): proves the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from common import (
    Seconds,
    best,
    flops_per_image,
    machine,
    register_dataset,
    run_config,
    save_random_teacher,
    timed,
)
from official import OfficialLoop

from kdlab.engine import Trainer

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's datasheets, matched against the device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0}
PAPER_EPOCHS, PAPER_TRAIN_IMAGES, PAPER_TEST_IMAGES, GRID_STUDENTS, GROUP = 200, 50_000, 10_000, 50, 8
GRID = [(alpha, tau) for alpha in (0.5, 0.9) for tau in (1.0, 3.0, 20.0, math.inf)]  # 8 students
CAPTURE_TOLERANCE = 1e-3  # the bound of tests/test_stacked.py (stacked vs standalone on the CPU)
GOALS = {
    "KD loop img/s": 60_000,
    "paper KD run (min)": 3.0,
    "50-student grid (min)": 60.0,
    "x official": 10.0,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models and sizes on the CPU")
    parser.add_argument("--images", type=int, default=10_000, help="training images of every arm")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per arm (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher", default="wrn-28-4")
    parser.add_argument("--student", default="wrn-16-2")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile arm")
    parser.add_argument(
        "--official-epochs", type=int, default=2, help="official-structure epochs (best kept)"
    )
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.batch_size, args.epochs, args.official_epochs = 96, 32, 1, 1
        args.teacher, args.student, args.no_compile = "wrn-10-2", "wrn-10-1", True
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


def run_arm(configs: list, flops: float, epochs: int, watch_syncs: bool = False) -> dict[str, float]:
    """A Trainer for ``configs`` (cache build included in its setup), one warm-up epoch (cuDNN
    autotuning, compilation, capture), then the best of ``epochs`` timed epochs.

    ``flops``: FLOPs of one image through the arm's step (all its models together).
    """
    setup, trainer = timed(lambda: Trainer(configs))
    students = [trainer.build_student(config, resume=False, overwrite=True) for config in configs]
    trainer.train_epoch(students, 0)
    watch = None
    if watch_syncs and torch.cuda.is_available():
        watch = trainer.train_loader = SyncWatch(trainer.train_loader)
    synchronize()
    times, rates = [], []
    for epoch in range(1, epochs + 1):
        seconds, _ = timed(lambda epoch=epoch: (trainer.train_epoch(students, epoch), synchronize()))
        times.append(seconds)
        rates.append(students[0].metrics[-1]["train_images_per_s"])
        if watch is not None:
            trainer.train_loader = watch.loader  # count the first timed epoch only
    epoch_s, loop_rate = best(times).wall, max(rates)
    images, tests = len(trainer.splits.train), len(trainer.splits.test)
    step = trainer.step
    return {
        "setup_s": setup.wall,
        "epoch_s": epoch_s,
        "images_per_s": images / epoch_s,
        "loop_images_per_s": loop_rate,
        "tflops": loop_rate * flops / 1e12,
        # The paper's epoch: 50k images through the step loop, plus the rest of this epoch (mostly its
        # test set) scaled to the paper's 10k test images.
        "paper_epoch_s": PAPER_TRAIN_IMAGES / loop_rate
        + max(0.0, epoch_s - images / loop_rate) * PAPER_TEST_IMAGES / tests,
        "syncs": watch.count if watch is not None else math.nan,
        "captured": step.graph is not None,
        "units": ", ".join(type(unit).__name__ for unit in step.units),
    }


def max_difference(runs: list[Path], others: list[Path]) -> float:
    """The largest difference between the weights and momentum of paired run folders."""
    worst = 0.0
    for run, other in zip(runs, others, strict=True):
        a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (run, other))
        pairs = [(a["model"][name].float(), value.float()) for name, value in b["model"].items()]
        pairs += [
            (a["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
            for key, value in b["optimizer"]["state"].items()
        ]
        worst = max([worst] + [(x - y).abs().max().item() for x, y in pairs])
    return worst


def check_capture(make, folder: Path) -> str:
    """Train the same students captured and eager (deterministic kernels, 2 epochs with a partial
    last batch), and compare their weights: the captured graph must train as the eager step does."""
    lines = []
    for label, count, stack in (("1 KD student", 1, "off"), ("4 stacked students", 4, "on")):
        runs, captured = {}, False
        for graph in (True, False):
            configs = make(folder / f"check-{count}-{graph}", count, stack, graph)
            trainer = Trainer(configs)
            trainer.fit([trainer.build_student(config, resume=False, overwrite=True) for config in configs])
            runs[graph] = [Path(config.out) for config in configs]
            captured = captured or (graph and trainer.step.graph is not None)
        difference = max_difference(runs[True], runs[False])
        verdict = "PASS" if difference <= CAPTURE_TOLERANCE else "FAIL"
        lines.append(
            f"  {label}: {'captured' if captured else 'NOT captured (eager on this device)'}; weights and "
            f"momentum after 2 epochs differ by {difference:.2e} (bitwise: {difference == 0.0}) -> {verdict} "
            f"(bound {CAPTURE_TOLERANCE:g})"
        )
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before CUDA starts)
    args = parse_args()
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    test_images = max(args.batch_size, args.images // 5)
    dataset, splits = register_dataset("synthetic", args.images, test_images, name="bench-gpu")
    teacher_flops = flops_per_image(args.teacher, splits, train=False)
    teacher_step_flops = flops_per_image(args.teacher, splits, train=True)
    student_flops = flops_per_image(args.student, splits, train=True)
    peak = device_peak()
    print(f"machine: {machine()}; device {device}; bf16 dense peak {peak or 'unknown'} TFLOP/s")
    print(
        f"data: synthetic CIFAR-100-shaped, {args.images} train / {test_images} test images, batch "
        f"{args.batch_size}; FLOP/image: teacher forward {teacher_flops / 1e9:.2f} G, teacher step "
        f"{teacher_step_flops / 1e9:.2f} G, student step {student_flops / 1e9:.2f} G",
        flush=True,
    )
    shared = {"device": device, "channels_last": True, "optim": {"batch_size": args.batch_size}}
    kd_flops = teacher_flops + student_flops
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

        def students(name: str, count: int, cache: bool = False, **settings: Any) -> list:
            points = GRID if count > 1 else [(0.9, 4.0)]
            return [
                run_config(
                    dataset,
                    args.student,
                    folder / name / str(i),
                    kd={**kd, "cache": cache, "alpha": alpha, "tau": tau},
                    **{**shared, **settings},
                )  # fmt: skip
                for i, (alpha, tau) in enumerate(points[:count])
            ]

        arms: dict[str, dict[str, float]] = {}

        def arm(name: str, configs: list, flops: float, watch_syncs: bool = False) -> None:
            try:  # one arm failing (an op that does not compile, say) must not lose the others
                result = arms[name] = run_arm(configs, flops, args.epochs, watch_syncs)
            except Exception as error:
                print(
                    f"  {name}: FAILED ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
                    flush=True,
                )
                return
            print(
                f"  {name}: {result['loop_images_per_s']:.0f} img/s in the step loop, epoch {result['epoch_s']:.2f} s "
                f"({'captured' if result['captured'] else 'eager'}; {result['units']})",
                flush=True,
            )

        eager, captured = {"cuda_graph": False}, {"cuda_graph": True}
        arm(
            "teacher training",
            [run_config(dataset, args.teacher, folder / "teacher-run", **shared)],
            teacher_step_flops,
        )
        arm("KD live, eager fp32", students("eager32", 1, amp="off", **eager), kd_flops, watch_syncs=True)
        arm("KD live, eager bf16", students("eager16", 1, amp="bf16", **eager), kd_flops)
        arm(
            "KD live, captured fp32",
            students("graph32", 1, amp="off", **captured),
            kd_flops,
            watch_syncs=True,
        )
        arm("KD live, captured bf16", students("graph16", 1, amp="bf16", **captured), kd_flops)
        if not args.no_compile:
            arm("KD live, compiled+captured fp32", students("compiled", 1, compile=True), kd_flops)
        arm("KD cache, captured fp32", students("cache", 1, cache=True), student_flops, watch_syncs=True)
        group_flops = teacher_flops + GROUP * student_flops
        arm(f"{GROUP} lockstep, live", students("lockstep", GROUP, stack="off"), group_flops)
        arm(f"{GROUP} stacked, live", students("stacked", GROUP, stack="on"), group_flops)
        arm(
            f"{GROUP} lockstep, cache",
            students("lockstep-c", GROUP, cache=True, stack="off"),
            GROUP * student_flops,
        )
        arm(
            f"{GROUP} stacked, cache",
            students("stacked-c", GROUP, cache=True, stack="on"),
            GROUP * student_flops,
        )

        official = OfficialLoop(splits, teacher, args.student, args.batch_size, 4, device)
        official_epochs = [official.epoch() for _ in range(args.official_epochs + 1)][1:]  # first: warm-up
        official_s = best([sum(parts.values(), Seconds(0.0, 0.0)) for parts in official_epochs])
        official_train_s = best([parts["train steps"] for parts in official_epochs]).wall
        print(
            f"  official structure: epoch {official_s.wall:.2f} s (training loop {official_train_s:.2f} s)",
            flush=True,
        )

        def capture_configs(root: Path, count: int, stack: str, graph: bool) -> list:
            made = students(
                str(root.relative_to(folder)), count, stack=stack, cuda_graph=graph, deterministic=True
            )
            for config in made:
                config.optim.epochs = 2
            return made

        check = check_capture(capture_configs, folder)
        cache_records = list((folder / "cache").glob("*.json"))
        build_s = json.loads(cache_records[0].read_text())["build_time_s"] if cache_records else math.nan

    report(args, arms, official_s, official_train_s, check, build_s, peak)


def report(args, arms, official_s, official_train_s, check, build_s, peak) -> None:
    """The table, the capture and precision ratios, the check, the projections and the goals."""
    print(
        f"\n{'arm':<34} {'img/s':>9} {'loop img/s':>11} {'TFLOP/s':>8} {'of peak':>8} {'syncs':>6} "
        f"{'epoch s':>8} {'x official':>10}"
    )
    for name, result in arms.items():
        of_peak = f"{100 * result['tflops'] / peak:>7.1f}%" if peak else f"{'-':>8}"
        syncs = "-" if math.isnan(result["syncs"]) else f"{result['syncs']:.0f}"
        versus = f"{official_s.wall / result['epoch_s']:>9.1f}x" if name.startswith("KD") else f"{'':>10}"
        print(
            f"{name:<34} {result['images_per_s']:>9.0f} {result['loop_images_per_s']:>11.0f} "
            f"{result['tflops']:>8.2f} {of_peak} {syncs:>6} {result['epoch_s']:>8.3f} {versus}"
        )
    print(
        f"{'official structure (fp32, PIL)':<34} {args.images / official_s.wall:>9.0f} "
        f"{args.images / official_train_s:>11.0f} {'':>8} {'':>8} {'':>6} {official_s.wall:>8.3f} {1.0:>9.1f}x"
    )

    def rate(name: str) -> float:
        return arms[name]["loop_images_per_s"] if name in arms else math.nan

    print(
        f"\ncapture: {rate('KD live, captured fp32') / rate('KD live, eager fp32'):.2f}x the eager step loop (fp32), "
        f"{rate('KD live, captured bf16') / rate('KD live, eager bf16'):.2f}x (bf16); precision (captured): bf16 / fp32 "
        f"= {rate('KD live, captured bf16') / rate('KD live, captured fp32'):.2f}x, (eager): "
        f"{rate('KD live, eager bf16') / rate('KD live, eager fp32'):.2f}x (kdlab's amp: auto is fp32 on CUDA: "
        "kdlab.device.AUTO_BF16)"
    )
    print(f"stacking: {rate(f'{GROUP} stacked, live') / rate(f'{GROUP} lockstep, live'):.2f}x lockstep (live), "
          f"{rate(f'{GROUP} stacked, cache') / rate(f'{GROUP} lockstep, cache'):.2f}x (cache)")  # fmt: skip
    print(f"captured step against eager:\n{check}")

    def paper_epoch(name: str) -> float:
        return arms[name]["paper_epoch_s"] if name in arms else math.nan

    views = 162  # CIFAR: (2 * 4 + 1)^2 crops x 2 flips
    build_rate = views * args.images / build_s  # teacher views per second while building
    paper_build_s = views * PAPER_TRAIN_IMAGES / build_rate
    groups = math.ceil(GRID_STUDENTS / GROUP)
    live = [name for name in arms if name.startswith("KD live")]
    best_kd = max(live, key=rate) if live else "KD live, captured fp32"
    projections = {
        f"paper's KD run, live teacher ({best_kd})": PAPER_EPOCHS * paper_epoch(best_kd),
        "paper's KD run, cache + build": PAPER_EPOCHS * paper_epoch("KD cache, captured fp32")
        + paper_build_s,
    }
    for kind in ("lockstep", "stacked"):
        projections[f"{GRID_STUDENTS}-student grid, {groups} {kind} groups, live"] = (
            groups * PAPER_EPOCHS * paper_epoch(f"{GROUP} {kind}, live")
        )
        projections[f"{GRID_STUDENTS}-student grid, {groups} {kind} groups, cache + build"] = (
            groups * PAPER_EPOCHS * paper_epoch(f"{GROUP} {kind}, cache") + paper_build_s
        )
    print(
        f"\ncache build: {build_rate:.0f} views/s -> {paper_build_s / 60:.1f} min for CIFAR-100 "
        "(50k images x 162 views)"
    )
    print(f"projected wall time ({PAPER_EPOCHS} epochs of 50k images, 10k test images every epoch):")
    for name, seconds in projections.items():
        print(f"  {name:<62} {seconds / 60:>8.1f} min")
    grids = [seconds for name, seconds in projections.items() if "grid" in name and not math.isnan(seconds)]
    kd_epochs = [official_s.wall / arms[name]["epoch_s"] for name in arms if name.startswith("KD")]
    reached = {
        "KD loop img/s": rate(best_kd),
        "paper KD run (min)": PAPER_EPOCHS * paper_epoch(best_kd) / 60,
        "50-student grid (min)": min(grids) / 60 if grids else math.nan,
        "x official": max(kd_epochs) if kd_epochs else math.nan,
    }
    print("\ngoals (issue 10):")
    for goal, target in GOALS.items():
        met = reached[goal] >= target if goal in ("KD loop img/s", "x official") else reached[goal] <= target
        print(f"  {goal:<24} {reached[goal]:>10.1f}  (goal {target:g}) {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
