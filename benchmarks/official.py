"""A KD epoch structured like the paper's official code (jhoon-oh/kd_data, tools/traineval.py), on any
device: the baseline that ``kd_epoch.py`` (CPU) and ``gpu_bench.py`` (GPU) measure kdlab against.

A torchvision-style Dataset turns each uint8 array into a PIL image and applies RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor and Normalize per image; a DataLoader (batch 128, shuffled, 4
workers, as the official setter) feeds fp32 NCHW models, the teacher run on every batch; after each
epoch the whole (augmented) training set is evaluated again by student and teacher (eval mode,
without no_grad, a ``.item()`` per batch), then the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import Seconds, timed
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdlab.data import DatasetSplits, TensorData
from kdlab.models import create_model
from kdlab.teacher import load_teacher


class PILImageDataset(Dataset):
    """torchvision's CIFAR/FashionMNIST ``__getitem__``: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, data: TensorData, transform: transforms.Compose) -> None:
        images = data.images.cpu().permute(0, 2, 3, 1).numpy()  # [N, H, W, C] like torchvision's .data
        self.images = images[..., 0] if images.shape[-1] == 1 else images
        self.targets = data.labels.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index], mode="L" if self.images.ndim == 3 else None)
        return self.transform(image), self.targets[index]


def official_loaders(splits: DatasetSplits, batch_size: int, workers: int) -> tuple[DataLoader, DataLoader]:
    """The official setter's train (crop + flip) and test loaders."""
    normalize = [transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)]
    train_transform = transforms.Compose(
        [
            transforms.RandomCrop(splits.image_size, padding=splits.pad),
            transforms.RandomHorizontalFlip(),
            *normalize,
        ]
    )
    train = PILImageDataset(splits.train, train_transform)
    test = PILImageDataset(splits.test, transforms.Compose(normalize))
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, pin_memory=False, num_workers=workers),
        DataLoader(test, batch_size=batch_size, pin_memory=False, num_workers=workers),
    )


def official_kd_loss(output, label, teacher_output, alpha: float, temperature: float) -> torch.Tensor:
    """tools/losses.py ``kd_loss``: batchmean KLDiv of softened outputs x alpha T^2 + (1 - alpha) CE."""
    kd = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(output / temperature, dim=1), F.softmax(teacher_output / temperature, dim=1)
    )
    return kd * (alpha * temperature * temperature) + nn.CrossEntropyLoss()(output, label) * (1.0 - alpha)


def official_eval(
    teacher: nn.Module, student: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[float, float]:
    """tools/traineval.py ``eval_model``: eval mode but no ``no_grad``, a ``.item()`` per batch."""
    teacher.eval()
    student.eval()
    losses, labels, predictions = [], [], []
    for image, label in loader:
        image, label = image.type(torch.FloatTensor).to(device), label.type(torch.LongTensor).to(device)
        pred_label = student(image)
        teacher_label = teacher(image)
        losses.append(official_kd_loss(pred_label, label, teacher_label, 0.9, 4.0).item())
        labels.append(label.cpu().detach().numpy())
        predictions.append(pred_label.cpu().detach().numpy())
    accuracy = np.mean(np.argmax(np.concatenate(predictions), axis=1) == np.concatenate(labels))
    return float(np.mean(losses)), float(accuracy)


class OfficialLoop:
    """The official training loop's state: fp32 NCHW teacher and student, SGD, the two loaders."""

    def __init__(
        self,
        splits: DatasetSplits,
        teacher_path: Path,
        student: str,
        batch_size: int = 128,
        workers: int = 4,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.teacher = load_teacher(str(teacher_path), self.device)
        torch.manual_seed(0)
        self.student = create_model(student, splits.num_classes, splits.in_channels, splits.image_size)
        self.student = self.student.to(self.device)
        weights = [p for p in self.student.parameters() if p.ndim > 1]
        others = [p for p in self.student.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": others, "weight_decay": 0}, {"params": weights, "weight_decay": 5e-4}],
            lr=0.1, momentum=0.9, nesterov=True,
        )  # fmt: skip
        self.train_loader, self.test_loader = official_loaders(splits, batch_size, workers)

    def train_steps(self) -> None:
        self.student.train()
        for image, label in self.train_loader:
            image = image.type(torch.FloatTensor).to(self.device)
            label = label.type(torch.LongTensor).to(self.device)
            pred_label = self.student(image)
            teacher_label = self.teacher(image)
            self.optimizer.zero_grad()
            loss = official_kd_loss(pred_label, label, teacher_label, 0.9, 4.0)
            loss.backward()
            self.optimizer.step()

    def epoch(self) -> dict[str, Seconds]:
        """Seconds of each part of one official epoch (each ends with the device idle: ``.item()``)."""
        train, _ = timed(lambda: (self.train_steps(), synchronize(self.device)))
        reevaluate, _ = timed(
            lambda: official_eval(self.teacher, self.student, self.train_loader, self.device)
        )
        test, _ = timed(lambda: official_eval(self.teacher, self.student, self.test_loader, self.device))
        return {"train steps": train, "re-evaluate training set": reevaluate, "test set": test}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
