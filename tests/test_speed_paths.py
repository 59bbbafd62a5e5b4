"""The speed paths against the plain path: teacher-logit cache = live teacher, lockstep = standalone,
no host-device synchronisation inside an epoch, and the opt-in switches.

Every comparison is exact (``torch.equal``) except two, whose tolerances are stated where they are
made: training with the cache against a teacher whose logits are not float16 numbers, and the clean
(unaugmented) pass of one-channel data, where the live teacher itself moves by an fp32 ulp.
"""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_data import write_idx, write_imagefolder
from fixtures_engine import (
    assert_same_weights,
    make_config,
    random_teacher,
    state,
    train_losses,
)
from torch import nn
from torch.overrides import TorchFunctionMode

from kdlab import cache as cache_module
from kdlab.config import RunConfig, build_config
from kdlab.device import autocast_context
from kdlab.engine import Trainer, train, train_lockstep
from kdlab.engine import loop as engine_loop
from kdlab.engine.stacked import stacks
from kdlab.errors import UserError

# Tiny nets compared bitwise: one thread (conftest.one_torch_thread) is as fast, and does not stall
# when other jobs share the cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Downloads and teacher-logit caches go to a fresh folder, never the user's."""
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))


# --- the teacher-logit cache ---------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["digits", "fashion-mnist"])
def test_cached_logits_are_the_live_teachers_rounded_to_float16(tmp_path, capsys, dataset):
    """Every batch of an epoch (random crops and flips) and of the clean pass: lookup == fp16(live)."""
    if dataset == "digits":  # 8x8, pad 1, no flips: 3 x 3 = 9 views
        data_dir, in_channels, size_line = None, 1, "1437 images x 9 views (3x3 crops x 1 flips) x 10 classes"
    else:  # 28x28, pad 2 and flips: 5 x 5 x 2 = 50 views
        data_dir, in_channels = write_idx(tmp_path / "fmnist", n_train=120, n_test=40).path, 1
        size_line = "120 images x 50 views (5x5 crops x 2 flips) x 10 classes x 2 B = 0.1 MB"
    teacher = random_teacher(tmp_path / "teacher.pt", in_channels)
    config = make_config(tmp_path / "student", dataset, data_dir, teacher=str(teacher), loss="kl", cache=True)
    trainer = Trainer([config])
    assert size_line in capsys.readouterr().out
    cache = trainer.logit_cache
    grid = cache.grid
    assert cache.table.shape == (len(trainer.splits.train), grid.num_views, 10)
    assert cache.table.dtype == torch.float16
    record = json.loads(cache.path.with_suffix(".json").read_text())
    assert (record["pad"], record["flip"], record["precision"]) == (grid.pad, grid.flip, "fp32")
    # Views differ (so the lookup's index arithmetic matters), and every lookup is exact.
    assert not torch.equal(cache.table[:, 0], cache.table[:, -1])
    flips_seen = 0
    trainer.train_loader.set_epoch(1)
    for batch in trainer.train_loader:
        live = trainer.live_teacher_logits(batch.inputs)
        assert torch.equal(trainer.teacher_logits(batch), live.half().float())
        flips_seen += int(batch.aug.flip.sum())
    assert (flips_seen > 0) == (dataset == "fashion-mnist")
    # The clean pass (logit_distance) reads the centre view. Unaugmented one-channel batches keep the
    # dataset's strides, for which oneDNN picks another kernel: the live teacher itself then differs by
    # an fp32 ulp, so here the cache is within one float16 rounding step (2^-11 relative) of it.
    for batch in trainer.clean_train_loader:
        live = trainer.live_teacher_logits(batch.inputs)
        assert torch.allclose(trainer.teacher_logits(batch), live, rtol=2**-11, atol=2**-24)


def test_cache_is_reused_and_keyed_by_the_teacher(tmp_path, capsys, monkeypatch):
    first = random_teacher(tmp_path / "first.pt", 1, seed=0)
    config = make_config(tmp_path / "a", teacher=str(first), loss="mse", cache=True)
    path = Trainer([config]).logit_cache.path
    capsys.readouterr()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(cache_module, "_build", no_rebuild)
    again = Trainer([make_config(tmp_path / "b", teacher=str(first), loss="kl", cache=True)])
    assert again.logit_cache.path == path
    assert f"reusing {path}" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))
    second = random_teacher(tmp_path / "second.pt", 1, seed=1)
    other = Trainer([make_config(tmp_path / "c", teacher=str(second), loss="kl", cache=True)])
    assert other.logit_cache.path != path and other.logit_cache.path.parent == path.parent


