"""GPU throughput of kdlab's engine on synthetic CIFAR-100-shaped data, against the official loop on
the same GPU; which setting of each GPU default was faster; a check that the captured step trains
as the eager one; projected wall times of the paper's runs.

Arms, all through kdlab's engine on the same ``--images`` training images (each: a Trainer, one
warm-up epoch, then the best of ``--epochs`` timed epochs of ``Trainer.train_epoch``, test set
included), in this order, so that the arms the defaults rest on come first:

- KD with a live teacher (WRN-28-4 -> WRN-16-2, channels_last): captured fp32, eager fp32
  (``cuda_graph``), captured bf16 (``amp``), captured fp32 NCHW (``channels_last``);
- 8 students (alpha x tau grid points) sharing the teacher: lockstep (``stack: off``) and stacked
  (``stack: on``), live (``stack``);
- KD with the teacher-logit cache, captured fp32 (``kd.cache``; built here: 162 teacher passes);
- the official structure (``official.py``: PIL transforms, 4 workers, fp32, training set
  re-evaluated), its epoch against kdlab's on the same images;
- the captured step against the eager one (one student, lockstep, stacked, the cache, DKD);
- then, as the budget allows: teacher training, eager bf16, 8 students lockstep and stacked with
  the cache, compiled + captured (``--no-compile`` drops it).

Every arm runs under a time limit (``ARM_LIMITS``, capped by what is left of ``--budget``): an arm
that reaches it is stopped and reported as such, and the report is printed whatever happened.
For each arm: images/s (whole epoch; and the step loop alone as the engine logs it), achieved
TFLOP/s from ``torch.utils.flop_counter`` counts against the device's bf16 dense peak, and for the
KD arms the host-device synchronisations inside an epoch (``torch.cuda.set_sync_debug_mode``).

    benchmarks/gpu.sh              # one H100/H200, under 7 minutes
    benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU (eager: no CUDA graph): proves the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
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

from kdlab.cache import ViewGrid
from kdlab.config import RunConfig
from kdlab.device import AUTO_BF16
from kdlab.engine import Trainer
from kdlab.engine.stacked import stacks

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
# Seconds each arm may take on the GPU (setup, warm-up epoch with its capture, timed epochs); on the
# CPU of a dry run every arm takes tiny models and gets DRY_RUN_LIMIT.
ARM_LIMITS = {"kd": 45.0, "group": 60.0, "cache": 120.0, "official": 60.0, "check": 40.0, "compile": 120.0}
DRY_RUN_LIMIT, DRY_RUN_BUDGET = 20.0, 105.0
REPORT_RESERVE = 5.0  # seconds kept for the report at the end of the budget


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
    parser.add_argument(
        "--budget", type=float, default=390.0, help="seconds for every arm together (gpu.sh: under 7 minutes)"
    )
    parser.add_argument("--workers", type=int, default=4, help="the official loop's DataLoader workers")
    args = parser.parse_args()
    args.image_size = 32
    if args.dry_run:  # every arm and check, in about a minute on a busy 2-core CPU
        args.images, args.batch_size, args.epochs, args.official_epochs = 64, 16, 1, 1
        args.teacher, args.student, args.no_compile = "convnet-8", "convnet-4", True
        args.image_size, args.workers = 8, 0
        args.budget = min(args.budget, DRY_RUN_BUDGET)
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


class ArmTimeout(BaseException):
    """An arm reached its time limit. A BaseException, as KeyboardInterrupt: kdlab's fallbacks (a
    capture that fails goes eager) catch Exception, and must not take the limit for a failure."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ArmTimeout` in this (main) thread after ``seconds`` (SIGALRM; checked by
    Python between operations, so a kernel already running on the GPU finishes first)."""

    def expire(signum: int, frame: Any) -> None:
        raise ArmTimeout(f"over its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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


def captured(step: Any) -> bool:
    """Whether a TrainStep replayed a captured graph and never fell back to eager."""
    return step is not None and step.captures > 0 and step.replays > 0 and step.fallback is None


def run_arm(configs: list[RunConfig], flops: float, epochs: int, watch_syncs: bool = False) -> dict[str, Any]:
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
        "captured": captured(step),
        "fallback": step.fallback,
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


CHECK_CASES = {  # the captured step against the eager one: (students, stack, kd.cache, loss)
    "1 KD student": (1, "off", False, "kl"),
    "4 students lockstep": (4, "off", False, "kl"),
    "4 students stacked": (4, "on", False, "kl"),
    "2 students, teacher-logit cache": (2, "off", True, "kl"),
    "1 DKD student (captured each epoch)": (1, "off", False, "dkd"),
}


def check_case(make: Callable[..., list[RunConfig]], folder: Path, label: str) -> str:
    """Train the case's students captured and eager (deterministic kernels, 2 epochs with a partial
    last batch) and compare their weights: PASS only when the captured run replayed its graph to the
    end and its weights agree with the eager run's within the stacking bound; FAIL otherwise, and
    always when it was not captured (a run that went eager proves nothing about the graph)."""
    count, stack, cache, loss = CHECK_CASES[label]
    runs, step = {}, None
    for graph in (True, False):
        configs = make(
            folder / f"{label.split(',')[0].replace(' ', '-')}-{graph}", count, stack, graph, cache, loss
        )
        trainer = Trainer(configs)
        trainer.fit([trainer.build_student(config, resume=False, overwrite=True) for config in configs])
        runs[graph] = [Path(config.out) for config in configs]
        if graph:
            step = trainer.step
    difference = max_difference(runs[True], runs[False])
    if not captured(step):
        why = step.fallback if step is not None and step.fallback else "no CUDA graph on this device"
        return f"FAIL: not captured ({why}); weights differ by {difference:.2e}"
    verdict = "PASS" if difference <= CAPTURE_TOLERANCE else "FAIL"
    return (
        f"{verdict}: captured ({step.captures} capture(s), {step.replays} replays); weights and momentum after "
        f"2 epochs differ by {difference:.2e} (bitwise: {difference == 0.0}; bound {CAPTURE_TOLERANCE:g})"
    )


class Budget:
    """The time left for the arms: each arm's limit is capped by it, so the script ends in time."""

    def __init__(self, seconds: float, dry_run: bool) -> None:
        self.end, self.dry_run = time.perf_counter() + seconds - REPORT_RESERVE, dry_run

    def limit(self, kind: str) -> float:
        wanted = DRY_RUN_LIMIT if self.dry_run else ARM_LIMITS[kind]
        return min(wanted, self.end - time.perf_counter())


