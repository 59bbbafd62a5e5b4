"""``kdlab sweep``: train a recipe's teachers once, then its students, resumable and shardable.

Order of work: the teachers the selected students need (each under its run folder's lock, waited
for, so that shards sharing a teacher train it once: the second waits, then finds it finished),
then the students (each locked by the engine: one writer per run folder).
Students that share teacher, seed, data, batch size and epochs form a *lockstep group*: one teacher
forward per batch serves them all (``kdlab.engine.train_lockstep``). ``jobs > 1`` runs groups in
that many spawned processes, each with ``cores // jobs`` torch threads; groups are split when there
are fewer groups than jobs. Every run is started with ``resume=True``: finished runs are skipped and
interrupted ones continue from their ``last.pt``, so running a sweep again completes it.

The worker processes (:mod:`kdlab.experiments.pool`) die with the sweep: killed outright, it leaves
no process training, and its workers' runs keep a checkpoint to resume from. A worker killed on its
own (``kill -9``, out of memory) costs the runs it was training only: they are named at once, the
other runs go on (those needing a teacher it was training are skipped), and the sweep then ends with
a UserError (exit 2) listing the runs to resume by running it again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
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
from kdlab.runs import DIVERGED, OutputFolder, RunFolder, load_checkpoint
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
    run.check_files()  # a FIFO or a link under one of kdlab's names: refused before anything is written
    if not run.config_path.exists():
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
    if not run.last_checkpoint.exists():
        return (0, 0)
    checkpoint = load_checkpoint(run.last_checkpoint)
    return int(checkpoint.get("epoch", 0)), int((checkpoint.get("epoch_progress") or {}).get("step", 0))


def teacher_passes(students: list[PlannedRun]) -> dict[tuple[str, ...], int]:
    """How many times each teacher goes over its training images in the whole plan (every shard, seed
    and group: ``kd.cache: auto`` weighs them against the views its cache holds), by
    :func:`cache_share_key`: each lockstep group's epochs. Counted in lockstep groups even under
    ``--no-lockstep`` (which runs the teacher once per student): the decision, and so the results,
    are the same either way."""
    passes: dict[tuple[str, ...], int] = {}
    for group in lockstep_groups(students):
        key = cache_share_key(group[0].config)
        passes[key] = passes.get(key, 0) + group[0].config.optim.epochs
    return passes


def cache_share_key(config: RunConfig) -> tuple[str, ...]:
    """Runs with equal keys read one teacher-logit cache: the teacher, the data (the seed of a run is
    not part of it) and what the logits' bits depend on (kdlab.cache.open_logit_cache's key)."""
    return (
        str(config.kd.teacher), repr(config.data), config.amp, str(config.channels_last), str(config.compile),
        config.device,
    )  # fmt: skip


def train_group(
    configs: list[RunConfig], lockstep: bool = True, passes: int | None = None
) -> list[dict[str, Any]]:
    """Train ``configs`` (resuming); lockstep students at different epochs are resumed as subgroups.
    ``passes``: the teacher's passes in the whole sweep (:func:`teacher_passes`)."""
    from kdlab.engine import train_lockstep

    if not lockstep:  # a student that diverges is recorded as such (its summary), like one of a group
        return [
            train_lockstep([config], resume=True, record_diverged=True, teacher_passes=passes)[0]
            for config in configs
        ]
    # An interruption between two students' checkpoints leaves them at different points.
    by_point: dict[tuple[int, int], list[int]] = {}
    for index, config in enumerate(configs):
        by_point.setdefault(_resume_point(config), []).append(index)
    summaries: dict[int, dict[str, Any]] = {}
    for indices in by_point.values():
        for index, summary in zip(
            indices,
            train_lockstep([configs[i] for i in indices], resume=True, teacher_passes=passes),
            strict=True,
        ):
            summaries[index] = summary
    return [summaries[index] for index in range(len(configs))]


def train_teacher(config: RunConfig) -> dict[str, Any]:
    """Train one shared teacher under its lock: a second process waits, then finds it finished.

    A teacher whose loss becomes NaN or inf stops the sweep (its students cannot learn from it); the
    advice names what a sweep has: its settings in the recipe, and its folder to delete.
    """
    from kdlab.engine import train
    from kdlab.engine.stop import NonFiniteLoss

    with RunFolder(config.out or "").lock(wait=True):
        try:
            return train(config, resume=True)
        except NonFiniteLoss as error:
            name = Path(config.out or "").name
            raise UserError(
                f"teacher {error.where}; its students cannot learn from it; lower its rate in the recipe (e.g. "
                f"--set teachers.{name}.optim.lr=...) and delete {config.out} to train it again"
            ) from None


def _init_worker(threads: int) -> None:
    from kdlab.engine.stop import keep_stop_signals

    # The parent passes a stop on as SIGTERM (kdlab.experiments.pool), and so does the kernel when
    # the parent dies: kept from here on, it stops the worker's run at its next step (with a
    # checkpoint), even one not yet training. Ctrl-C reaches every process of the terminal's group,
    # so an idle worker need not die of it with a traceback.
    keep_stop_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock holds a multiprocessing semaphore, which a worker killed outright leaks
    # (the resource tracker then warns after the sweep's last line); spawned workers never shared it.
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())
    import torch

    torch.set_num_threads(threads)