def test_cache_refuses_above_its_size_limit_and_for_continuous_augmentation(tmp_path, capsys):
    teacher = random_teacher(tmp_path / "teacher.pt", 1)
    config = make_config(
        tmp_path / "a",
        teacher=str(teacher),
        loss="kl",
        cache=True,
        cache_limit_gb=1e-4,
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(UserError, match=r"would take 0\.3 MB, above kd\.cache_limit_gb=0\.0001: raise it"):
        Trainer([config])
    assert "1437 images x 9 views" in capsys.readouterr().out  # the estimate comes first
    assert not list((tmp_path / "c").glob("*"))  # nothing written
    folder = write_imagefolder(tmp_path / "images", classes=3, per_class=2, size=8)
    rgb = random_teacher(tmp_path / "rgb.pt", 3, num_classes=3)
    config = make_config(tmp_path / "b", "imagefolder", folder, teacher=str(rgb), loss="kl", cache=True)
    config.data.image_size, config.data.num_workers, config.optim.batch_size = 8, 0, 2
    with pytest.raises(UserError, match="kd.cache needs an in-memory dataset"):
        Trainer([config])


class ScaledTeacher(nn.Module):
    """A teacher whose logits are ``scale`` times another's."""

    def __init__(self, teacher: nn.Module, scale: float) -> None:
        super().__init__()
        self.teacher, self.scale, self.num_classes = teacher, scale, teacher.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x) * self.scale


def test_a_failed_cache_build_leaves_no_file_and_touches_nothing_else(tmp_path, monkeypatch):
    """Logits beyond float16's range stop the build mid-way: its temporary file goes, the user's stay."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "mine.npy").write_bytes(b"the user's")
    (folder / ".mine.tmp").write_bytes(b"also the user's")
    load_teacher = engine_loop.load_teacher
    monkeypatch.setattr(
        engine_loop, "load_teacher", lambda *args, **kwargs: ScaledTeacher(load_teacher(*args, **kwargs), 1e7)
    )
    teacher = random_teacher(tmp_path / "teacher.pt", 1)
    config = make_config(tmp_path / "a", teacher=str(teacher), loss="kl", cache=True, cache_dir=str(folder))
    with pytest.raises(UserError, match="outside float16's range"):
        Trainer([config])
    assert sorted(path.name for path in folder.iterdir()) == [".mine.tmp", "mine.npy"]
    assert (folder / "mine.npy").read_bytes() == b"the user's"


class Float16Teacher(nn.Module):
    """A teacher whose logits are float16 numbers, so that the cache holds them exactly."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher, self.num_classes = teacher, teacher.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).half().float()


def test_training_with_the_cache_equals_training_with_the_live_teacher(tmp_path, digits_teacher, monkeypatch):
    """Bitwise when the teacher's logits are float16 numbers; within fp16 rounding for any teacher."""
    kd = {"teacher": digits_teacher, "loss": "kl", "alpha": 0.9, "tau": 4.0}
    # Any teacher: the cache rounds each logit by at most 2^-11 relative (4.9e-4). Measured after 2
    # epochs (46 SGD steps): losses agree to 1.5e-5 relative, weights to 3e-3, test accuracy to one
    # image in 360; the bounds below leave a 10x margin.
    live = train(make_config(tmp_path / "live", **kd))
    cached = train(make_config(tmp_path / "cached", **kd, cache=True))
    assert cached["test_acc_last"] == pytest.approx(live["test_acc_last"], abs=1.0)
    assert train_losses(tmp_path / "cached") == pytest.approx(train_losses(tmp_path / "live"), rel=1e-4)
    cached_weights = state(tmp_path / "cached")
    for name, value in state(tmp_path / "live").items():
        assert torch.allclose(cached_weights[name].float(), value.float(), atol=3e-2), name
    # A teacher whose logits are float16 numbers: the cache is exact, so training is bitwise the same.
    load_teacher = engine_loop.load_teacher
    monkeypatch.setattr(
        engine_loop, "load_teacher", lambda *args, **kwargs: Float16Teacher(load_teacher(*args, **kwargs))
    )
    train(make_config(tmp_path / "live16", **kd))
    train(make_config(tmp_path / "cached16", **kd, cache=True))
    assert_same_weights(tmp_path / "live16", tmp_path / "cached16")


# --- lockstep ------------------------------------------------------------------------------------


