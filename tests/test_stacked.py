"""Stacked students (kdlab.engine.stacked) against their standalone runs, checkpoints that resume in
either mode, which models stack, and the captured CUDA step against the eager one (where CUDA is).

Not bitwise: a stacked student's convolutions are one grouped convolution of all students, and its
classifier one batched matmul, whose kernels add up the batch's contributions to a weight gradient
in another order than a student's own kernels (its forward is bitwise the same on this CPU in NCHW;
the first weight gradients differ by ~1e-8). Training amplifies those roundings a little each step.
Measured on digits (convnet-4 students of a convnet-8 teacher, 2 epochs = 46 SGD steps, one thread,
AVX-512 CPU): weights and momentum agree to 6e-6 absolute (weights of size ~0.5; under 1e-6 for the
ce and kl students, 3e-6 for mse, 6e-6 for dkd), epoch losses to 1.4e-7 relative, test and training
accuracy exactly; a run stopped mid-epoch and resumed in the other mode is as close. (1.3e-4 and
3.8e-7 while the optimiser updated the stacked tensors as one: its rounding of an element depends on
the element's place in the tensor; each student's slice is now a tensor of its own.) The bounds
asserted below are about 15x what was measured.
"""

from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures_engine import checkpoint, make_config, train_losses
from torch import nn

import kdlab.engine.loop
import kdlab.engine.step
from kdlab.data import load_dataset
from kdlab.engine import Trainer, train, train_lockstep
from kdlab.engine.stacked import (
    PROBE_TOLERANCE,
    PROBE_TOLERANCE_FP32,
    StackedStudents,
    probe_difference,
    stack_models,
)
from kdlab.errors import RunInterrupted
from kdlab.losses import LOSSES, register_loss
from kdlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHT_ATOL = 1e-4  # measured 6.0e-6
LOSS_RTOL = 2e-6  # measured 1.4e-7

STUDENTS = {  # one architecture and one optimiser: they stack; each its own loss, alpha and tau
    "ce": {"loss": "ce"},
    "kl": {"loss": "kl", "alpha": 0.9, "tau": 4.0},
    "mse": {"loss": "mse"},
}


def configs(root: Path, teacher: str, stack: str) -> list:
    made = [make_config(root / name, teacher=teacher, **kd) for name, kd in STUDENTS.items()]
    for config in made:
        config.stack = stack
    return made


