"""The captured training step (kdlab.engine.step): its bookkeeping on the CPU with a fake graph, what
a failed capture leaves behind, and, where CUDA is, captured runs against eager ones.

On the CPU a fake graph backend stands in for CUDA (``FakeGraphs``): a warm-up step runs the step at
once, a capture records the step's function (with the epoch it was captured in, as a real graph
holds it) and a replay calls it on the static buffers. A run with the fake must then train bitwise
as the eager run does, and the counters say what the step did: warm-up steps, captures, replays,
which batches went through the graph path, and why a run went eager.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from fixtures_engine import make_config, random_teacher, state

import kdlab.engine.loop
from kdlab.engine import Trainer
from kdlab.engine.step import WARMUP_STEPS, capture_graph

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBSET, BATCH = 600, 64  # 9 full batches and a partial one of 24 per epoch
FULL = SUBSET // BATCH


class FakeGraph:
    def __init__(self, function, replays_run: bool) -> None:
        self.function, self.replays_run = function, replays_run

    def replay(self) -> None:
        if self.replays_run:
            self.function()


class FakeGraphs:
    """CudaGraphs' methods on the CPU. ``mode``: ``record`` (a capture records, a replay runs what it
    recorded), ``empty`` (replays do nothing: an empty graph), ``runs`` (the capture runs the step at
    once and records nothing: kernels launched on another device than the capture's), ``raises`` (the
    capture raises a ValueError, not a RuntimeError)."""

    def __init__(self, mode: str = "record") -> None:
        self.mode, self.warm_ups, self.captures, self.selections = mode, 0, 0, 0

    def selected(self) -> contextlib.AbstractContextManager:
        self.selections += 1  # once per full batch: partial batches never reach the graph path
        return contextlib.nullcontext()

    def warm_up(self, function) -> None:
        self.warm_ups += 1
        function()

    def capture(self, function) -> FakeGraph:
        self.captures += 1
        if self.mode == "raises":
            raise ValueError("a fake operation that cannot be captured")
        if self.mode == "runs":
            function()
        return FakeGraph(function, replays_run=self.mode == "record")


def group(root: Path, teacher: str, losses: list[str], epochs: int = 2) -> list:
    made = []
    for loss in losses:
        kd = {"loss": loss, "alpha": 0.9, "tau": 4.0} if loss == "kl" else {"loss": loss}
        config = make_config(root / loss, teacher=teacher, **kd)
        config.data.subset, config.optim.epochs, config.stack = SUBSET, epochs, "off"
        made.append(config)
    return made


def run(
    root: Path, teacher: str, losses: list[str], fake: FakeGraphs | None, epochs: int = 2, monkeypatch=None
):
    """Train the group, with ``fake`` as its graph backend (None: eager); returns its TrainStep."""
    if fake is not None:
        monkeypatch.setattr(kdlab.engine.loop, "graph_backend", lambda device, world, wanted: fake)
    configs = group(root, teacher, losses, epochs)
    trainer = Trainer(configs)
    trainer.fit([trainer.build_student(config, False, False) for config in configs])
    if fake is not None:
        monkeypatch.undo()
    return trainer.step


def assert_bitwise(run_a: Path, run_b: Path) -> None:
    a, b = state(run_a), state(run_b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A random convnet-4 teacher of digits: what the step computes does not need a trained one."""
    return str(random_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", in_channels=1))


@pytest.fixture(scope="module")
def eager_runs(tmp_path_factory, teacher) -> Path:
    """The eager runs the fakes are compared with: kl + mse in lockstep, dkd alone (2 epochs), kl
    alone (1 epoch)."""
    root = tmp_path_factory.mktemp("eager")
    run(root / "pair", teacher, ["kl", "mse"], None)
    run(root / "dkd", teacher, ["dkd"], None)
    run(root / "one", teacher, ["kl"], None, epochs=1)
    return root


def test_a_captured_group_warms_up_captures_once_and_replays_every_full_batch(
    tmp_path, teacher, eager_runs, monkeypatch
):
    fake = FakeGraphs()
    step = run(tmp_path, teacher, ["kl", "mse"], fake, monkeypatch=monkeypatch)
    assert (fake.warm_ups, step.warmed, fake.captures, step.captures) == (WARMUP_STEPS, WARMUP_STEPS, 1, 1)
    assert step.replays == 2 * FULL - WARMUP_STEPS  # the capture's own replay and every later full batch
    assert fake.selections == 2 * FULL  # the partial last batch of each epoch ran eagerly
    assert step.fallback is None and step.graph is not None
    for loss in ("kl", "mse"):
        assert_bitwise(tmp_path / loss, eager_runs / "pair" / loss)


def test_a_loss_that_reads_the_epoch_is_captured_again_in_each_epoch(
    tmp_path, teacher, eager_runs, monkeypatch
):
    """DKD's warm-up ramp reads the epoch: the graph holds it as a number, so a graph kept from the
    first epoch would train the second with the first's ramp; bitwise the eager run only with a
    capture per epoch."""
    fake = FakeGraphs()
    step = run(tmp_path, teacher, ["dkd"], fake, monkeypatch=monkeypatch)
    assert (fake.warm_ups, fake.captures) == (WARMUP_STEPS, 2)
    assert step.replays == 2 * FULL - WARMUP_STEPS and fake.selections == 2 * FULL
    assert_bitwise(tmp_path / "dkd", eager_runs / "dkd" / "dkd")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (
            "empty",
            "the captured training step is not usable: its first replay did not advance the step counter",
        ),
        ("runs", "the captured training step is not usable: its kernels ran during the capture"),
        (
            "raises",
            "the training step could not be captured as a CUDA graph (a fake operation that cannot be",
        ),
    ],
)
def test_a_capture_that_fails_or_replays_nothing_goes_eager_with_one_line(
    tmp_path, teacher, eager_runs, monkeypatch, capsys, mode, reason
):
    """Whatever went wrong, the run says why in one line and trains on eagerly, bitwise as the eager
    run: the failed batch trained exactly once."""
    fake = FakeGraphs(mode)
    step = run(tmp_path, teacher, ["kl"], fake, epochs=1, monkeypatch=monkeypatch)
    assert step.fallback is not None and step.fallback.startswith(reason)
    lines = [line for line in capsys.readouterr().err.splitlines() if "captur" in line]
    assert lines == [
        f"kdlab: {step.fallback}; training eagerly from here (set cuda_graph: false to skip the attempt)"
    ]
    assert (fake.warm_ups, fake.captures, step.graph) == (WARMUP_STEPS, 1, None)
    assert fake.selections == WARMUP_STEPS + 1  # every full batch after the failed capture: eager
    assert_bitwise(tmp_path / "kl", eager_runs / "one" / "kl")