def test_lockstep_students_equal_their_standalone_runs_bitwise(tmp_path, digits_teacher):
    students = {
        "ce": {"teacher": digits_teacher, "loss": "ce"},
        "kl": {"teacher": digits_teacher, "loss": "kl", "alpha": 0.9, "tau": 4.0},
        "mse": {"teacher": digits_teacher, "loss": "mse"},
    }
    configs = [make_config(tmp_path / "lockstep" / name, **kd) for name, kd in students.items()]
    summaries = train_lockstep(configs)
    for (name, kd), summary in zip(students.items(), summaries, strict=True):
        alone = train(make_config(tmp_path / "alone" / name, **kd))
        assert_same_weights(tmp_path / "lockstep" / name, tmp_path / "alone" / name)
        assert summary["test_acc_last"] == alone["test_acc_last"]
        assert summary["train_acc"] == alone["train_acc"]


# --- the fast step -------------------------------------------------------------------------------

# Tensor reads that make the host wait for the device (on CPU they are free, but the same code runs
# on a GPU, where each would stall the pipeline once per step).
SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
    torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.nonzero,
    torch.nonzero, torch.Tensor.masked_select, torch.masked_select, torch.unique,
}  # fmt: skip


class SyncCounter(TorchFunctionMode):
    """Counts syncing tensor reads while ``active``."""

    def __init__(self) -> None:
        super().__init__()
        self.active, self.reads = False, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.active and (func in SYNCING or (func is torch.Tensor.__getitem__ and _masks(args[1]))):
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _masks(index) -> bool:
    """Whether an index holds a boolean tensor (a mask: the result's size depends on the data)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


@pytest.mark.parametrize("stack", ["off", "on"])
@pytest.mark.parametrize("cache", [False, True])
def test_no_host_device_sync_inside_an_epoch(tmp_path, digits_teacher, cache, stack):
    """Between the first batch and the end of the data, the step loop reads no tensor on the host:
    live teacher or cache, students in lockstep or stacked."""
    configs = [
        make_config(tmp_path / name, teacher=digits_teacher, loss=loss, cache=cache)
        for name, loss in (("kl", "kl"), ("mse", "mse"))
    ]
    for config in configs:
        config.stack = stack
    trainer = Trainer(configs)
    students = [trainer.build_student(config, resume=False, overwrite=False) for config in configs]
    units = trainer.train_step_for(students).units
    assert [type(unit).__name__ for unit in units] == (
        ["StackedStudents"] if stack == "on" else ["OneStudent"] * 2
    )
    counter = SyncCounter()
    batches = trainer.train_loader

    class Watched:  # the loader, with the counter on from the first batch until the data ends
        def __getattr__(self, name):
            return getattr(batches, name)

        def __len__(self):
            return len(batches)

        def __iter__(self):
            for batch in batches:
                counter.active = True
                yield batch
            counter.active = False

    trainer.train_loader = Watched()
    with counter:
        trainer.train_epoch(students, 0)
    assert len(counter.reads) == 0, counter.reads
    assert students[0].metrics[-1]["epoch"] == 1  # the epoch did run, and its metrics were read at its end
    counter.active, values = True, torch.arange(3.0)
    with counter:  # the counter sees each kind of read
        values.sum().item(), bool(values[0]), float(values[1]), values.tolist(), values[values > 0]
    assert counter.reads == ["item", "__bool__", "__float__", "tolist", "__getitem__"]


def test_amp_compile_and_stacking_defaults():
    """fp32 on every device unless amp: bf16 (kdlab.device.AUTO_BF16 says why); stacking on CUDA only."""
    cpu, cuda, defaults = torch.device("cpu"), torch.device("cuda"), RunConfig()
    assert (defaults.amp, defaults.compile, defaults.channels_last, defaults.kd.cache) == (
        "auto",
        False,
        False,
        "auto",  # decided per run from its teacher passes (tests/test_gpu_paths.py)
    )
    assert (defaults.stack, defaults.cuda_graph) == ("auto", True)
    assert not isinstance(autocast_context(defaults, cpu), torch.autocast)  # auto = fp32 on CPU
    assert not isinstance(autocast_context(defaults, cuda), torch.autocast)  # and on CUDA
    bf16 = autocast_context(build_config(base={"amp": "bf16"}), cpu)
    assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    assert (stacks("auto", cpu), stacks("auto", cuda), stacks("on", cpu), stacks("off", cuda)) == (
        False,
        True,
        True,
        False,
    )
    with pytest.raises(UserError, match="stack='sometimes' is invalid: choose auto, on or off"):
        build_config(base={"stack": "sometimes"})
