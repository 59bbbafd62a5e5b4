"""One student in training: its model, optimiser, learning-rate schedule, run folder and checkpoint.

Also the rules that decide which students may train together: on one data order and one teacher
pass (:func:`group_key`, used by the engine and by ``kdlab sweep`` alike), and, within such a group,
as one stacked module (:func:`stack_key`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdlab.config import RunConfig
from kdlab.errors import UserError
from kdlab.runs import CHECKPOINT_FORMAT, RunFolder, load_checkpoint


def lr_at(config: RunConfig, epoch: int) -> float:
    """Step schedule: ``lr * gamma^k``, k = milestones (fractions of the epochs) already reached."""
    milestones = [round(fraction * config.optim.epochs) for fraction in config.optim.milestones]
    return config.optim.lr * config.optim.gamma ** sum(epoch >= milestone for milestone in milestones)


def make_optimizer(model: nn.Module, config: RunConfig, lr: float | None = None) -> torch.optim.SGD:
    """SGD, Nesterov momentum; weight decay only on parameters with more than one dimension.

    Fused (one kernel updates every parameter, on CPU and CUDA alike), with the learning rate held
    in a 0-d tensor on the parameters' device: :func:`set_lr` writes that tensor in place, so a
    captured CUDA graph of the step reads the new rate without being captured again.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    device = next(model.parameters()).device
    rate = torch.tensor(config.optim.lr if lr is None else lr, device=device)
    return torch.optim.SGD(
        groups, lr=rate, momentum=config.optim.momentum, nesterov=config.optim.nesterov, fused=True
    )


def set_lr(optimizer: torch.optim.SGD, lr: float) -> None:
    """Write ``lr`` into the optimiser's learning-rate tensor (in place: no new capture, no sync)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:  # restored from a checkpoint, which stores the rate as a number
            group["lr"] = torch.tensor(lr, device=group["params"][0].device)
        group["fused"], group["foreach"] = True, None  # also for checkpoints of other settings


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
    optimizer: torch.optim.SGD
    module: nn.Module
    data_info: dict[str, Any] = field(default_factory=dict)  # num_classes, in_channels, image_size
    start_epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    test_acc_best: float = -1.0
    best_epoch: int = 0
    writer: Any = None
    progress: dict[str, Any] | None = None  # running sums of an epoch a mid-epoch checkpoint stopped in

    lr: float | None = None  # the learning rate of the current epoch, as the host knows it

    def checkpoint(self, epoch: int, progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``last.pt``/``best.pt`` hold after ``epoch`` finished epochs (plus ``progress`` when mid-epoch)."""
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a number, as in any SGD checkpoint (no device read)
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
        }

    def restore(self, device: torch.device) -> None:
        """Continue from ``last.pt``: weights, optimiser, epoch, best so far, metrics, CPU generator."""
        checkpoint = load_checkpoint(self.run.last_checkpoint, device)
        if checkpoint.get("model_name") != self.config.model:
            raise UserError(
                f"{self.run.last_checkpoint} holds a {checkpoint.get('model_name')}, not a {self.config.model}: "
                "resume with the same --model or choose another --out"
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        set_lr(self.optimizer, lr_at(self.config, int(checkpoint["epoch"])))
        self.start_epoch = int(checkpoint["epoch"])
        self.test_acc_best = float(checkpoint["test_acc_best"])
        self.best_epoch = int(checkpoint["best_epoch"])
        self.metrics = [row for row in self.run.metrics() if row["epoch"] <= self.start_epoch]
        self.progress = checkpoint.get("epoch_progress")
        torch.set_rng_state(checkpoint["rng_cpu"])


def prepare_run_folder(run: RunFolder, resume: bool, overwrite: bool) -> bool:
    """Check ``--out`` against what it holds; True when there is a checkpoint to resume from."""
    if run.has_content():
        if overwrite:
            shutil.rmtree(run.path)
        elif not resume:
            state = "a finished run" if run.is_finished() else "an unfinished run"
            raise UserError(
                f"--out {run.path} already holds {state}: pass --resume to continue it, --overwrite to start "
                "again, or choose another --out"
            )
    return resume and run.last_checkpoint.is_file()


def tensorboard_writer(config: RunConfig, run: RunFolder) -> Any:
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is an optional extra
        return None
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
