"""``kdlab sweep``: train a recipe's teachers once, then its students, resumable and shardable.

Order of work: the teachers the selected students need (each under its run folder's lock, waited
for, so that shards sharing a teacher train it once: the second waits, then finds it finished),
then the students (each locked by the engine: one writer per run folder).
Students that share teacher, seed, data, batch size and epochs form a *lockstep group*: one teacher
forward per batch serves them all (``kdlab.engine.train_lockstep``). ``jobs > 1`` runs groups in
that many spawned processes, each with ``cores // jobs`` torch threads; groups are split when there
are fewer groups than jobs. Every run is started with ``resume=True``: finished runs are skipped and
interrupted ones continue from their ``last.pt``, so running a sweep again completes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import RunConfig, first_difference, teacher_specs
from kdlab.errors import RunInterrupted, UserError, shown
from kdlab.experiments.recipes import (
    PlannedRun,
    Recipe,
    SweepPlan,
    load_recipe,
    parse_shard,
    plan_sweep,
    select_shard,
)
from kdlab.identity import compare_inputs, compares_teachers, read_inputs, teacher_identity
from kdlab.runs import RunFolder, atomic_write_text, load_checkpoint
from kdlab.teacher import member_file


def lockstep_key(config: RunConfig) -> tuple[Any, ...]:
    """Students with equal keys can share one data order and one teacher pass (``kdlab.engine.group_key``)."""
    from kdlab.engine import group_key

    return tuple(group_key(config).values())


def lockstep_groups(runs: list[PlannedRun], lockstep: bool = True) -> list[list[PlannedRun]]:
    """Runs grouped by ``lockstep_key`` (or one run per group), in a stable order."""
    if not lockstep:
        return [[run] for run in runs]
    groups: dict[tuple[Any, ...], list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(lockstep_key(run.config), []).append(run)
    return list(groups.values())


def split_for_jobs(groups: list[list[PlannedRun]], jobs: int) -> list[list[PlannedRun]]:
    """Halve the largest groups until there are at least ``jobs`` of them (or all are single runs).

    Lockstep saves teacher forwards, parallel processes use more cores: with fewer groups than
    processes, the cores win.
    """
    groups = [list(group) for group in groups]
    while len(groups) < jobs:
        largest = max(groups, key=len)
        if len(largest) < 2:
            break
        groups.remove(largest)
        half = (len(largest) + 1) // 2
        groups += [largest[:half], largest[half:]]
    return sorted(groups, key=len, reverse=True)  # longest first: better packing over the processes


def check_existing(planned: PlannedRun) -> None:
    """Refuse to resume a folder that holds a run with other settings (a changed recipe or --set), or
    that read other teachers than those the sweep now names.

    Compared: what the run computes (``kdlab.config.first_difference``: runtime settings such as the
    device may change) and, where the run recorded them (``inputs.json``) and they exist already, its
    teachers by content (kdlab.identity: a moved sweep folder matches, a retrained teacher does not);
    else by folder name. The rest of its inputs is compared when the run is resumed or reused
    (``kdlab.engine.train_lockstep``), after this sweep's teachers are trained.
    """
    run = RunFolder(planned.config.out or "")
    if not run.config_path.is_file():
        return
    try:
        old = run.read_config()
    except UserError:
        raise UserError(
            f"{run.config_path} cannot be read as a kdlab config: delete {run.path} or choose another --out"
        ) from None
    recorded = read_inputs(run)
    current = {}
    if recorded.get("teachers") and all(
        _teacher_exists(spec) for spec in teacher_specs(planned.config.kd.teacher)
    ):
        current = {"teachers": teacher_identity(planned.config.kd.teacher)}
    by_content = ("kd.teacher",) if compares_teachers(recorded, current) else ()
    difference = first_difference(old, planned.config, ignore=by_content)
    if difference is not None:
        key, before, after = difference
        raise UserError(
            f"{run.path} holds a run with {key}={shown(before)}, but the sweep now asks for {shown(after)}: "
            "use another --out, or delete that folder to retrain it"
        )
    compare_inputs({"teachers": recorded.get("teachers")}, current, run.path)


def _teacher_exists(spec: str) -> bool:
    """Whether a teacher spec's file can be read now (a sweep's teacher may not be trained yet)."""
    try:
        member_file(spec)
    except UserError:
        return False
    return True


def _resume_point(config: RunConfig) -> tuple[int, int]:
    """``(epoch, step)`` a run would resume from: ``(-1, 0)`` finished, ``(0, 0)`` not started."""
    run = RunFolder(config.out or "")
    if run.is_finished():
        return (-1, 0)
    if not run.last_checkpoint.is_file():
        return (0, 0)
    checkpoint = load_checkpoint(run.last_checkpoint)
    return int(checkpoint.get("epoch", 0)), int((checkpoint.get("epoch_progress") or {}).get("step", 0))


def train_group(configs: list[RunConfig], lockstep: bool = True) -> list[dict[str, Any]]:
    """Train ``configs`` (resuming); lockstep students at different epochs are resumed as subgroups."""
    from kdlab.engine import train, train_lockstep

    if not lockstep:
        return [train(config, resume=True) for config in configs]
    # An interruption between two students' checkpoints leaves them at different points.
    by_point: dict[tuple[int, int], list[int]] = {}
    for index, config in enumerate(configs):
        by_point.setdefault(_resume_point(config), []).append(index)
    summaries: dict[int, dict[str, Any]] = {}
    for indices in by_point.values():
        for index, summary in zip(
            indices, train_lockstep([configs[i] for i in indices], resume=True), strict=True
        ):
            summaries[index] = summary
    return [summaries[index] for index in range(len(configs))]


def train_teacher(config: RunConfig) -> dict[str, Any]:
    """Train one shared teacher under its lock: a second process waits, then finds it finished."""
    from kdlab.engine import train

    with RunFolder(config.out or "").lock(wait=True):
        return train(config, resume=True)


def _init_worker(threads: int) -> None:
    from kdlab.engine.stop import keep_stop_signals

    # The parent passes a stop on as SIGTERM (see _forward_stop_signals): kept from here on, it
    # stops the worker's run at its next step, even one not yet training. Ctrl-C reaches every
    # process of the terminal's group, so an idle worker need not die of it with a traceback.
    keep_stop_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)


def _run_task(function: Callable[..., Any], *task: Any) -> Any:
    """``function(*task)`` in a worker, unless the worker was already told to stop: a task the
    parent could no longer cancel (already queued for the worker) is then not started at all."""
    from kdlab.engine.stop import kept_stop

    signum = kept_stop()
    if signum is not None:
        raise RunInterrupted("not started: the sweep was stopping", signum)
    return function(*task)


def _map(function: Callable[..., Any], tasks: list[tuple[Any, ...]], jobs: int) -> list[Any]:
    """``[function(*task) for task in tasks]``; with ``jobs > 1``, in that many spawned processes.

    With ``jobs > 1`` every task gets ``cores // jobs`` torch threads, a lone task (run in this
    process) too: on a busy 2-core machine, 2 threads were measured up to 12x slower than 1.
    """
    if jobs <= 1:
        return [function(*task) for task in tasks]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    if len(tasks) <= 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [function(*task) for task in tasks]
        finally:
            torch.set_num_threads(before)
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)),
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    futures: list[Future] = []
    with _forward_stop_signals(pool, futures) as stopped, pool:  # the pool's exit waits for its workers
        futures += [pool.submit(_run_task, function, *task) for task in tasks]
        outcomes = [_outcome(future) for future in futures]
    if stopped:
        raise RunInterrupted(
            f"sweep stopped by {signal.Signals(stopped[0]).name}: its worker processes saved checkpoints of "
            "the runs they were training; run the same sweep command again to continue",
            stopped[0],
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _outcome(future: Future) -> Any:
    """The future's result, or the exception it ended with (cancelled: CancelledError)."""
    try:
        return future.result()
    except BaseException as error:  # noqa: BLE001 - sorted out by the caller once every worker is done
        return error


