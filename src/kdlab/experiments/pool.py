"""Worker processes for ``kdlab sweep --jobs N``: they die with their parent, and one that dies loses
only its own task.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers is killed (``kill -9``,
the out-of-memory killer) it fails every pending task with ``BrokenProcessPool`` and terminates the
other workers; and when its parent is killed, its workers train on to the end and then wait forever
on a queue, holding their run folders' locks. Here each worker has its own pipe, so the parent knows
which task a dead worker held, records that task as lost (:class:`WorkerDied`) and starts a fresh
worker for the tasks that remain.

A worker dies with its parent: on Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` asks the kernel for a
SIGTERM when the parent dies, and everywhere a watchdog thread polls ``os.getppid()`` and sends the
same SIGTERM (the fallback, and the check for a parent that died before prctl ran). A worker that
keeps stop signals (the sweep's, :func:`kdlab.engine.stop.keep_stop_signals`) then saves a
checkpoint of its run at the next step and stops; an idle worker finds its pipe closed and exits;
one that has not stopped ``STOP_GRACE_S`` after the signal exits anyway.

This module imports nothing heavy, so that a spawned worker sets up its parent-death signal before
it imports torch (seconds) and the task's function.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 0.5  # the watchdog's period: a worker notices a dead parent within this
# After its parent died, a worker has this long to save its run's checkpoint (at the run's next step)
# before it exits anyway: a run still loading its data, waiting for a teacher's lock or evaluating
# keeps its last checkpoint, as after kill -9.
STOP_GRACE_S = 5.0


class WorkerDied(Exception):
    """The worker process running a task died before it answered (``kill -9``, out of memory)."""

    def __init__(self, pid: int, exitcode: int | None) -> None:
        super().__init__(pid, exitcode)
        self.pid, self.exitcode = pid, exitcode

    @property
    def how(self) -> str:
        """'killed by SIGKILL', 'exit code 1', ..."""
        code = self.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def __str__(self) -> str:
        return f"worker process {self.pid} died ({self.how})"


class NotStarted(Exception):
    """A task not handed to any worker because the pool was told to stop."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


_DIED = object()  # what a dead worker answered


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: int | None = None  # the index of the task it runs


@dataclass
class PoolResult:
    """What :func:`run_tasks` returns: per task its result or the exception it ended with
    (:class:`WorkerDied`, :class:`NotStarted`, or the task's own), and the first stop signal."""

    outcomes: list[Any] = field(default_factory=list)
    stopped: int | None = None


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    jobs: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    on_died: Callable[[int, WorkerDied], None] | None = None,
) -> PoolResult:
    """``function(*task)`` for every task in at most ``jobs`` spawned worker processes, each calling
    ``initializer(*initargs)`` first. A worker that dies costs its own task only (``on_died(index,
    error)`` is called at once); a fresh worker takes the tasks that remain.

    SIGTERM or SIGINT to this process (main thread only) is passed on to every worker as SIGTERM and
    no further task is handed out; the call still returns only when every worker has answered.
    """
    context = get_context("spawn")
    result = PoolResult([NotStarted("not started")] * len(tasks))
    queue = deque(range(len(tasks)))
    workers: list[_Worker] = []

    def start_worker() -> None:
        # PR_SET_PDEATHSIG fires when the *thread* that started the worker ends: this one, which
        # outlives its workers (it waits for every one of them below).
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child_end, os.getpid(), initializer, initargs),
            name="kdlab-sweep-worker",
            daemon=False,  # a daemonic process may not start processes: DataLoader workers
        )
        process.start()
        child_end.close()  # the worker's end lives in the worker only: its death closes the pipe
        workers.append(_Worker(process, parent_end))

    def assign(worker: _Worker) -> None:
        worker.task = queue.popleft()
        worker.conn.send((function, tasks[worker.task]))

    def stop(signum: int) -> None:
        if result.stopped is None:
            result.stopped = signum
        queue.clear()
        for worker in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGTERM)

    with _stop_signals(stop):
        try:
            while True:
                for worker in [worker for worker in workers if worker.task is None]:
                    if queue:
                        assign(worker)
                    else:  # nothing left for it
                        _dismiss(worker)
                        workers.remove(worker)
                while queue and len(workers) < jobs:
                    start_worker()
                    assign(workers[-1])
                if not workers:
                    break
                ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers])
                for worker in list(workers):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        _collect(worker, result, workers, on_died)
        finally:
            for worker in workers:  # normally idle ones; after an error in this process, any
                if worker.task is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGTERM)
                _dismiss(worker)
    return result


