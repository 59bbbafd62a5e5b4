"""What the engine's exactness tests share: a fast CPU run config, a random teacher, and readers of
a run folder's weights and losses (the trained ``digits_teacher`` fixture is in conftest.py); and
``registries_restored``, for tests that import plugins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.config import RunConfig, build_config
from kdlab.models import create_model
from kdlab.runs import CHECKPOINT_FORMAT, atomic_torch_save


def make_config(out: Path, dataset: str = "digits", data_dir: Path | None = None, **kd) -> RunConfig:
    """A fast CPU run: convnet-4, batch 64, 2 epochs, no progress bars or TensorBoard."""
    return build_config(
        base={
            "model": "convnet-4",
            "device": "cpu",
            "out": str(out),
            "progress": False,
            "tensorboard": False,
            "data": {"name": dataset, "data_dir": str(data_dir) if data_dir else None},
            "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
            "kd": kd,
        }
    )


def random_teacher(path: Path, in_channels: int, num_classes: int = 10, seed: int = 0) -> Path:
    """A kdlab checkpoint of a randomly initialised convnet-4 (its logits are as varied as a trained one's)."""
    torch.manual_seed(seed)
    model = create_model("convnet-4", num_classes, in_channels)
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_name": "convnet-4",
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": None,
            "model": model.state_dict(),
        },
        path,
    )
    return path


def checkpoint(run: Path) -> dict:
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)


def state(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint(run)["model"]


def train_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    weights_a, weights_b = state(run_a), state(run_b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


@contextmanager
def registries_restored() -> Iterator[None]:
    """Undo, on exit, what plugins registered inside (models, datasets, losses, hyperparameters, the
    plugin files imported): the registries are as they were on entry."""
    import kdlab.config
    import kdlab.plugins
    from kdlab.data import DATASETS
    from kdlab.losses import LOSSES
    from kdlab.models import MODELS

    registries = (MODELS, DATASETS, LOSSES)
    before = [(dict(r._exact), list(r._patterns)) for r in registries]
    declared, imported = dict(kdlab.config._DECLARED), dict(kdlab.plugins._IMPORTED)
    try:
        yield
    finally:
        for registry, (exact, patterns) in zip(registries, before, strict=True):
            registry._exact, registry._patterns = exact, patterns
        kdlab.config._DECLARED.clear()
        kdlab.config._DECLARED.update(declared)
        kdlab.plugins._IMPORTED.clear()
        kdlab.plugins._IMPORTED.update(imported)


def kdlab_error(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """``kdlab ARGS`` (in this process) must exit 2 with exactly one line on stderr, ``kdlab: error:
    ...``, and no traceback; returns the message after that prefix."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("kdlab: error: ")
    return line.removeprefix("kdlab: error: ")
