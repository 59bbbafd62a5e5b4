"""The engine: schedule, optimiser groups, and exact resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdlab.config import build_config
from kdlab.engine import Trainer, lr_at, make_optimizer, train
from kdlab.models import create_model

TIMING_KEYS = {"epoch_time_s", "train_images_per_s"}


def test_paper_schedule_steps_at_half_and_three_quarters() -> None:
    config = build_config()
    assert config.optim.epochs == 200
    assert [lr_at(config, e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_weight_decay_only_on_multidimensional_parameters() -> None:
    model = create_model("wrn-10-1", 10)
    decay, no_decay = make_optimizer(model, build_config()).param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert decay["nesterov"] and decay["momentum"] == 0.9


def _config(out: Path, **kd: object):
    flags = {"model": "convnet-4", "out": str(out), "progress": False, "deterministic": True,
             "data": {"name": "digits"}, "optim": {"epochs": 4, "batch_size": 64}, "kd": kd}  # fmt: skip
    return build_config(flags=flags)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tmp_path / "teacher"
    train(build_config(flags={"model": "convnet-8", "out": str(teacher), "progress": False,
                              "data": {"name": "digits"}, "optim": {"epochs": 1}}))  # fmt: skip
    kd = {"teacher": str(teacher), "loss": "kl", "alpha": 0.7, "tau": 4.0}
    straight = train(_config(tmp_path / "straight", **kd))

    original = Trainer.train_epoch

    def interrupt_at_third_epoch(self: Trainer, students: list, epoch: int, *args) -> list:
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, students, epoch, *args)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "resumed", **kd))
    assert len(_rows(tmp_path / "resumed")) == 2
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = train(_config(tmp_path / "resumed", **kd), resume=True)

    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")
    for key in ("test_acc_last", "test_acc_best", "train_acc", "logit_distance"):
        assert resumed[key] == straight[key]
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["model"]
               for run in ("straight", "resumed")]  # fmt: skip
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