def _run_task(function: Callable[..., Any], *task: Any) -> Any:
    """``function(*task)`` in a worker, unless the worker was already told to stop (by the sweep, or
    by its death): a worker that kept a stop signal starts no further task."""
    from kdlab.engine.stop import kept_stop

    signum = kept_stop()
    if signum is not None:
        raise RunInterrupted("not started: the sweep was stopping", signum)
    return function(*task)


def _map(
    function: Callable[..., Any],
    tasks: list[tuple[Any, ...]],
    jobs: int,
    names: list[list[str]] | None = None,
    lost: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[Any]:
    """``[function(*task) for task in tasks]``; with ``jobs > 1``, in that many spawned processes.

    With ``jobs > 1`` every task gets ``cores // jobs`` torch threads, a lone task (run in this
    process) too: on a busy 2-core machine, 2 threads were measured up to 12x slower than 1. A task
    whose worker process died is logged at once naming its runs (``names[i]``), which are added to
    ``lost``; its result is None and the other tasks go on.
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
    from kdlab.experiments.pool import WorkerDied, run_tasks

    names = names or [[f"task {index + 1}"] for index in range(len(tasks))]

    def died(index: int, error: WorkerDied) -> None:
        log(
            f"sweep: worker process {error.pid} died ({error.how}) while training {', '.join(names[index])}; "
            "the other runs go on"
        )

    done = run_tasks(
        _run_task,
        [(function, *task) for task in tasks],
        min(jobs, len(tasks)),
        _init_worker,
        (threads,),
        died,
    )
    if done.stopped is not None:
        raise RunInterrupted(
            f"sweep stopped by {signal.Signals(done.stopped).name}: its worker processes saved checkpoints of "
            "the runs they were training; run the same sweep command again to continue",
            done.stopped,
        )
    for outcome in done.outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, WorkerDied):
            raise outcome
    for index, outcome in enumerate(done.outcomes):
        if isinstance(outcome, WorkerDied):
            (lost if lost is not None else []).extend(names[index])
            done.outcomes[index] = None
    return done.outcomes


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
    lost: list[str] = []  # runs whose worker process died
    missing: set[str] = set()  # recipe teachers lost, or not trained because a teacher they read was
    key_of = {run.name: key for key, run in plan.teachers.items()}
    for level in _teacher_levels(teachers):
        missing.update(key_of[run.name] for run in level if missing.intersection(run.teachers))
        level = [run for run in level if key_of[run.name] not in missing]
        pending = [run for run in level if not RunFolder(run.config.out or "").is_finished()]
        if pending:
            log(f"sweep: training teacher(s) {', '.join(run.name for run in pending)}")
        names = [[run.name] for run in level]
        results = _map(train_teacher, [(run.config,) for run in level], jobs, names, lost, log)
        missing.update(
            key_of[run.name] for run, summary in zip(level, results, strict=True) if summary is None
        )
        summaries.update({run.name: summary for run, summary in zip(level, results, strict=True) if summary})
    skipped = [run.name for run in students if missing.intersection(run.teachers)]
    if not teachers_only:
        students = [run for run in students if not missing.intersection(run.teachers)]
        groups = split_for_jobs(lockstep_groups(students, lockstep), jobs) if students else []
        remaining = sum(not RunFolder(run.config.out or "").is_finished() for run in students)
        log(
            f"sweep: {len(students)} students ({remaining} to train) in {len(groups)} group(s)"
            + (f", {jobs} processes" if jobs > 1 else "")
        )
        names = [[run.name for run in group] for group in groups]
        passes = teacher_passes(list(plan.students))  # the whole plan's, shards and seeds included
        tasks = [
            ([run.config for run in group], lockstep, passes[cache_share_key(group[0].config)])
            for group in groups
        ]
        results = _map(train_group, tasks, jobs, names, lost, log)
        for group, group_summaries in zip(groups, results, strict=True):
            if group_summaries is not None:
                summaries.update(
                    {run.name: summary for run, summary in zip(group, group_summaries, strict=True)}
                )
    if lost:
        not_trained = (
            f" and {len(skipped)} student(s) of those teachers were not started"
            if skipped and not teachers_only
            else ""
        )
        raise UserError(
            f"sweep: {len(lost)} run(s) stopped because their worker process died ({', '.join(lost)})"
            f"{not_trained}; the other runs finished: run the same sweep command again to resume them"
        )
    if teachers_only:
        return summaries
    diverged = [name for name, summary in summaries.items() if summary.get("status") == DIVERGED]
    if diverged:
        log(
            f"sweep: {len(diverged)} student(s) diverged (recorded in their summary.json, not trained again; "
            f"change their settings and delete their folders to retry): {', '.join(diverged)}"
        )
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
    """``SWEEP/sweep-RECIPE.yaml``: the recipe as run (after --set), its teachers' and students' folders.

    Written through the sweep folder's ``OutputFolder`` (never over a file kdlab did not write there),
    waiting for its lock: shards of one sweep write the same file as they start."""
    manifest = {
        "recipe": plan.recipe.name,
        "document": plan.recipe.document,
        "teachers": [run.config.out for run in plan.teachers.values()],
        "students": [run.name for run in plan.students],
    }
    OutputFolder(plan.out, "sweep", wait=True).write_text(
        f"sweep-{plan.recipe.name}.yaml", yaml.safe_dump(manifest, sort_keys=False)
    )


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