def _collect(
    worker: _Worker,
    result: PoolResult,
    workers: list[_Worker],
    on_died: Callable[[int, WorkerDied], None] | None,
) -> None:
    """Take a busy worker's answer, or record its task as lost when it died."""
    index = worker.task
    assert index is not None
    try:
        # No answer waiting: the worker died (a DataLoader worker it forked may keep its end of the
        # pipe open for a few seconds, so the pipe need not be closed yet).
        outcome = worker.conn.recv() if worker.conn.poll() else _DIED
    except (EOFError, OSError):  # the worker died: its end of the pipe closed
        outcome = _DIED
    except Exception as error:  # noqa: BLE001 - an answer that cannot be unpickled here
        outcome = RuntimeError(
            f"the answer of worker process {worker.process.pid} could not be read: {error!r}"
        )
    else:
        if isinstance(outcome, BaseException) and isinstance(getattr(outcome, "remote_traceback", None), str):
            outcome.__cause__ = RemoteTraceback(outcome.remote_traceback)
    if outcome is not _DIED:
        result.outcomes[index] = outcome
        worker.task = None
        return
    worker.process.join()
    died = WorkerDied(worker.process.pid, worker.process.exitcode)
    worker.conn.close()
    workers.remove(worker)
    if result.stopped is not None and died.exitcode == -signal.SIGTERM:
        # Told to stop before it could keep the signal (still importing): its task never started.
        result.outcomes[index] = NotStarted("not started: the worker was stopped while starting")
        return
    result.outcomes[index] = died
    if on_died is not None:
        on_died(index, died)


def _dismiss(worker: _Worker) -> None:
    """Tell an idle worker to exit and wait for it."""
    with contextlib.suppress(OSError):
        worker.conn.send(None)
    worker.conn.close()
    worker.process.join()


@contextlib.contextmanager
def _stop_signals(stop: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call ``stop(signum)`` (handlers: main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop(signum)) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- in the worker ---------------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """Have SIGTERM sent to this process when ``parent`` dies: ``PR_SET_PDEATHSIG`` on Linux, and a
    watchdog thread polling ``os.getppid()`` everywhere, which ends the process ``STOP_GRACE_S``
    after the signal if it is still running. A parent that died before this ran (this process was
    re-parented already) ends this process at once. Used by sweep workers and by the ranks of
    ``--nproc N`` (``kdlab.distributed``), whose run then saves a checkpoint and stops."""
    signalled = False  # whether the kernel sends the SIGTERM: then the watchdog must not send a second
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            signalled = (
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
            )
    if os.getppid() != parent:  # checked after prctl: a death before it sends no signal
        _exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent, not signalled), name="kdlab-parent-watchdog", daemon=True
    ).start()
    # Orphaned, a process that stopped by itself skips the interpreter's finalisation too (see _exit):
    # nobody waits for its exit code, and during finalisation the watchdog thread can no longer run.
    atexit.register(lambda: os.getppid() != parent and _exit(1))


def _watch_parent(parent: int, send: bool) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    # The run saves a checkpoint at its next step and stops. Only one SIGTERM: a second one, after the
    # run stopped listening (its checkpoint saved, its handlers restored), would kill the process
    # before it says where it saved (seen with --nproc 2 under load: the rank's stop line missing).
    if send:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    _exit(1)


def _exit(code: int) -> None:
    """End this worker now: stdio flushed, no interpreter finalisation. That finalisation, after torch
    was imported, was measured to take 3-8 s on a busy 2-core machine; everything a run writes is on
    disk already (atomic, fsync'd writes), and the kernel releases its locks."""
    with contextlib.suppress(Exception):  # what multiprocessing runs as a child exits: its finalizers
        # unregister the semaphores this process made (tqdm's lock, ...) from the resource tracker,
        # which would otherwise warn of leaked semaphores.
        multiprocessing.util._exit_function()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _worker_main(
    conn: Connection, parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    """Run the tasks the parent sends (``(function, args)``) until it sends None or is gone; then
    exit at once (:func:`_exit`)."""
    die_with_parent(parent)
    # Ctrl-C reaches every process of the terminal's group: the parent passes a stop on as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            _exit(1)
        if message is None:
            gc.collect()  # DataLoader iterators in reference cycles: their worker processes shut down
            _exit(0)
        function, args = message
        try:
            outcome = function(*args)
        except BaseException as error:  # noqa: BLE001 - sent to the parent, which decides
            with contextlib.suppress(AttributeError):  # pickled with the exception (its __cause__ is not)
                error.remote_traceback = traceback.format_exc()
            outcome = error
        try:
            conn.send(outcome)
        except (BrokenPipeError, EOFError, ConnectionResetError):  # the parent is gone
            _exit(1)
        except Exception as error:  # noqa: BLE001 - an outcome that cannot be pickled
            conn.send(RuntimeError(f"the task's outcome could not be sent back: {error!r}"))