def assert_close_runs(run_a: Path, run_b: Path) -> None:
    """Equal within the rounding of grouped kernels (module docstring): weights, buffers, momentum,
    losses; the same checkpoint format (keys, shapes, optimiser groups). Prints the differences."""
    a, b = checkpoint(run_a), checkpoint(run_b)
    assert a.keys() == b.keys() and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    assert all(a["model"][name].shape == value.shape for name, value in b["model"].items())
    groups_a, groups_b = a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]
    assert [{**g, "params": None} for g in groups_a] == [{**g, "params": None} for g in groups_b]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    pairs = [(a["model"][name].float(), value.float()) for name, value in b["model"].items()]
    pairs += [
        (a["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
        for key, value in b["optimizer"]["state"].items()
    ]
    weights = max((x - y).abs().max().item() for x, y in pairs)
    losses_a, losses_b = train_losses(run_a), train_losses(run_b)
    losses = max(abs(x - y) / abs(y) for x, y in zip(losses_a, losses_b, strict=True))
    print(f"{Path(run_a).name}: weights and momentum differ by {weights:.1e}, epoch losses by {losses:.1e}")
    assert weights <= WEIGHT_ATOL and losses <= LOSS_RTOL


def test_stacked_students_equal_their_standalone_runs(tmp_path, digits_teacher, capsys):
    trainer = Trainer(configs(tmp_path / "probe", digits_teacher, "on"))
    students = [trainer.build_student(config, False, False) for config in trainer.configs]
    (unit,) = trainer.make_units(students)  # all three as one stacked module
    assert isinstance(unit, StackedStudents) and unit.count == 3
    summaries = train_lockstep(configs(tmp_path / "stacked", digits_teacher, "on"))
    for (name, kd), summary in zip(STUDENTS.items(), summaries, strict=True):
        alone = train(make_config(tmp_path / "alone" / name, teacher=digits_teacher, **kd))
        assert_close_runs(tmp_path / "stacked" / name, tmp_path / "alone" / name)
        assert summary["test_acc_last"] == alone["test_acc_last"]
        assert summary["train_acc"] == alone["train_acc"]
        assert summary["logit_distance"] == pytest.approx(alone["logit_distance"], rel=1e-3)


@pytest.fixture
def feature_loss():
    """A loss that reads both penultimate feature vectors (as kdlab's feature losses do)."""

    @register_loss("normgap", label="NormGap", reads=("student_features", "teacher_features"))
    def norm_gap(student_logits, targets, *, student_features, teacher_features):
        gap = student_features.norm(dim=1) - teacher_features.norm(dim=1)
        return {"ce": F.cross_entropy(student_logits, targets), "norm": 0.1 * gap.square().mean()}

    yield
    LOSSES.unregister("normgap")


def test_stacked_students_get_features_and_the_epoch_their_losses_read(
    tmp_path, digits_teacher, feature_loss
):
    """A feature loss reads each student's slice of the stacked penultimate features; DKD reads the
    epoch (its warm-up ramp): both stacked equal their standalone runs within the same bounds."""
    students = {"normgap": {"loss": "normgap"}, "dkd": {"loss": "dkd", "dkd_warmup": 2}}

    def made(root: Path, stack: str) -> list:
        configs = [make_config(root / name, teacher=digits_teacher, **kd) for name, kd in students.items()]
        for config in configs:
            config.stack = stack
        return configs

    trainer = Trainer(made(tmp_path / "probe", "on"))
    (unit,) = trainer.make_units([trainer.build_student(config, False, False) for config in trainer.configs])
    assert isinstance(unit, StackedStudents)
    train_lockstep(made(tmp_path / "stacked", "on"))
    for name, kd in students.items():
        train(make_config(tmp_path / "alone" / name, teacher=digits_teacher, **kd))
        assert_close_runs(tmp_path / "stacked" / name, tmp_path / "alone" / name)


def interrupt_at_loss_call(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """SIGINT during the ``at_call``-th loss evaluation (1-based): the loop stops after that step."""
    original, calls = kdlab.engine.step.loss_terms, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(kdlab.engine.step, "loss_terms", counting)


@pytest.mark.parametrize(("first", "then"), [("on", "off"), ("off", "on")])
def test_checkpoints_resume_across_stacked_and_unstacked(tmp_path, digits_teacher, monkeypatch, first, then):
    """Stopped mid-epoch while stacked, resumed unstacked (and the reverse): the standard per-student
    checkpoint carries weights, momentum and the epoch's running sums across."""
    steps_per_epoch = math.ceil(len(load_dataset("digits").train) / 64)
    straight = tmp_path / "straight"
    train_lockstep(configs(straight, digits_teacher, first))
    # Three students per step: the first student's loss at epoch 2, step 4 sends the signal.
    interrupt_at_loss_call(monkeypatch, 3 * (steps_per_epoch + 3) + 1)
    with pytest.raises(RunInterrupted, match="stopped by SIGINT at epoch 2, step 4"):
        train_lockstep(configs(tmp_path / "run", digits_teacher, first))
    monkeypatch.undo()
    for name in STUDENTS:
        saved = checkpoint(tmp_path / "run" / name)
        assert (saved["epoch"], saved["epoch_progress"]["step"]) == (1, 4)
    train_lockstep(configs(tmp_path / "run", digits_teacher, then), resume=True)
    for name in STUDENTS:
        assert_close_runs(tmp_path / "run" / name, straight / name)


class ChannelShuffle(nn.Module):
    """A model whose forward mixes channels (reverses them): it cannot be channel-stacked."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(4, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flip(1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class WithLayerNorm(ChannelShuffle):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)


@pytest.mark.parametrize("model", ["convnet-4", "mlp-16", "wrn-10-1", "resnet20"])
def test_kdlab_models_stack_exactly_in_the_forward(model):
    """The probe accepts kdlab's models (in float64 they differ by rounding only: measured at most
    2e-16 of the largest logit); their stacked forward is each student's (NCHW, fp32)."""
    torch.manual_seed(0)
    size, channels = (8, 1) if model in ("convnet-4", "mlp-16") else (16, 3)
    models = [create_model(model, 10, channels, size) for _ in range(3)]
    inputs = torch.randn(5, channels, size, size)
    stacked, reason = stack_models(models, inputs[:2])
    assert reason is None
    difference, precision, tolerance = probe_difference(stacked, models, inputs[:2])
    assert (precision, tolerance) == ("float64", PROBE_TOLERANCE) and difference <= 1e-15
    with torch.no_grad():
        together = stacked.eval()(inputs)
        for index, single in enumerate(models):
            assert torch.allclose(together[:, index], single.eval()(inputs), rtol=1e-5, atol=1e-6)


def tf32_like(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """A float32 convolution's output with 10 mantissa bits, as TF32 gives on a GPU (float64 as is)."""
    if output.dtype != torch.float32:
        return output
    return (output.view(torch.int32) & ~0x1FFF).view(torch.float32)


def test_float32_rounding_such_as_tf32_does_not_stop_stacking():
    """The students' convolutions round as TF32 does (the stacked ones do not): in float32 their
    forwards differ by far more than the old float32 probe's 1e-4, yet the float64 probe stacks them."""
    torch.manual_seed(0)
    models = [create_model("wrn-10-1", 10, 3, 16) for _ in range(8)]
    stacked, reason = stack_models(models, torch.randn(2, 3, 16, 16))  # stacked before the hooks
    assert reason is None
    for model in models:
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                layer.register_forward_hook(tf32_like)
    probe = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        alone = torch.stack([model.eval()(probe) for model in models], dim=1)
        float32_difference = ((stacked.eval()(probe) - alone).abs().max() / alone.abs().max()).item()
    assert float32_difference > 1e-4  # what the float32 probe refused
    assert probe_difference(stacked, models, probe)[0] <= 1e-15


class Float32Inside(ChannelShuffle):
    """A model whose forward casts to float32 itself: it does not run in float64."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float()).mean(dim=(2, 3))


def test_models_that_mix_channels_or_hold_other_parameters_do_not_stack():
    shuffled, reason = stack_models([ChannelShuffle(), ChannelShuffle()], torch.randn(2, 1, 6, 6))
    found = re.fullmatch(
        r"its forward mixes channels: the stacked forward differs from the students' by (\S+) of their "
        r"largest logit in float64, above the 1e-09 that rounding allows",
        reason,
    )
    assert shuffled is None and found and float(found[1]) > 1e-2  # O(1), 1e7 above the tolerance
    normed, reason = stack_models([WithLayerNorm(), WithLayerNorm()], torch.randn(2, 1, 6, 6))
    assert normed is None and reason == "its layer norm (LayerNorm) has parameters kdlab cannot stack"
    models = [Float32Inside(), Float32Inside()]
    stacked, reason = stack_models(models, torch.randn(2, 1, 6, 6))
    assert reason is None
    difference, precision, tolerance = probe_difference(stacked, models, torch.randn(2, 1, 6, 6))
    assert (precision, tolerance) == ("float32 (TF32 off)", PROBE_TOLERANCE_FP32) and difference <= 1e-6


def test_why_students_do_not_stack_is_said_once_without_progress(
    tmp_path, digits_teacher, monkeypatch, capsys
):
    made = configs(tmp_path, digits_teacher, "on")  # progress: false
    trainer = Trainer(made)
    students = [trainer.build_student(config, False, False) for config in made]
    monkeypatch.setattr(kdlab.engine.loop, "stack_models", lambda *args: (None, "a reason of the probe"))
    for _ in range(2):  # the units are made again when a student diverges
        units = trainer.make_units(students)
    assert [type(unit).__name__ for unit in units] == ["OneStudent"] * 3
    assert capsys.readouterr().err.splitlines() == [
        "kdlab: convnet-4 students not stacked (a reason of the probe): lockstep instead"
    ]


def test_mixed_architectures_fall_back_to_lockstep(tmp_path, digits_teacher):
    made = configs(tmp_path, digits_teacher, "on")
    made[2].model = "convnet-8"
    trainer = Trainer(made)
    units = trainer.make_units([trainer.build_student(config, False, False) for config in made])
    assert [type(unit).__name__ for unit in units] == ["StackedStudents", "OneStudent"]
    assert [unit.slots for unit in units] == [[0, 1], [2]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the captured step needs CUDA")
def test_captured_cuda_step_equals_the_eager_step(tmp_path, digits_teacher):
    """On CUDA: a run whose full batches replay one captured graph against the same run eager
    (cuda_graph: false). The graph runs the same kernels on the same addresses, so they agree to the
    rounding of kernels that cuDNN may choose differently between runs (same bound as stacking)."""
    runs = {}
    for graph in (True, False):
        made = configs(tmp_path / f"graph-{graph}", digits_teacher, "on")
        for config in made:  # deterministic kernels: the two runs may differ only by the capture
            config.device, config.cuda_graph, config.deterministic = "cuda", graph, True
        trainer = Trainer(made)
        students = [trainer.build_student(config, False, False) for config in made]
        trainer.fit(students)
        runs[graph] = trainer.step
    assert runs[True].graph is not None and runs[True].replays > 0 and runs[False].graph is None
    for name in STUDENTS:
        assert_close_runs(tmp_path / "graph-True" / name, tmp_path / "graph-False" / name)
