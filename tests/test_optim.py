"""Optimisers and learning-rate schedules (kdlab.engine.student: ``lr_at``, ``make_optimizer``;
``OptimConfig``): every epoch's rate against hand-computed values, one AdamW step against its
formula, an AdamW digits run that learns, exact resume and stacking of AdamW students, and the
settings an optimiser or schedule does not read refused through the command line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fixtures_engine import checkpoint, kdlab_error, make_config, train_losses
from test_errors import snapshot
from test_stacked import interrupt_at_loss_call
from torch import nn

from kdlab.cli import main
from kdlab.config import RunConfig, build_config, identity, to_yaml
from kdlab.data import load_dataset
from kdlab.engine import Trainer, lr_at, make_optimizer, train, train_lockstep
from kdlab.engine.stacked import StackedStudents
from kdlab.engine.student import milestone_epochs, set_lr
from kdlab.errors import RunInterrupted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMING_KEYS = {"epoch_time_s", "train_images_per_s"}


def schedule(*overrides: str) -> list[float]:
    config = build_config(overrides=list(overrides))
    return [lr_at(config, epoch) for epoch in range(config.optim.epochs)]


# -- schedules ---------------------------------------------------------------------------------


def test_paper_step_schedule_decays_at_epochs_100_and_150_of_200() -> None:
    assert schedule() == pytest.approx([0.1] * 100 + [0.01] * 50 + [0.001] * 50, rel=1e-12)


@pytest.mark.parametrize(
    ("epochs", "rates"),
    [(1, [0.1]), (2, [0.1, 0.01]), (3, [0.1, 0.1, 0.01]), (4, [0.1, 0.1, 0.01, 0.001]),
     (5, [0.1, 0.1, 0.1, 0.01, 0.001])],
)  # fmt: skip
def test_short_step_schedules_round_milestones_up_and_never_to_epoch_0(
    epochs: int, rates: list[float]
) -> None:
    # [0.5, 0.75] of E epochs: milestones ceil(0.5 E), ceil(0.75 E): 1 -> (1, 1), never applied;
    # 3 -> (2, 3): 3 is past the last epoch (index 2). The old round() gave 0.01 for E = 1 and
    # 0.1, 0.1, 0.001 for E = 3.
    assert schedule(f"optim.epochs={epochs}") == pytest.approx(rates, rel=1e-12)


@pytest.mark.parametrize(
    ("epochs", "fractions", "milestones"),
    [(200, [0.5, 0.75], [100, 150]), (90, [0.3333, 0.6667], [30, 60]),
     (90, [0.3333333, 0.6666667], [30, 60]), (10, [0.3], [3]), (10, [0.0, 1.0], [1, 10]), (7, [0.5], [4])],
)  # fmt: skip
def test_milestone_epochs(epochs: int, fractions: list[float], milestones: list[int]) -> None:
    # 0.3 * 10 is 3.0000000000000004 in floats; 0.6667 * 90 = 60.003 (a 4-digit 2/3): both land on the
    # epoch meant. A fraction 0 still leaves epoch 0 at the base rate; 1.0 never applies.
    config = build_config(overrides=[f"optim.epochs={epochs}", f"optim.milestones={fractions}"])
    assert milestone_epochs(config) == milestones


def test_cosine_schedule() -> None:
    # lr (1 + cos(pi e / 4)) / 2 for e = 0..3: cos(pi/4) = sqrt(2)/2 = 0.70710678...
    half_root_2 = math.sqrt(2) / 2
    assert schedule("optim.schedule=cosine", "optim.epochs=4") == pytest.approx(
        [0.1, 0.05 * (1 + half_root_2), 0.05, 0.05 * (1 - half_root_2)], rel=1e-12
    )
    assert schedule("optim.schedule=cosine", "optim.epochs=1") == [0.1]


def test_warm_up_scales_the_schedule_linearly() -> None:
    # lr_e = base_e * min(1, (e + 1) / W)
    half_root_2 = math.sqrt(2) / 2
    assert schedule("optim.schedule=cosine", "optim.epochs=4", "optim.warmup_epochs=2") == pytest.approx(
        [0.05, 0.05 * (1 + half_root_2), 0.05, 0.05 * (1 - half_root_2)], rel=1e-12
    )
    step = schedule("optim.epochs=10", "optim.warmup_epochs=3", "optim.milestones=[0.5]", "optim.gamma=0.2")
    assert step == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1] + [0.02] * 5, rel=1e-12)
    # A milestone inside the warm-up: the warm-up scales the decayed rate.
    short = schedule("optim.epochs=3", "optim.warmup_epochs=2", "optim.milestones=[0.25]")
    assert short == pytest.approx([0.05, 0.01, 0.01], rel=1e-12)


# -- optimisers --------------------------------------------------------------------------------


class TwoParameters(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))  # decays (2-d)
        self.bias = nn.Parameter(torch.tensor([0.25, -1.0]))  # does not


def test_adamw_steps_follow_the_formula_with_the_rate_from_its_tensor() -> None:
    """Two fused AdamW steps against the formula in float64: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), wd on the 2-d weight only;
    the second step at the rate set_lr wrote."""
    config = build_config(
        overrides=["optim.name=adamw", "optim.betas=[0.5, 0.75]", "optim.eps=0.1", "optim.weight_decay=0.1"]
    )
    model = TwoParameters()
    optimizer = make_optimizer(model, config, lr=0.2)
    assert isinstance(optimizer, torch.optim.AdamW) and all(
        group["fused"] for group in optimizer.param_groups
    )
    gradients = [torch.tensor([0.3, -0.1, 2.0, 0.0]), torch.tensor([-0.6, 0.2, 1.0, 0.5])]
    bias_gradients = [torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.5])]
    expected = {"weight": model.weight.detach().double().flatten(), "bias": model.bias.detach().double()}
    moments = {name: [torch.zeros_like(value), torch.zeros_like(value)] for name, value in expected.items()}
    (b1, b2), eps = (0.5, 0.75), 0.1
    for t, (lr, g_weight, g_bias) in enumerate(zip([0.2, 0.05], gradients, bias_gradients, strict=True), 1):
        set_lr(optimizer, lr)
        model.weight.grad, model.bias.grad = g_weight.view(2, 2).clone(), g_bias.clone()
        optimizer.step()
        for name, gradient, decay in (("weight", g_weight, 0.1), ("bias", g_bias, 0.0)):
            m, v = moments[name]
            m.mul_(b1).add_((1 - b1) * gradient.double())
            v.mul_(b2).add_((1 - b2) * gradient.double() ** 2)
            update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
            expected[name] = expected[name] * (1 - lr * decay) - lr * update
    assert torch.allclose(model.weight.detach().double().flatten(), expected["weight"], rtol=1e-6, atol=1e-7)
    assert torch.allclose(model.bias.detach().double(), expected["bias"], rtol=1e-6, atol=1e-7)
    assert optimizer.state[model.weight]["step"].item() == 2


def test_identity_leaves_out_what_the_optimiser_and_schedule_do_not_read() -> None:
    sgd = identity(build_config())
    adamw = identity(build_config(overrides=["optim.name=adamw", "optim.schedule=cosine", "optim.lr=0.001"]))
    assert {"optim.momentum", "optim.nesterov", "optim.milestones", "optim.gamma"} <= sgd.keys()
    assert not {"optim.betas", "optim.eps"} & sgd.keys()
    assert {"optim.betas", "optim.eps", "optim.warmup_epochs", "optim.weight_decay"} <= adamw.keys()
    assert not {"optim.momentum", "optim.nesterov", "optim.milestones", "optim.gamma"} & adamw.keys()


def adamw_config(out: Path, **kd: object) -> RunConfig:
    """A 2-epoch digits convnet-4 run (fixtures_engine.make_config) with AdamW, cosine and 1 warm-up epoch."""
    config = make_config(out, **kd)
    optim = config.optim
    optim.name, optim.lr, optim.weight_decay, optim.schedule, optim.warmup_epochs = (
        "adamw",
        0.01,
        0.05,
        "cosine",
        1,
    )
    return config.validate()


def test_adamw_cosine_digits_run_learns(tmp_path: Path) -> None:
    config = adamw_config(tmp_path / "run")
    config.optim.lr, config.optim.warmup_epochs = 0.03, 0
    summary = train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [0.03, pytest.approx(0.015, rel=1e-12)]  # cosine over 2 epochs
    assert summary["test_acc_last"] > 50  # 10 classes: chance is 10% (measured 76.9%)
    saved = checkpoint(tmp_path / "run")["optimizer"]
    assert (
        saved["param_groups"][0]["betas"] == (0.9, 0.999) and saved["param_groups"][0]["weight_decay"] == 0.05
    )
    assert {"step", "exp_avg", "exp_avg_sq"} == set(next(iter(saved["state"].values())))


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


def _optimizer_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of last.pt's optimiser state, by 'parameter index.state name'."""
    state = checkpoint(run)["optimizer"]["state"]
    return {f"{index}.{name}": value for index, values in state.items() for name, value in values.items()}