@contextlib.contextmanager
def _forward_stop_signals(pool: ProcessPoolExecutor, futures: list[Future]) -> Iterator[list[int]]:
    """While the block waits for the workers: SIGTERM or SIGINT to this process is passed on to every
    worker as SIGTERM (each saves a mid-epoch checkpoint and stops, as a single run does) and cancels
    the tasks not yet started; the block then still waits for the workers. Yields the list that
    receives the signal number. A worker gets SIGTERM, not SIGINT: after Ctrl-C, which the terminal
    sends to every process of the group, a second SIGINT would make it stop without saving."""
    stopped: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def forward(signum: int, frame: Any) -> None:
        if not stopped:
            stopped.append(signum)
        for future in futures:
            future.cancel()
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_plan(
    plan: SweepPlan,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    lockstep: bool = True,
    teachers_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Train the plan's teachers and (this shard's) students; returns ``{run name: summary}``."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be at least 1")
    students = select_shard(plan.students, *shard) if shard else list(plan.students)
    teachers = plan.teachers_for(students) if shard or not teachers_only else list(plan.teachers.values())
    for planned in [*teachers, *students]:
        check_existing(planned)
    write_manifest(plan)
    summaries: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for level in _teacher_levels(teachers):
        pending = [run for run in level if not RunFolder(run.config.out or "").is_finished()]
        if pending:
            log(f"sweep: training teacher(s) {', '.join(run.name for run in pending)}")
        results = _map(train_teacher, [(run.config,) for run in level], jobs)
        summaries.update({run.name: summary for run, summary in zip(level, results, strict=True)})
    if teachers_only:
        return summaries
    groups = split_for_jobs(lockstep_groups(students, lockstep), jobs)
    remaining = sum(not RunFolder(run.config.out or "").is_finished() for run in students)
    log(
        f"sweep: {len(students)} students ({remaining} to train) in {len(groups)} group(s)"
        + (f", {jobs} processes" if jobs > 1 else "")
    )
    results = _map(train_group, [([run.config for run in group], lockstep) for group in groups], jobs)
    for group, group_summaries in zip(groups, results, strict=True):
        summaries.update({run.name: summary for run, summary in zip(group, group_summaries, strict=True)})
    log(f"sweep: done in {time.perf_counter() - start:.0f}s: {plan.out}")
    return summaries