# -- capture_graph: what a failed capture leaves -----------------------------------------------------


class FakeCalls:
    """CudaCalls on the CPU: the current stream, and the pools allocations are routed to."""

    def __init__(self) -> None:
        self.stream, self.routing, self.held, self.log = "default", set(), set(), []

    def current_stream(self, device):
        return self.stream

    def set_stream(self, stream) -> None:
        self.stream = stream

    def synchronize(self, device) -> None:
        self.log.append("synchronize")

    def end_pool(self, device, pool) -> None:
        if pool not in self.routing:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.routing.remove(pool)

    def release_pool(self, device, pool) -> None:
        self.held.discard(pool)


class FakeCudaGraph:
    """CUDAGraph's capture calls: ``end_fails`` as an invalidated capture does (cudaStreamEndCapture
    fails: the capture ends, but capture_end neither ends the pool's routing nor holds a graph)."""

    def __init__(self, calls: FakeCalls, end_fails: bool) -> None:
        self.calls, self.end_fails, self.pool, self.state = calls, end_fails, None, "new"

    def capture_begin(self, pool, capture_error_mode: str) -> None:
        assert self.calls.stream == "capture" and capture_error_mode == "thread_local"
        self.pool, self.state = pool, "capturing"
        self.calls.routing.add(pool)
        self.calls.held.add(pool)

    def capture_end(self) -> None:
        assert self.calls.stream == "capture", "capture_end must run on the capture's stream"
        self.state = "ended"
        if self.end_fails:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        self.calls.routing.remove(self.pool)

    def reset(self) -> None:
        self.state = "reset"
        self.calls.held.discard(self.pool)


def body(raises: type[BaseException] | None, calls: FakeCalls):
    def function() -> None:
        calls.stream = "inner"  # a stream switch inside the step, left by the error
        if raises is not None:
            raise raises("inside the step")
        calls.stream = "capture"

    return function