def test_adamw_cosine_run_stopped_mid_epoch_resumes_to_exactly_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps_per_epoch = math.ceil(len(load_dataset("digits").train) / 64)
    straight = train(adamw_config(tmp_path / "straight"))
    interrupt_at_loss_call(monkeypatch, steps_per_epoch + 4)  # epoch 2 (the first after warm-up), step 4
    with pytest.raises(RunInterrupted, match="stopped by SIGINT at epoch 2, step 4"):
        train(adamw_config(tmp_path / "resumed"))
    monkeypatch.undo()
    saved = checkpoint(tmp_path / "resumed")
    assert (saved["epoch"], saved["epoch_progress"]["step"]) == (1, 4)
    resumed = train(adamw_config(tmp_path / "resumed"), resume=True)

    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")
    assert resumed["test_acc_last"] == straight["test_acc_last"]
    for kind in ("model", "optimizer"):
        if kind == "model":
            a, b = checkpoint(tmp_path / "resumed")["model"], checkpoint(tmp_path / "straight")["model"]
        else:
            a, b = _optimizer_tensors(tmp_path / "resumed"), _optimizer_tensors(tmp_path / "straight")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), kind


def test_resume_with_another_optimiser_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "1", "--batch-size", "64",
            "--set", "progress=false", "--set", "tensorboard=false", "--out", run]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    assert exit_info.value.code in (0, None)
    before = snapshot(run)
    line = kdlab_error(
        capsys, *args, "--epochs", "2", "--lr", "0.001", "--set", "optim.name=adamw", "--resume"
    )
    assert line.startswith(f"{run} was trained with optim.name='sgd', not 'adamw': --resume continues a run")
    assert snapshot(run) == before


