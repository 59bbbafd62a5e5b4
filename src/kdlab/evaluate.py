"""Evaluate a saved model on a dataset's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlab.data import load_dataset, make_loader
from kdlab.device import resolve_device
from kdlab.errors import UserError
from kdlab.runs import load_checkpoint, resolve_checkpoint
from kdlab.teacher import model_from_checkpoint


@torch.no_grad()
def evaluate_checkpoint(
    spec: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    download: bool = False,
) -> dict[str, Any]:
    """Top-1 test accuracy (%) of the model in a run folder or checkpoint (any registered model; the
    data folder defaults to the run's own when the dataset is the one it trained on)."""
    path = resolve_checkpoint(spec)
    checkpoint = load_checkpoint(path)
    dataset = dataset or checkpoint.get("dataset")
    if not dataset:
        raise UserError(f"{path} does not record its dataset: pass --dataset")
    recorded = checkpoint.get("config")
    recorded = recorded.get("data") if isinstance(recorded, dict) else None
    if data_dir is None and isinstance(recorded, dict) and recorded.get("name") == dataset:
        # the run's own data folder (a `tensors` dataset has no other)
        data_dir = recorded.get("data_dir") if isinstance(recorded.get("data_dir"), str) else None
    splits = load_dataset(dataset, data_dir, download=download)
    if splits.num_classes != checkpoint["num_classes"]:
        raise UserError(
            f"{path} predicts {checkpoint['num_classes']} classes but {dataset} has {splits.num_classes}: pass the dataset it was trained on"
        )
    target = resolve_device(device)
    model = model_from_checkpoint(path).to(target).eval()
    correct, count = 0, 0
    for batch in make_loader(splits, "test", 256, device=target, train=False):
        correct += int((model(batch.inputs).argmax(dim=1) == batch.targets).sum())
        count += len(batch.targets)
    return {
        "dataset": dataset,
        "test_acc": 100.0 * correct / count,
        "test_images": count,
        "checkpoint": str(path),
    }