def main() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before CUDA starts)
    args = parse_args()
    budget = Budget(args.budget, args.dry_run)
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    test_images = max(args.batch_size, args.images // 5)
    dataset, splits = register_dataset(
        "synthetic", args.images, test_images, name="bench-gpu", size=args.image_size
    )
    # The capture checks train 2 epochs twice per case: on fewer images, 20 full batches and a partial one.
    check_images = min(args.images, 20 * args.batch_size + args.batch_size // 3)
    check_dataset, _ = register_dataset(
        "synthetic", check_images, test_images, name="bench-gpu-check", size=args.image_size
    )
    teacher_flops = flops_per_image(args.teacher, splits, train=False)
    teacher_step_flops = flops_per_image(args.teacher, splits, train=True)
    student_flops = flops_per_image(args.student, splits, train=True)
    peak = device_peak()
    print(f"machine: {machine()}; device {device}; bf16 dense peak {peak or 'unknown'} TFLOP/s")
    print(
        f"data: synthetic CIFAR-100-shaped ({args.image_size}x{args.image_size}), {args.images} train / {test_images} test images, batch "
        f"{args.batch_size}; FLOP/image: teacher forward {teacher_flops / 1e9:.2f} G, teacher step "
        f"{teacher_step_flops / 1e9:.2f} G, student step {student_flops / 1e9:.2f} G; budget {args.budget:.0f} s",
        flush=True,
    )
    shared = {"device": device, "channels_last": True, "optim": {"batch_size": args.batch_size}}
    kd_flops = teacher_flops + student_flops
    arms: dict[str, dict[str, Any]] = {}
    official: dict[str, float] = {}
    checks: dict[str, str] = {}
    build_s = math.nan
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

        def students(name: str, count: int, cache: bool = False, **settings: Any) -> list[RunConfig]:
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

        def limited(name: str, kind: str, work: Callable[[], Any]) -> Any:
            """``work()`` within the arm's limit; None (and a line) when it failed or ran out of time."""
            limit = budget.limit(kind)
            if limit <= 1.0:
                print(f"  {name}: skipped (the budget of {args.budget:.0f} s is spent)", flush=True)
                return None
            try:
                with time_limit(limit):
                    return work()
            except ArmTimeout as timeout:
                print(f"  {name}: stopped, {timeout}", flush=True)
            except Exception as error:  # one arm failing (an op that does not compile) must not lose the rest
                print(
                    f"  {name}: FAILED ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
                    flush=True,
                )
            return None

        def arm(
            name: str, configs: list[RunConfig], flops: float, kind: str = "kd", watch_syncs: bool = False
        ):
            result = limited(name, kind, lambda: run_arm(configs, flops, args.epochs, watch_syncs))
            if result is None:
                return
            arms[name] = result
            mode = (
                "captured"
                if result["captured"]
                else f"eager{': ' + result['fallback'] if result['fallback'] else ''}"
            )
            print(
                f"  {name}: {result['loop_images_per_s']:.0f} img/s in the step loop, epoch {result['epoch_s']:.2f} s "
                f"({mode}; {result['units']})",
                flush=True,
            )

        eager, graph = {"cuda_graph": False}, {"cuda_graph": True}
        # The arms each GPU default rests on (DEFAULTS below), first.
        arm("KD live, captured fp32", students("graph32", 1, amp="off", **graph), kd_flops, watch_syncs=True)
        arm("KD live, eager fp32", students("eager32", 1, amp="off", **eager), kd_flops, watch_syncs=True)
        arm("KD live, captured bf16", students("graph16", 1, amp="bf16", **graph), kd_flops)
        arm(
            "KD live, captured fp32 NCHW",
            students("nchw", 1, amp="off", **{**graph, "channels_last": False}),
            kd_flops,
        )
        group_flops = teacher_flops + GROUP * student_flops
        arm(f"{GROUP} lockstep, live", students("lockstep", GROUP, stack="off"), group_flops, "group")
        arm(f"{GROUP} stacked, live", students("stacked", GROUP, stack="on"), group_flops, "group")
        arm(
            "KD cache, captured fp32",
            students("cache", 1, cache=True),
            student_flops,
            "cache",
            watch_syncs=True,
        )
        records = list((folder / "cache").glob("*.json"))
        if records:
            build_s = json.loads(records[0].read_text())["build_time_s"]

        def official_epochs() -> dict[str, float]:
            loop = OfficialLoop(splits, teacher, args.student, args.batch_size, args.workers, device)
            epochs = [loop.epoch() for _ in range(args.official_epochs + 1)][1:]  # the first: a warm-up
            return {
                "epoch_s": best([sum(parts.values(), Seconds(0.0, 0.0)) for parts in epochs]).wall,
                "train_s": best([parts["train steps"] for parts in epochs]).wall,
            }

        official = limited("official structure", "official", official_epochs) or {}
        if official:
            print(
                f"  official structure: epoch {official['epoch_s']:.2f} s (training loop {official['train_s']:.2f} s)",
                flush=True,
            )

        def check_configs(root: Path, count: int, stack: str, graph: bool, cache: bool, loss: str) -> list:
            made = students(
                str(root.relative_to(folder)),
                count,
                cache=cache,
                stack=stack,
                cuda_graph=graph,
                deterministic=True,
            )
            for config in made:
                config.optim.epochs, config.kd.loss, config.data.name = 2, loss, check_dataset
                if loss == "dkd":  # DKD reads its own hyperparameters, not kl's
                    config.kd.alpha, config.kd.tau = 1.0, 4.0
            return made

        for label in CHECK_CASES:
            verdict = limited(
                f"check: {label}", "check", lambda label=label: check_case(check_configs, folder, label)
            )
            checks[label] = verdict or "FAIL: not measured (over its limit or failed, above)"
            print(f"  check: {label}: {checks[label]}", flush=True)

        # As the budget allows: context for the table, no default rests on them.
        arm(
            "teacher training, captured fp32",
            [run_config(dataset, args.teacher, folder / "teacher-run", **shared)],
            teacher_step_flops,
        )
        arm("KD live, eager bf16", students("eager16", 1, amp="bf16", **eager), kd_flops)
        arm(
            f"{GROUP} lockstep, cache",
            students("lockstep-c", GROUP, cache=True, stack="off"),
            GROUP * student_flops,
            "group",
        )
        arm(
            f"{GROUP} stacked, cache",
            students("stacked-c", GROUP, cache=True, stack="on"),
            GROUP * student_flops,
            "group",
        )
        if not args.no_compile:
            arm("KD live, compiled+captured fp32", students("compiled", 1, compile=True), kd_flops, "compile")

    report(args, arms, official, checks, build_s, peak, ViewGrid(splits.pad, splits.flip).num_views)
    failed = [label for label, verdict in checks.items() if not verdict.startswith("PASS")]
    if failed and not args.dry_run:  # a dry run has no CUDA: its checks cannot pass, and say so
        sys.exit(1)


def ratio(arms: dict[str, dict[str, Any]], faster: str, slower: str, key: str = "loop_images_per_s") -> float:
    if faster not in arms or slower not in arms:
        return math.nan
    return arms[faster][key] / arms[slower][key]


def compare(setting: str, default: str, arms: dict, first: tuple[str, str], second: tuple[str, str]) -> str:
    """One line: the default, the two arms' step-loop images/s, which was faster and by how much,
    and whether the default is the faster setting. ``first``/``second``: (setting value, arm)."""
    (value_a, arm_a), (value_b, arm_b) = first, second
    if arm_a not in arms or arm_b not in arms:
        missing = ", ".join(arm for arm in (arm_a, arm_b) if arm not in arms)
        return f"  {setting}: default {default}; not measured ({missing} did not finish): the default rests on no GPU measurement"
    rate_a, rate_b = arms[arm_a]["loop_images_per_s"], arms[arm_b]["loop_images_per_s"]
    winner, loser = (value_a, value_b) if rate_a >= rate_b else (value_b, value_a)
    follows = (
        "the default follows this measurement" if winner == default else "the default does NOT follow it"
    )
    return (
        f"  {setting}: default {default}; {value_a} {rate_a:.0f} img/s ({arm_a}) vs {value_b} {rate_b:.0f} "
        f"({arm_b}): {winner} faster, {max(rate_a, rate_b) / min(rate_a, rate_b):.2f}x -> {follows}"
    )


def defaults_summary(arms: dict, build_s: float, views: int) -> list[str]:
    """For each GPU default (amp, channels_last, stack, cuda_graph, kd.cache): its value in kdlab now
    and which setting this run measured faster, so that a default can follow the measurement."""
    config, cuda = RunConfig(), torch.device("cuda")
    lines = [
        compare(
            "amp", "bf16" if AUTO_BF16["cuda"] else "fp32", arms,
            ("fp32", "KD live, captured fp32"), ("bf16", "KD live, captured bf16"),
        ),
        compare(
            "channels_last", "true" if config.channels_last else "false", arms,
            ("false", "KD live, captured fp32 NCHW"), ("true", "KD live, captured fp32"),
        ),
        compare(
            "stack", "on" if stacks(config.stack, cuda) else "off", arms,
            ("off", f"{GROUP} lockstep, live"), ("on", f"{GROUP} stacked, live"),
        ),
        compare(
            "cuda_graph", "true" if config.cuda_graph else "false", arms,
            ("false", "KD live, eager fp32"), ("true", "KD live, captured fp32"),
        ),
    ]  # fmt: skip
    live, cache = arms.get("KD live, captured fp32"), arms.get("KD cache, captured fp32")
    if live is None or cache is None or math.isnan(build_s):
        lines.append(
            f"  kd.cache: default {config.kd.cache}; not measured: the rule (passes > {views} views) rests on no GPU measurement"
        )
    else:
        saved = live["epoch_s"] - cache["epoch_s"]
        even = build_s / saved if saved > 0 else math.inf
        pays = (
            f"pays off after {even:.0f} passes" if saved > 0 else "never pays off (its epoch was not faster)"
        )
        lines.append(
            f"  kd.cache: default {config.kd.cache} (on when the teacher's passes exceed the {views} views per image); "
            f"epoch {cache['epoch_s']:.2f} s cached vs {live['epoch_s']:.2f} s live, build {build_s:.1f} s: the cache "
            f"{pays} (auto turns it on after {views}) -> "
            + (
                "the rule follows this measurement"
                if even <= views
                else "the rule turns it on too early here"
            )
        )
    return lines


def report(args, arms, official, checks, build_s, peak, views) -> None:
    """The table, the defaults against the measurements, the checks, the projections and the goals."""
    print(
        f"\n{'arm':<34} {'img/s':>9} {'loop img/s':>11} {'TFLOP/s':>8} {'of peak':>8} {'syncs':>6} "
        f"{'epoch s':>8} {'x official':>10}"
    )
    official_s = official.get("epoch_s", math.nan)
    for name, result in arms.items():
        of_peak = f"{100 * result['tflops'] / peak:>7.1f}%" if peak else f"{'-':>8}"
        syncs = "-" if math.isnan(result["syncs"]) else f"{result['syncs']:.0f}"
        versus = f"{official_s / result['epoch_s']:>9.1f}x" if name.startswith("KD") else f"{'':>10}"
        print(
            f"{name:<34} {result['images_per_s']:>9.0f} {result['loop_images_per_s']:>11.0f} "
            f"{result['tflops']:>8.2f} {of_peak} {syncs:>6} {result['epoch_s']:>8.3f} {versus}"
        )
    if official:
        print(
            f"{'official structure (fp32, PIL)':<34} {args.images / official_s:>9.0f} "
            f"{args.images / official['train_s']:>11.0f} {'':>8} {'':>8} {'':>6} {official_s:>8.3f} {1.0:>9.1f}x"
        )
    print(
        "\ndefaults on CUDA against this run (step-loop images/s)"
        + (
            ": a dry run on the CPU, whose lines exercise the report; their numbers say nothing of a GPU"
            if args.dry_run
            else ":"
        )
    )
    for line in defaults_summary(arms, build_s, views):
        print(line)
    print("\ncaptured step against eager (deterministic kernels, 2 epochs, a partial last batch):")
    for label, verdict in checks.items():
        print(f"  {label}: {verdict}")

    def rate(name: str) -> float:
        return arms[name]["loop_images_per_s"] if name in arms else math.nan

    def paper_epoch(name: str) -> float:
        return arms[name]["paper_epoch_s"] if name in arms else math.nan

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
        f"\ncache build: {build_rate:.0f} views/s -> {paper_build_s / 60:.1f} min for CIFAR-100 (50k images x {views} views)"
    )
    print(f"projected wall time ({PAPER_EPOCHS} epochs of 50k images, 10k test images every epoch):")
    for name, seconds in projections.items():
        print(f"  {name:<62} {seconds / 60:>8.1f} min")
    grids = [seconds for name, seconds in projections.items() if "grid" in name and not math.isnan(seconds)]
    kd_epochs = [official_s / arms[name]["epoch_s"] for name in arms if name.startswith("KD")]
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