# -- stacked students --------------------------------------------------------------------------

STUDENTS = {"ce": {"loss": "ce"}, "kl": {"loss": "kl", "alpha": 0.9, "tau": 4.0}, "mse": {"loss": "mse"}}
# Measured (digits, convnet-4 students of a convnet-8 teacher, 2 epochs = 46 AdamW steps, one thread,
# AMD EPYC CPU): weights and moments within 6.6e-7, epoch losses within 1.3e-7 relative; bounds ~15x.
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 2e-6


def stacked_configs(root: Path, teacher: str, stack: str) -> list[RunConfig]:
    made = [adamw_config(root / name, teacher=teacher, **kd) for name, kd in STUDENTS.items()]
    for config in made:
        config.stack = stack
    return made


def assert_close_adamw_runs(run_a: Path, run_b: Path) -> None:
    """Equal to the rounding of stacked kernels (tests/test_stacked.py): weights and every AdamW
    state tensor (the step counts exactly), epoch losses; the same optimiser groups."""
    a, b = checkpoint(run_a), checkpoint(run_b)
    assert [{**g, "params": None} for g in a["optimizer"]["param_groups"]] == [
        {**g, "params": None} for g in b["optimizer"]["param_groups"]
    ]
    state_a, state_b = _optimizer_tensors(run_a), _optimizer_tensors(run_b)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a if key.endswith(".step"))
    pairs = [(a["model"][name].float(), value.float()) for name, value in b["model"].items()]
    pairs += [(state_a[key], value) for key, value in state_b.items() if not key.endswith(".step")]
    weights = max((x - y).abs().max().item() for x, y in pairs)
    losses = max(abs(x - y) / abs(y) for x, y in zip(train_losses(run_a), train_losses(run_b), strict=True))
    print(f"{run_a.name}: weights and AdamW moments differ by {weights:.1e}, epoch losses by {losses:.1e}")
    assert weights <= WEIGHT_ATOL and losses <= LOSS_RTOL