@pytest.mark.parametrize(
    ("raises", "end_fails", "expected", "state"),
    [
        (None, False, None, "ended"),  # a capture that works: the pool stays the graph's
        (KeyError, True, KeyError, "ended"),  # the step raised and the capture was invalidated
        (TypeError, False, TypeError, "reset"),  # the step raised, the capture ended: half a graph
        (None, True, RuntimeError, "ended"),  # capture_end itself failed
        (KeyboardInterrupt, True, KeyboardInterrupt, "ended"),  # Ctrl-C mid-capture
    ],
)
def test_a_failed_capture_restores_the_stream_and_ends_the_pool(raises, end_fails, expected, state):
    calls = FakeCalls()
    graph = FakeCudaGraph(calls, end_fails)
    capture = lambda: capture_graph(  # noqa: E731
        graph, body(raises, calls), torch.device("cpu"), "capture", ("pool", 1), calls
    )
    if expected is None:
        capture()
        assert calls.held == {("pool", 1)}  # the graph keeps its pool for its replays
    else:
        with pytest.raises(expected, match="inside the step" if raises else "previous error"):
            capture()
        assert calls.held == set()  # nothing holds the failed capture's pool
    assert calls.stream == "default"  # the stream the run was on
    assert calls.routing == set()  # no allocation is routed to a capture any more
    assert graph.state == state and calls.log == ["synchronize"]


# -- on CUDA: captured runs against eager ones ---------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the captured step needs CUDA")
CASES = {  # what the capture must get right: (losses, stack, kd.cache)
    "one student": (["kl"], "off", False),
    "lockstep": (["kl", "mse", "ce"], "off", False),
    "stacked": (["kl", "mse", "ce"], "on", False),
    "cache": (["kl", "mse"], "off", True),
    "dkd": (["dkd"], "off", False),
}


def cuda_runs(root: Path, teacher: str, case: str, device: str) -> dict[bool, object]:
    losses, stack, cache = CASES[case]
    steps = {}
    for graph in (True, False):
        configs = group(root / f"graph-{graph}", teacher, losses)
        for config in configs:  # deterministic kernels: the two runs may differ only by the capture
            config.device, config.cuda_graph, config.deterministic = device, graph, True
            config.stack, config.kd.cache = stack, cache
            config.kd.cache_dir = str(root / "cache")
        trainer = Trainer(configs)
        trainer.fit([trainer.build_student(config, False, False) for config in configs])
        steps[graph] = trainer.step
    return steps


@CUDA
@pytest.mark.parametrize("case", list(CASES))
def test_captured_cuda_runs_equal_eager_ones(tmp_path, teacher, case):
    """One student, lockstep, stacked, the teacher-logit cache and DKD (captured in each epoch): the
    graph runs the same kernels on the same addresses as the eager step, so with deterministic
    kernels the runs agree to the rounding of kernels cuDNN may pick differently between runs."""
    steps = cuda_runs(tmp_path, teacher, case, "cuda")
    captured = steps[True]
    assert captured.fallback is None and captured.graph is not None
    assert captured.captures == (2 if case == "dkd" else 1) and captured.replays == 2 * FULL - WARMUP_STEPS
    for loss in CASES[case][0]:
        a, b = state(tmp_path / "graph-True" / loss), state(tmp_path / "graph-False" / loss)
        for name in a:
            assert torch.allclose(a[name].float(), b[name].float(), rtol=0, atol=1e-4), (loss, name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_a_capture_on_the_last_gpu_records_the_step(tmp_path, teacher):
    """--device cuda:N, N != 0, in one process: the stream, capture and pool are device N's, so the
    graph records the step and its replays train (before, it recorded nothing and training stopped
    after the warm-up steps, silently)."""
    last = f"cuda:{torch.cuda.device_count() - 1}"
    steps = cuda_runs(tmp_path, teacher, "one student", last)
    assert steps[True].fallback is None and steps[True].replays == 2 * FULL - WARMUP_STEPS
    a, b = state(tmp_path / "graph-True" / "kl"), state(tmp_path / "graph-False" / "kl")
    assert all(torch.allclose(a[n].float(), b[n].float(), rtol=0, atol=1e-4) for n in a)
