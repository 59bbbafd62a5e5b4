"""8 students of an alpha x tau grid on one teacher: sequential runs, lockstep, stacked, and both
with the teacher-logit cache.

Arms, all through kdlab's public engine, all measured in this run:

1. sequential: ``train(config)`` for each grid point (the teacher runs once per batch per student);
2. lockstep: ``train_lockstep(configs)`` with ``stack: off`` (one teacher forward per batch feeds the
   8 students, each its own forward, backward and optimiser step);
3. stacked: ``train_lockstep(configs)`` with ``stack: on`` (the 8 students as one module of grouped
   convolutions: one forward, backward and optimiser step for all of them);
4. lockstep + teacher-logit cache, seed A: builds the cache, then trains;
5. lockstep + teacher-logit cache, seed B: reuses seed A's cache (no teacher forward at all);
6. stacked + teacher-logit cache, seed C: reuses it too.

Beside each ratio (against 1.) are its compute ceilings: with teacher forward T and student train
step S per image, sharing the teacher (lockstep or stacked) gains at most N(T+S)/(T+NS) and the
cache at most N(T+S)/(NS). Three definitions, all printed: (1) T and S counted in FLOPs
(``torch.utils.flop_counter``: assumes every FLOP costs the same time); (2) T and S as measured
seconds per image of a bare teacher forward and a bare student step on this machine (what the
arithmetic itself costs here, where a student step takes more time per FLOP than a teacher forward:
backward, BN and activations); (3) the epoch's: the same measured costs for I training images plus
each student's own forward over the J test images (E per image), which no sharing saves:
(N(T+S)I + NEJ) / ((T+NS)I + NEJ), and N(T+S)I + NEJ over NSI + NEJ with the cache. The epochs
ratio (``Trainer.train_epoch`` calls: the steps and the test set) is the one the ceilings describe;
the runs ratio adds what a whole run also does (setup, the cache build, a final clean pass over the
training set with the teacher). Each is given in wall and in CPU seconds (CPU time barely moves
when other processes share the cores); 'reached' is the CPU ratio over the ceiling.

At kdlab's defaults (``--arms defaults``, or with the others): the 8 students as one lockstep group
with nothing set (``amp: auto`` = fp32, ``stack: auto`` = off on the CPU, ``kd.cache: auto``, which
decides for the grid's plan of ``--plan-epochs`` epochs: one teacher pass per epoch against the
cache's V views per image) against 8 runs of the official structure (``official.py``: one measured
epoch, times 8: the 8 runs differ only in alpha and tau, which cost nothing). The cache is built by a
stand-in teacher (its lookups cost the same whatever built it) and the real teacher's build is
projected from its measured fp32 inference rate and spread over the plan's epochs. Beside the ratio,
its ceilings: the two loops' FLOPs per epoch, and the same at the measured per-image costs.

    .venv/bin/python benchmarks/grid.py --images 256 --threads 1
    .venv/bin/python benchmarks/grid.py --images 256 --threads 1 --arms defaults
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import (
    Seconds,
    best,
    flops_per_image,
    lockstep_ceiling,
    machine,
    register_dataset,
    run_config,
    save_random_teacher,
    seconds_per_image,
    set_threads,
    timed,
)
from official import OfficialLoop

from kdlab.cache import ViewGrid
from kdlab.config import RunConfig
from kdlab.engine import Trainer, train, train_lockstep

ALPHAS = (0.5, 0.9)
TAUS = (1.0, 3.0, 20.0, math.inf)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training images")
    parser.add_argument("--test-images", type=int, default=128)
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist (50 views) or synthetic (162)")
    parser.add_argument("--teacher", default="wrn-28-4")
    parser.add_argument("--student", default="wrn-16-2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", default="bf16", help="bf16 (kdlab's fast CPU path) or auto (fp32 on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--arms", default="all", choices=["all", "defaults"], help="defaults: only kdlab at its "
                        "defaults against 8 official-structure runs")  # fmt: skip
    parser.add_argument("--plan-epochs", type=int, default=200, help="the epochs of the grid kdlab at its defaults "
                        "plans for (kd.cache: auto decides from them; the paper's 200)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=4, help="the official loop's DataLoader workers")
    parser.add_argument(
        "--cache-stand-in", default="mlp-64", help="teacher that builds the defaults arm's cache"
    )
    return parser.parse_args()


def grid_configs(
    dataset: str, teacher: Path, folder: Path, seed: int, args: argparse.Namespace, cache: bool, stack: str
) -> list[RunConfig]:
    """One KL student per (alpha, tau) of the grid, all with the same seed, data order and teacher."""
    return [
        run_config(
            dataset,
            args.student,
            folder / f"alpha{alpha}-tau{tau}",
            device=args.device,
            amp=args.amp,
            seed=seed,
            stack=stack,
            kd={
                "teacher": str(teacher),
                "loss": "kl",
                "alpha": alpha,
                "tau": tau,
                "cache": cache,
                "cache_dir": str(folder.parent / "cache"),
            },
            optim={"batch_size": args.batch_size, "epochs": args.epochs},
        )  # fmt: skip
        for alpha, tau in itertools.product(ALPHAS, TAUS)
    ]


class EpochClock:
    """Adds up the Seconds of every ``Trainer.train_epoch`` call (steps + test set) while installed.

    An instrument, not a change: the engine runs as it always does, inside a timer.
    """

    def __init__(self) -> None:
        self.total = Seconds(0.0, 0.0)
        self.original = Trainer.train_epoch

    def __enter__(self) -> EpochClock:
        clock = self

        def timed_epoch(trainer: Trainer, students: list, epoch: int, *args: Any) -> Any:
            seconds, dropped = timed(lambda: clock.original(trainer, students, epoch, *args))
            clock.total += seconds
            return dropped  # the students that diverged in the epoch (Trainer.fit drops them)

        Trainer.train_epoch = timed_epoch
        return self

    def __exit__(self, *exc: object) -> None:
        Trainer.train_epoch = self.original


def measure(arm: str, configs: list[RunConfig]) -> dict[str, Seconds]:
    """Whole-run and epoch Seconds of one arm: 8 ``train`` calls, or one ``train_lockstep``."""
    with EpochClock() as clock:
        if arm == "sequential":
            runs = [timed(lambda config=config: train(config))[0] for config in configs]
            run = sum(runs[1:], runs[0])
        else:
            run, _ = timed(lambda: train_lockstep(configs))
    print(f"  {arm}: {run.wall:.1f} s wall, {run.cpu:.1f} s CPU", flush=True)
    return {"run": run, "epochs": clock.total}


def defaults_arm(dataset: str, splits: Any, folder: Path, args: argparse.Namespace) -> None:
    """kdlab at its defaults (8 students, one lockstep group) against 8 official-structure runs, with
    the FLOP and measured-time ceilings of that ratio (module docstring)."""
    students = len(ALPHAS) * len(TAUS)
    views = ViewGrid(splits.pad, splits.flip).num_views
    cache_on = (
        args.plan_epochs > views
    )  # what kd.cache: auto decides for one group (kdlab.cache.decide_cache)
    teacher = save_random_teacher(folder / "teacher-defaults.pt", args.teacher, splits)
    builder = (
        save_random_teacher(folder / "stand-in.pt", args.cache_stand_in, splits) if cache_on else teacher
    )
    configs = [
        run_config(
            dataset,
            args.student,
            folder / "defaults" / f"alpha{alpha}-tau{tau}",
            device=args.device,
            kd={
                "teacher": str(builder),
                "loss": "kl",
                "alpha": alpha,
                "tau": tau,
                "cache_dir": str(folder / "cache-d"),
            },
            optim={"batch_size": args.batch_size, "epochs": args.epochs},
        )  # fmt: skip
        for alpha, tau in itertools.product(ALPHAS, TAUS)
    ]
    assert all(
        (c.amp, c.stack, c.kd.cache, c.channels_last) == ("auto", "auto", "auto", False) for c in configs
    )
    with EpochClock() as clock:
        run, _ = timed(lambda: train_lockstep(configs, teacher_passes=args.plan_epochs))
    record = yaml.safe_load((Path(configs[0].out) / "config.yaml").read_text())["run_info"]["kd_cache"]
    assert record["used"] is cache_on, record
    official = OfficialLoop(splits, teacher, args.student, args.batch_size, args.workers)
    official_epochs = [official.epoch() for _ in range(args.epochs)]
    official_epoch = best([sum(parts.values(), Seconds(0.0, 0.0)) for parts in official_epochs])
    # Per image, fp32 (the defaults' precision): teacher forward, student step, student forward.
    teacher_s = seconds_per_image(args.teacher, splits, train=False, batch=2 * args.batch_size, amp=False)
    student_s = seconds_per_image(args.student, splits, train=True, batch=args.batch_size, amp=False)
    eval_s = seconds_per_image(args.student, splits, train=False, batch=2 * args.batch_size, amp=False)
    teacher_f = flops_per_image(args.teacher, splits, train=False)
    student_f = flops_per_image(args.student, splits, train=True)
    eval_f = flops_per_image(args.student, splits, train=False)
    images, tests, plan = args.images, args.test_images, args.plan_epochs
    build_s = views * images * teacher_s if cache_on else 0.0  # the real teacher's build, projected

    def epoch_costs(teacher: float, step: float, forward: float) -> tuple[float, float]:
        """(8 official runs, kdlab at its defaults) per epoch, at per-image costs T, S, E."""
        official_cost = students * (
            images * (teacher + step) + images * (teacher + forward) + tests * (teacher + forward)
        )
        shared = (
            views * images * teacher / plan if cache_on else images * teacher
        )  # the build spread over the plan
        return official_cost, shared + students * (images * step + tests * forward)

    ceilings = {
        "FLOPs": epoch_costs(teacher_f, student_f, eval_f),
        "time": epoch_costs(teacher_s, student_s, eval_s),
    }
    kdlab_epoch = clock.total.wall / args.epochs + build_s / plan
    kdlab_cpu = clock.total.cpu / args.epochs + build_s / plan
    eight = Seconds(students * official_epoch.wall, students * official_epoch.cpu)
    print(
        f"\nkdlab at its defaults (amp auto = fp32, stack auto = off on the CPU, channels_last off, kd.cache auto: "
        f"{'on' if cache_on else 'off'} for {plan} planned epochs of one group: {record['reason']}) against "
        f"{students} official-structure runs (one measured epoch x {students})"
    )
    print(
        f"  official: {official_epoch.wall:.1f} s wall, {official_epoch.cpu:.1f} s CPU per run-epoch; x {students} = "
        f"{eight.wall:.1f} s wall, {eight.cpu:.1f} s CPU"
    )
    print(
        f"  kdlab: {clock.total.wall / args.epochs:.1f} s wall, {clock.total.cpu / args.epochs:.1f} s CPU per epoch of the group"
        + (
            f" + the {args.teacher} cache build ({views} views x {images} images x {1e3 * teacher_s:.1f} ms = "
            f"{build_s:.0f} s, projected) / {plan} epochs = {build_s / plan:.2f} s"
            if cache_on
            else ""
        )
    )
    print(
        f"  {'':<30} {'speed-up':>9} {'FLOP ceiling':>13} {'reached':>8} {'time ceiling':>13} {'reached':>8}"
    )
    for clock_name, official_s, kdlab_s in (("wall", eight.wall, kdlab_epoch), ("CPU", eight.cpu, kdlab_cpu)):
        speedup = official_s / kdlab_s
        line = f"  {'epoch, ' + clock_name:<30} {speedup:>8.2f}x"
        for kind in ("FLOPs", "time"):
            official_cost, kdlab_cost = ceilings[kind]
            ceiling = official_cost / kdlab_cost
            line += f" {ceiling:>12.2f}x {100 * speedup / ceiling:>7.0f}%"
        print(line)
    print(
        f"  per image: teacher forward {1e3 * teacher_s:.1f} ms, student step {1e3 * student_s:.1f} ms, student "
        f"forward {1e3 * eval_s:.1f} ms (fp32); whole runs ({args.epochs} epoch(s), setup and the stand-in's cache "
        f"build included): {run.wall:.1f} s wall"
    )


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    dataset, splits = register_dataset(args.data, args.images, args.test_images)
    if args.arms == "defaults":
        print(f"machine: {machine()}")
        print(
            f"grid: {len(ALPHAS) * len(TAUS)} KL students, {args.student} on {args.teacher}; {args.data} {args.images} "
            f"training / {args.test_images} test images, {args.epochs} epoch(s), batch {args.batch_size}"
        )
        with tempfile.TemporaryDirectory() as temporary:
            defaults_arm(dataset, splits, Path(temporary), args)
        return
    teacher_flops = flops_per_image(args.teacher, splits, train=False)
    student_flops = flops_per_image(args.student, splits, train=True)
    students = len(ALPHAS) * len(TAUS)
    amp = args.amp == "bf16"
    teacher_seconds = seconds_per_image(args.teacher, splits, train=False, batch=args.batch_size, amp=amp)
    student_seconds = seconds_per_image(args.student, splits, train=True, batch=args.batch_size, amp=amp)
    test_batch = min(args.test_images, max(256, 2 * args.batch_size))  # the engine's evaluation batch
    eval_seconds = seconds_per_image(args.student, splits, train=False, batch=test_batch, amp=amp)
    # Three ceilings of sequential time over shared time. Of the steps: from FLOPs (assumes every FLOP
    # costs the same time) and from the measured per-image seconds of a bare teacher forward and a
    # bare student step (BN, activations, backward included). Of the epoch (what the epochs ratio
    # times): the steps plus each student's own pass over the test set (E per image), which no
    # sharing saves: (N (T + S) I + N E J) / ((T + N S) I + N E J), T dropped with the cache.
    images, tests = args.images, args.test_images
    sequential_epoch = (
        students * (teacher_seconds + student_seconds) * images + students * eval_seconds * tests
    )
    ceilings = {
        kind: {
            "lockstep": lockstep_ceiling(students, teacher_cost, student_cost),
            "cache": (teacher_cost + student_cost) / student_cost,  # N (T + S) / (N S)
        }
        for kind, teacher_cost, student_cost in (
            ("FLOPs", teacher_flops, student_flops),
            ("time", teacher_seconds, student_seconds),
        )
    }
    ceilings["epoch time"] = {
        "lockstep": sequential_epoch
        / ((teacher_seconds + students * student_seconds) * images + students * eval_seconds * tests),
        "cache": sequential_epoch / (students * student_seconds * images + students * eval_seconds * tests),
    }
    views = ViewGrid(splits.pad, splits.flip).num_views
    print(f"machine: {machine()}")
    print(
        f"grid: {students} KL students (alpha {ALPHAS} x tau {TAUS}), {args.student} on {args.teacher}; "
        f"{args.data} {args.images} training / {args.test_images} test images, {args.epochs} epoch(s), batch "
        f"{args.batch_size}, amp {args.amp}; T = {teacher_flops / 1e9:.3f} GFLOP/image (teacher forward), "
        f"S = {student_flops / 1e9:.3f} GFLOP/image (student step)"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        teacher = save_random_teacher(folder / "teacher.pt", args.teacher, splits)
        arms = {  # name -> (folder, seed, cache, stack)
            "sequential": ("sequential", 1, False, "off"),
            "lockstep": ("lockstep", 1, False, "off"),
            "stacked": ("stacked", 1, False, "on"),
            "lockstep + cache, seed A (builds it)": ("cacheA", 1, True, "off"),
            "lockstep + cache, seed B (reuses it)": ("cacheB", 2, True, "off"),
            "stacked + cache, seed C (reuses it)": ("cacheC", 3, True, "on"),
        }
        results = {
            name: measure(name, grid_configs(dataset, teacher, folder / sub, seed, args, cache, stack))
            for name, (sub, seed, cache, stack) in arms.items()
        }
        (record,) = [json.loads(path.read_text()) for path in (folder / "cache").glob("*.json")]
        defaults_arm(dataset, splits, folder, args)
    base = results["sequential"]
    print(
        f"\nmeasured per image: teacher forward {1e3 * teacher_seconds:.1f} ms, student step "
        f"{1e3 * student_seconds:.1f} ms, student test-set forward {1e3 * eval_seconds:.1f} ms "
        f"(T/S: {teacher_seconds / student_seconds:.2f} in time, "
        f"{teacher_flops / student_flops:.2f} in FLOPs)"
    )
    print(
        "speed-up over sequential runs: 'runs' = whole runs (with setup, cache build and the final clean pass "
        "over the training set), 'epochs' = train_epoch calls (steps + test set), what the ceilings describe; "
        "'reached' = epochs CPU speed-up / ceiling"
    )
    print(
        f"{'arm':<38} {'runs wall':>9} {'CPU':>6} {'epochs wall':>11} {'CPU':>6} "
        f"{'FLOP ceiling':>12} {'reached':>7} {'time ceiling':>12} {'reached':>7} {'epoch ceiling':>13} {'reached':>7}"
    )
    for name, result in results.items():
        ratio = {
            (part, clock): getattr(base[part], clock) / getattr(result[part], clock)
            for part in ("run", "epochs")
            for clock in ("wall", "cpu")
        }
        line = (
            f"{name:<38} {ratio['run', 'wall']:>8.2f}x {ratio['run', 'cpu']:>5.2f}x "
            f"{ratio['epochs', 'wall']:>10.2f}x {ratio['epochs', 'cpu']:>5.2f}x"
        )
        arm = (
            None if name == "sequential" else "cache" if "cache" in name else "lockstep"
        )  # stacked: same work
        for kind, width in (("FLOPs", 11), ("time", 11), ("epoch time", 12)):
            ceiling = ceilings[kind].get(arm) if arm else None
            if ceiling:
                line += f" {ceiling:>{width}.2f}x {100 * ratio['epochs', 'cpu'] / ceiling:>6.0f}%"
        print(line)
    print(
        f"\ncache build (in seed A's runs, not its epochs): {record['build_time_s']:.1f} s for {views} views x "
        f"{args.images} images = {views} teacher passes over the data; it pays off after {views} "
        f"student-epochs of sequential runs with a live teacher, or {views} epochs of a lockstep group."
    )


if __name__ == "__main__":
    main()