def test_stacked_adamw_students_equal_their_standalone_runs(tmp_path: Path, digits_teacher: str) -> None:
    trainer = Trainer(stacked_configs(tmp_path / "probe", digits_teacher, "on"))
    (unit,) = trainer.make_units([trainer.build_student(config, False, False) for config in trainer.configs])
    assert isinstance(unit, StackedStudents) and isinstance(unit.optimizer, torch.optim.AdamW)
    train_lockstep(stacked_configs(tmp_path / "stacked", digits_teacher, "on"))
    for name, kd in STUDENTS.items():
        train(adamw_config(tmp_path / "alone" / name, teacher=digits_teacher, **kd))
        assert_close_adamw_runs(tmp_path / "stacked" / name, tmp_path / "alone" / name)


def test_adamw_students_stopped_alone_resume_stacked(
    tmp_path: Path, digits_teacher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stacked optimiser takes each student's restored AdamW state (moments and step count)."""
    steps_per_epoch = math.ceil(len(load_dataset("digits").train) / 64)
    train_lockstep(stacked_configs(tmp_path / "straight", digits_teacher, "off"))
    interrupt_at_loss_call(monkeypatch, 3 * (steps_per_epoch + 3) + 1)  # three students per step
    with pytest.raises(RunInterrupted, match="stopped by SIGINT at epoch 2, step 4"):
        train_lockstep(stacked_configs(tmp_path / "run", digits_teacher, "off"))
    monkeypatch.undo()
    train_lockstep(stacked_configs(tmp_path / "run", digits_teacher, "on"), resume=True)
    for name in STUDENTS:
        assert_close_adamw_runs(tmp_path / "run" / name, tmp_path / "straight" / name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the captured step needs CUDA")
def test_captured_cuda_adamw_step_equals_the_eager_step(tmp_path: Path, digits_teacher: str) -> None:
    """On CUDA: fused AdamW (capturable) replayed in one CUDA graph against the same run eager."""
    runs = {}
    for graph in (True, False):
        made = stacked_configs(tmp_path / f"graph-{graph}", digits_teacher, "on")
        for config in made:
            config.device, config.cuda_graph, config.deterministic = "cuda", graph, True
        trainer = Trainer(made)
        trainer.fit([trainer.build_student(config, False, False) for config in made])
        runs[graph] = trainer.step
    assert runs[True].graph is not None and runs[True].replays > 0 and runs[False].graph is None
    for name in STUDENTS:
        assert_close_adamw_runs(tmp_path / "graph-True" / name, tmp_path / "graph-False" / name)


# -- settings refused --------------------------------------------------------------------------

DIGITS = ["train", "--dataset", "digits", "--model", "convnet-4", "--epochs", "2", "--batch-size", "64",
          "--set", "progress=false", "--set", "tensorboard=false"]  # fmt: skip
ADAMW_READS = "which reads optim.lr, optim.betas, optim.eps, optim.weight_decay"
SGD_READS = "which reads optim.lr, optim.momentum, optim.nesterov, optim.weight_decay"
COSINE_READS = "which reads optim.lr, optim.epochs, optim.warmup_epochs"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["optim.name=adamw", "optim.momentum=0.8"],
         f"optim.momentum=0.8 is not read by optim.name=adamw, {ADAMW_READS}: drop optim.momentum, or set "
         "optim.name=sgd"),
        (["optim.name=adamw", "optim.nesterov=false"],
         f"optim.nesterov=False is not read by optim.name=adamw, {ADAMW_READS}: drop optim.nesterov, or set "
         "optim.name=sgd"),
        (["optim.betas=[0.9, 0.95]"],
         f"optim.betas=[0.9, 0.95] is not read by optim.name=sgd, {SGD_READS}: drop optim.betas, or set "
         "optim.name=adamw"),
        (["optim.eps=1e-6"],
         f"optim.eps=1e-06 is not read by optim.name=sgd, {SGD_READS}: drop optim.eps, or set optim.name=adamw"),
        (["optim.schedule=cosine", "optim.milestones=[0.3]"],
         f"optim.milestones=[0.3] is not read by optim.schedule=cosine, {COSINE_READS}: drop optim.milestones, "
         "or set optim.schedule=step"),
        (["optim.schedule=cosine", "optim.gamma=0.2"],
         f"optim.gamma=0.2 is not read by optim.schedule=cosine, {COSINE_READS}: drop optim.gamma, or set "
         "optim.schedule=step"),
        (["optim.name=adam"], "optim.name='adam' is invalid (did you mean adamw?): choose sgd or adamw"),
        (["optim.schedule=onecycle"], "optim.schedule='onecycle' is invalid: choose step or cosine"),
        (["optim.name=adamw", "optim.betas=[0.9, 1.0]"],
         "optim.betas=[0.9, 1.0] is invalid: it must be two decay rates in [0, 1), e.g. [0.9, 0.999]"),
        (["optim.name=adamw", "optim.betas=0.9"],
         "optim.betas=[0.9] is invalid: it must be two decay rates in [0, 1), e.g. [0.9, 0.999]"),
        (["optim.name=adamw", "optim.eps=0"], "optim.eps=0.0 is invalid: it must be positive and finite, e.g. 1e-8"),
        (["optim.warmup_epochs=2"],
         "optim.warmup_epochs=2 is invalid: it must be a whole number of epochs in [0, 2) (fewer than "
         "optim.epochs: the run must reach optim.lr)"),
        (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1 is invalid: it must be a whole number of epochs in [0, 2)"),
    ],
    ids=["adamw-momentum", "adamw-nesterov", "sgd-betas", "sgd-eps", "cosine-milestones", "cosine-gamma",
         "unknown-optimiser", "unknown-schedule", "beta-1", "one-beta", "eps-0", "warmup-all-epochs",
         "warmup-negative"],
)  # fmt: skip
def test_settings_refused_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: list[str], message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own notes\n")
    sets = [part for setting in settings for part in ("--set", setting)]
    line = kdlab_error(capsys, *DIGITS, *sets, "--out", out)
    assert line.startswith(message), line
    assert snapshot(out) == {"notes.txt": b"the user's own notes\n"}


def test_a_setting_given_at_its_default_or_read_back_from_config_yaml_is_accepted(tmp_path: Path) -> None:
    # "Given" means "differs from its default": momentum 0.9 with AdamW changes nothing.
    build_config(
        overrides=["optim.name=adamw", "optim.momentum=0.9", "optim.schedule=cosine", "optim.gamma=0.1"]
    )
    config = build_config(overrides=["optim.name=adamw", "optim.schedule=cosine", "optim.betas=[0.8, 0.99]"])
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    assert build_config(tmp_path / "config.yaml") == config
