"""One student in training: its model, optimiser, learning-rate schedule, run folder and checkpoint.

Also the rules that decide which students may train together: on one data order and one teacher
pass (:func:`group_key`, used by the engine and by ``kdlab sweep`` alike), and, within such a group,
as one stacked module (:func:`stack_key`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import RunConfig, first_difference, from_record
from kdlab.errors import UserError, first_line, shown
from kdlab.identity import checkpoint_inputs, compare_inputs, compares_teachers
from kdlab.models import check_logits
from kdlab.runs import CHECKPOINT_FORMAT, RunFolder, load_checkpoint, load_model_state


def milestone_epochs(config: RunConfig) -> list[int]:
    """The step schedule's milestones as 0-based epochs: ``m = max(1, ceil(f * E))`` for each fraction
    ``f`` of ``E = optim.epochs`` (``f * E`` first rounded to hundredths of an epoch, so that float
    noise and 4-digit fractions such as 0.6667 of 90 epochs give epoch 60, not 61).

    Rounding up never decays earlier than the fraction says, never at epoch 0 (the first epoch trains at
    ``optim.lr``), and keeps the two paper milestones apart in short runs: E = 200 gives 100 and 150
    (the paper's), E = 3 gives 2 and 3, E = 1 gives 1 and 1. A milestone at or past E never applies.
    """
    epochs = config.optim.epochs
    return [max(1, math.ceil(round(fraction * epochs, 2))) for fraction in config.optim.milestones]


def lr_at(config: RunConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` e, held for the whole epoch (``lr`` = optim.lr,
    ``E`` = optim.epochs, ``W`` = optim.warmup_epochs)::

        step:    base_e = lr * gamma^k,  k = number of milestones m <= e  (:func:`milestone_epochs`)
        cosine:  base_e = lr * (1 + cos(pi * e / E)) / 2                  (epoch 0 at lr; the last
                                                                           at lr * (1 - cos(pi / E)) / 2 > 0)
        lr_e = base_e * min(1, (e + 1) / W)                               (W = 0: lr_e = base_e)

    Warm-up scales the schedule's own rate linearly: epoch 0 trains at base_0 / W, epoch W - 1 at
    base_{W-1}, and from epoch W on the schedule is as without warm-up.
    E = 200 step: 0.1 for epochs 0-99, 0.01 for 100-149, 0.001 for 150-199; E = 3: 0.1, 0.1, 0.01;
    E = 1: 0.1.
    """
    optim = config.optim
    if optim.schedule == "cosine":
        rate = optim.lr * (1 + math.cos(math.pi * epoch / optim.epochs)) / 2
    else:
        rate = optim.lr * optim.gamma ** sum(epoch >= milestone for milestone in milestone_epochs(config))
    if optim.warmup_epochs > 0:
        rate *= min(1.0, (epoch + 1) / optim.warmup_epochs)
    return rate


def make_optimizer(
    model: nn.Module, config: RunConfig, lr: float | None = None, parameters: list[Tensor] | None = None
) -> torch.optim.Optimizer:
    """``optim.name``: SGD with (Nesterov) momentum, or AdamW (decoupled weight decay); for both,
    weight decay only on parameters with more than one dimension (not on biases and norm scales).
    ``parameters``: the tensors to update, default ``model.parameters()`` (a stacked unit passes each
    student's slice of them, ``kdlab.engine.stacked.StackedStudents``).

    Fused (one kernel updates every parameter, on CPU and CUDA alike), with the learning rate held
    in a 0-d tensor on the parameters' device: :func:`set_lr` writes that tensor in place, so a
    captured CUDA graph of the step reads the new rate without being captured again. AdamW's step
    count (its bias correction) is a device tensor too.
    """
    tensors = list(model.parameters()) if parameters is None else parameters
    decay = [p for p in tensors if p.ndim > 1]
    no_decay = [p for p in tensors if p.ndim <= 1]
    optim = config.optim
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    device = tensors[0].device
    rate = torch.tensor(optim.lr if lr is None else lr, device=device)
    if optim.name == "adamw":
        # capturable only lets torch's check allow CUDA-graph capture: the fused kernel is the same
        # either way (it reads step and lr from device tensors), so its warning that capturable slows
        # uncaptured steps (the warm-up steps, a last partial batch) does not apply.
        optimizer = torch.optim.AdamW(
            groups, lr=rate, betas=(optim.betas[0], optim.betas[1]), eps=optim.eps, fused=True,
            capturable=device.type == "cuda",
        )  # fmt: skip
        optimizer._warned_capturable_if_run_uncaptured = True
        return optimizer
    return torch.optim.SGD(groups, lr=rate, momentum=optim.momentum, nesterov=optim.nesterov, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into the optimiser's learning-rate tensor (in place: no new capture, no sync)."""
    for group in optimizer.param_groups:
        if not group["params"]:  # e.g. no parameter without weight decay: nothing to update
            continue
        device = group["params"][0].device
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:  # restored from a checkpoint, which stores the rate as a number
            group["lr"] = torch.tensor(lr, device=device)
        group["fused"], group["foreach"] = True, None  # also for checkpoints of other settings
        if "capturable" in group:  # AdamW: as make_optimizer sets it here (a checkpoint holds its own)
            group["capturable"] = device.type == "cuda"


def group_key(config: RunConfig) -> dict[str, Any]:
    """What students must share to train as one group (one data order, one teacher pass per batch).

    Two configs with equal keys may train in lockstep; ``kdlab sweep`` groups its students by it.
    """
    return {
        "kd.teacher": str(config.kd.teacher),
        "kd.ensemble": config.kd.ensemble,  # how an ensemble teacher combines its members' logits
        "kd.cache": config.kd.cache,  # the cache replaces the teacher for the whole group
        "seed": config.seed,
        "data": repr(config.data),
        "optim.batch_size": config.optim.batch_size,
        "optim.epochs": config.optim.epochs,
        "device": config.device,
        "amp": config.amp,
        "channels_last": config.channels_last,
        "stack": config.stack,  # group settings: one step function serves the whole group
        "cuda_graph": config.cuda_graph,
    }


def stack_key(config: RunConfig) -> dict[str, Any]:
    """What students of one group must also share to train as one stacked module
    (:mod:`kdlab.engine.stacked`): the architecture and every optimiser setting (one optimiser)."""
    return {
        **group_key(config),
        "model": config.model,
        "optim": repr(config.optim),
        "compile": config.compile,
        "sync_bn": config.sync_bn,
    }


def check_group(configs: list[RunConfig]) -> None:
    """A UserError naming the first setting that keeps ``configs`` from training as one group."""
    lead = group_key(configs[0])
    for config in configs[1:]:
        for key, value in group_key(config).items():
            if value != lead[key]:
                raise UserError(f"lockstep students must share '{key}': run them separately")


@dataclass
class Student:
    """One student in training: its model (``module`` is what the step calls), optimiser and run folder."""

    config: RunConfig
    run: RunFolder
    model: nn.Module
    optimizer: torch.optim.Optimizer
    module: nn.Module
    data_info: dict[str, Any] = field(default_factory=dict)  # num_classes, in_channels, image_size
    start_epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    test_acc_best: float = -1.0
    best_epoch: int = 0
    writer: Any = None
    progress: dict[str, Any] | None = None  # running sums of an epoch a mid-epoch checkpoint stopped in
    resume: bool = False  # --resume and --overwrite as asked (see Trainer.start)
    overwrite: bool = False
    resumed: bool = False  # restored from last.pt
    lr: float | None = None  # the learning rate of the current epoch, as the host knows it
    inputs: dict[str, Any] = field(default_factory=dict)  # its run id and inputs' identity (kdlab.identity)

    def checkpoint(self, epoch: int, progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``last.pt``/``best.pt`` hold after ``epoch`` finished epochs (plus ``progress`` when mid-epoch)."""
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a number, as in any torch checkpoint (no device read)
            group["lr"] = self.config.optim.lr if self.lr is None else self.lr
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.config.model,
            **self.data_info,
            "dataset": self.config.data.name,
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "epoch": epoch,
            "test_acc_best": self.test_acc_best,
            "best_epoch": self.best_epoch,
            "rng_cpu": torch.get_rng_state(),
            "epoch_progress": progress,
            # With the checkpoint: resume compares the settings, and rewrites every metrics row even
            # when writing metrics.jsonl failed (the rows are written first, the checkpoint last).
            "config": self.config.to_dict(),
            "metrics": list(self.metrics),
            "inputs": self.inputs,  # what --resume compares the inputs it reads then with
        }

    def restore(self, device: torch.device) -> None:
        """Continue from ``last.pt``: weights, optimiser, epoch, best so far, metrics, CPU generator.

        A UserError (nothing written) when the checkpoint is incomplete, its weights do not fit, or
        the run now asks for settings, or reads inputs, that change what it computes
        (:func:`check_resume`, comparing ``self.inputs``). The run keeps the id it started with.
        """
        path = self.run.last_checkpoint
        checkpoint = load_checkpoint(path, device, resume=True)
        check_resume(checkpoint, self.config, self.run, self.inputs)
        self.inputs = {
            **self.inputs,
            "run_id": checkpoint_inputs(checkpoint).get("run_id", self.inputs.get("run_id")),
        }
        what = f"{self.config.model} with {checkpoint['num_classes']} classes"
        load_model_state(self.model, checkpoint["model"], path, what)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["rng_cpu"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise UserError(
                f"{path} holds optimizer or generator state that does not fit a {what} ({shown(str(error))}): "
                "use another checkpoint, or --overwrite to start the run again"
            ) from None
        set_lr(self.optimizer, lr_at(self.config, int(checkpoint["epoch"])))
        self.start_epoch = int(checkpoint["epoch"])
        self.test_acc_best = float(checkpoint["test_acc_best"])
        self.best_epoch = int(checkpoint["best_epoch"])
        self.metrics = _restored_rows(checkpoint, self.run)
        self.progress = checkpoint.get("epoch_progress")
        self.resumed = True


def check_resume(
    checkpoint: dict[str, Any], config: RunConfig, run: RunFolder, inputs: dict[str, Any] | None = None
) -> None:
    """Refuse to continue a checkpoint with settings that change what the run computes (another
    dataset, batch size, loss, ...), or with ``inputs`` (the identity of what the run reads now:
    teachers, data, selection, plugins; :mod:`kdlab.identity`) other than those it recorded when it
    started. Runtime settings (device, data path, ...) may change, and so may ``--epochs``, to extend
    (or shorten) the run, as long as it keeps the epochs already trained. Teachers are compared by
    content where both records name it (a moved teacher folder matches), else by folder name.
    Checkpoints written before kdlab stored the config in them: model and dataset are compared; before
    it stored the inputs' identity: the settings only."""
    if checkpoint["model_name"] != config.model:
        raise UserError(
            f"{run.last_checkpoint} holds a {checkpoint['model_name']}, not a {config.model}: "
            "resume with the same --model or choose another --out"
        )
    recorded, current = checkpoint_inputs(checkpoint), inputs or {}
    ignore = ("optim.epochs", "kd.teacher") if compares_teachers(recorded, current) else ("optim.epochs",)
    try:
        difference = first_difference(from_record(checkpoint.get("config")), config, ignore=ignore)
    except UserError:  # no config (an older checkpoint), or one this kdlab cannot read
        old_name = checkpoint.get("dataset")
        difference = ("data.name", old_name, config.data.name) if old_name != config.data.name else None
    if difference is not None:
        key, before, after = difference
        raise UserError(
            f"{run.path} was trained with {key}={shown(before)}, not {shown(after)}: --resume continues a run as "
            "it was started; drop the change, or choose another --out"
        )
    compare_inputs(recorded, current, run.path)
    done = checkpoint["epoch"] + (checkpoint.get("epoch_progress") is not None)
    if config.optim.epochs < done:
        raise UserError(
            f"{run.path} has trained {done} epochs already, more than --epochs {config.optim.epochs}: pass "
            f"--epochs {done} or more"
        )


def _restored_rows(checkpoint: dict[str, Any], run: RunFolder) -> list[dict[str, Any]]:
    """The metrics rows of the checkpoint's finished epochs: from the checkpoint (written with it),
    else (older checkpoints) from metrics.jsonl, which must then hold every one of them."""
    epochs = checkpoint["epoch"]
    rows = checkpoint.get("metrics")
    if not isinstance(rows, list):
        try:
            rows = [
                row for row in run.metrics() if isinstance(row.get("epoch"), int) and row["epoch"] <= epochs
            ]
        except UserError:  # a damaged file: the message below says what the run lacks
            rows = []
    if [row.get("epoch") if isinstance(row, dict) else None for row in rows] != list(range(1, epochs + 1)):
        raise UserError(
            f"{run.metrics_path} lacks rows of the {epochs} epoch(s) in {run.last_checkpoint}: the run cannot "
            "be continued with its metrics; --overwrite to start it again"
        )
    return rows


def check_model_takes(
    model: nn.Module, inputs: Tensor, config: RunConfig, num_classes: int | None = None
) -> None:
    """A UserError when ``model`` cannot run on ``inputs`` (a few samples of the data) or, given
    ``num_classes``, does not return logits ``[B, num_classes]``: checked before anything is written,
    in eval mode (no BatchNorm statistics change, no random numbers drawn)."""
    was_training = model.training
    model.eval()
    kind = "images" if inputs.dim() == 4 else "inputs"
    try:
        with torch.no_grad():
            logits = model(inputs)
    except UserError:
        raise
    except Exception as error:  # any module's forward: a user model may raise any type
        raise UserError(
            f"--model {config.model} cannot take the {kind} of {config.data.name} ({list(inputs.shape[1:])}): "
            f"{first_line(error)}; choose a model for such {kind}"
        ) from None
    finally:
        model.train(was_training)
    if num_classes is not None:
        check_logits(logits, len(inputs), num_classes, f"--model {config.model}")


def tensorboard_writer(config: RunConfig, run: RunFolder) -> Any:
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is an optional extra
        return None
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
