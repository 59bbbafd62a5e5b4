"""Tiny datasets written in the exact official on-disk formats, for tests of any module (and
``tiny_splits``, a random one in memory).

Images are learnable: each class has its own random prototype and samples are noisy copies of it, so
a tiny training run can clear a real accuracy threshold. Everything is seeded.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdlab.data import DatasetSplits, TensorData

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Written:
    """What a writer put on disk: the path and the arrays as stored (rows as in the files)."""

    path: Path
    train_data: np.ndarray  # CIFAR: uint8 [N, 3072]; IDX: uint8 [N, 28, 28]
    train_labels: np.ndarray  # int64 [N]
    test_data: np.ndarray
    test_labels: np.ndarray


def _class_samples(n: int, num_classes: int, shape: tuple[int, ...], rng: np.random.Generator):
    """Balanced shuffled labels and uint8 samples = class prototype + noise."""
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    prototypes = rng.integers(0, 256, size=(num_classes, *shape))
    noise = rng.integers(-40, 41, size=(n, *shape))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels


def _dump(obj: dict, path: Path) -> None:
    # Protocol 2 with bytes keys: what the official (Python 2) files decode to with encoding="bytes".
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_batch(data: np.ndarray, labels: np.ndarray, label_key: bytes, name: str) -> dict:
    return {
        b"batch_label": name.encode(),
        label_key: labels.tolist(),
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }


def _finish(folder: Path, archive_name: str | None) -> Path:
    """Keep the folder, or replace it by the official .tar.gz (members ``FOLDER/NAME``)."""
    if archive_name is None:
        return folder
    archive = folder.parent / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    return archive


def write_cifar100(
    root: Path, n_train: int = 200, n_test: int = 100, *, archive: bool = False, seed: int = 0
) -> Written:
    """Write ``root/cifar-100-python/{train,test,meta}`` (or only ``root/cifar-100-python.tar.gz``)."""
    rng = np.random.default_rng(seed)
    train, train_labels = _class_samples(n_train, 100, (3072,), rng)
    test, test_labels = _class_samples(n_test, 100, (3072,), rng)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data, labels in (("train", train, train_labels), ("test", test, test_labels)):
        batch = _cifar_batch(data, labels, b"fine_labels", f"{name} batch 1 of 1")
        _dump({**batch, b"coarse_labels": (labels // 5).tolist()}, folder / name)
    _dump(
        {
            b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
        },
        folder / "meta",
    )
    archive_name = "cifar-100-python.tar.gz" if archive else None
    return Written(_finish(folder, archive_name), train, train_labels, test, test_labels)


def write_cifar10(
    root: Path, n_train: int = 100, n_test: int = 50, *, archive: bool = False, seed: int = 0
) -> Written:
    """Write ``root/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) or its .tar.gz."""
    rng = np.random.default_rng(seed)
    train, train_labels = _class_samples(n_train, 10, (3072,), rng)
    test, test_labels = _class_samples(n_test, 10, (3072,), rng)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        batch = _cifar_batch(train[part], train_labels[part], b"labels", f"training batch {i} of 5")
        _dump(batch, folder / f"data_batch_{i}")
    _dump(_cifar_batch(test, test_labels, b"labels", "testing batch 1 of 1"), folder / "test_batch")
    names = [name.encode() for name in CIFAR10_CLASSES]
    _dump(
        {b"label_names": names, b"num_cases_per_batch": n_train // 5, b"num_vis": 3072},
        folder / "batches.meta",
    )
    archive_name = "cifar-10-python.tar.gz" if archive else None
    return Written(_finish(folder, archive_name), train, train_labels, test, test_labels)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080D (D = ndim), big-endian uint32 dims, values."""
    header = bytes((0, 0, 0x08, array.ndim)) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(
    root: Path, n_train: int = 100, n_test: int = 50, *, layout: str = "flat", gz: bool = True, seed: int = 0
) -> Written:
    """Write the four (Fashion-)MNIST IDX files into ``root`` (``layout="flat"``), ``root/raw``
    (``"raw"``), or torchvision's ``root/FashionMNIST/raw`` / ``root/MNIST/raw`` (those names)."""
    rng = np.random.default_rng(seed)
    train, train_labels = _class_samples(n_train, 10, (28, 28), rng)
    test, test_labels = _class_samples(n_test, 10, (28, 28), rng)
    folder = Path(root) if layout == "flat" else Path(root) / ("raw" if layout == "raw" else f"{layout}/raw")
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in (
        ("train-images-idx3-ubyte", train),
        ("train-labels-idx1-ubyte", train_labels),
        ("t10k-images-idx3-ubyte", test),
        ("t10k-labels-idx1-ubyte", test_labels),
    ):
        content = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / stem).write_bytes(content)
    return Written(folder, train, train_labels, test, test_labels)


def write_imagefolder(
    root: Path, classes: list[str] | int = 3, per_class: int = 4, size: int = 40, *, seed: int = 0
) -> Path:
    """Write real JPEGs to ``root/{train,val}/CLASS/*.jpg`` (``per_class`` per class and split).

    Each class has its own base colour, so the classes are separable.
    """
    from PIL import Image

    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(len(names), 3))
    for split in ("train", "val"):
        for name, colour in zip(names, colours, strict=True):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(colour + rng.integers(-30, 31, size=(size, size, 3)), 0, 255).astype(
                    np.uint8
                )
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG")
                (folder / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
    return Path(root)


def write_svhn(
    root: Path, n_train: int = 60, n_test: int = 30, n_extra: int = 0, *, seed: int = 0
) -> Written:
    """Write SVHN's official ``train_32x32.mat``/``test_32x32.mat`` (and ``extra_32x32.mat`` when
    ``n_extra``): ``X`` uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` in 1..10 with 10 for the digit 0.
    Returned arrays are as stored (``X`` layout, labels 1..10); the extra split's are not returned."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stored = {}
    for split, n in (("train", n_train), ("test", n_test), ("extra", n_extra)):
        if n == 0:
            continue
        images, digits = _class_samples(n, 10, (3, 32, 32), rng)
        x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # [N, 3, 32, 32] -> [32, 32, 3, N]
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        stored[split] = (x, y[:, 0].astype(np.int64))
    return Written(root, *stored["train"], *stored["test"])


def tiny_splits(
    n: int,
    num_classes: int,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.25, 0.25, 0.25),
) -> DatasetSplits:
    """``n`` random 3x8x8 uint8 images (seed 0) labelled ``i % num_classes``, as both splits, with
    CIFAR-like crop (pad 2) and flip."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    data = TensorData(images, torch.arange(n) % num_classes)
    return DatasetSplits("tiny", data, data, num_classes, 3, 8, mean, std, pad=2, flip=True)