def _teacher_levels(teachers: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Teachers split into levels whose members read only teachers of earlier levels."""
    level_of: dict[str, int] = {}
    levels: list[list[PlannedRun]] = []
    for run in teachers:  # already in dependency order
        name = run.name.split("/", 1)[1]
        level = 1 + max((level_of[dep] for dep in run.teachers if dep in level_of), default=-1)
        level_of[name] = level
        if level == len(levels):
            levels.append([])
        levels[level].append(run)
    return levels


def write_manifest(plan: SweepPlan) -> None:
    """``SWEEP/sweep-RECIPE.yaml``: the recipe as run (after --set), its teachers' and students' folders."""
    manifest = {
        "recipe": plan.recipe.name,
        "document": plan.recipe.document,
        "teachers": [run.config.out for run in plan.teachers.values()],
        "students": [run.name for run in plan.students],
    }
    atomic_write_text(plan.out / f"sweep-{plan.recipe.name}.yaml", yaml.safe_dump(manifest, sort_keys=False))


def run_sweep(
    recipe: str | Path | Recipe,
    out: str | Path | None = None,
    jobs: int = 1,
    shard: str | tuple[int, int] | None = None,
    seeds: int | None = None,
    overrides: list[str] | None = None,
    lockstep: bool = True,
    teachers_only: bool = False,
    teachers_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[SweepPlan, dict[str, dict[str, Any]]]:
    """Load (or take) a recipe, plan it under ``out`` (default ``sweeps/RECIPE``) and run it."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise UserError("overrides apply to a recipe name or file, not to a parsed Recipe")
    plan = plan_sweep(recipe, out or Path("sweeps") / recipe.name, seeds, teachers_dir)
    shard_pair = parse_shard(shard) if isinstance(shard, str) else shard
    return plan, run_plan(plan, jobs, shard_pair, lockstep, teachers_only, log)
