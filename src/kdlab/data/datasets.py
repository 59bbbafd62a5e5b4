"""The dataset registry: each name finds its official files (or downloads them) and returns both splits.

Search order for downloadable datasets: ``data_dir``, then system folders (Fashion-MNIST's Debian
package), then the download cache ``$KDLAB_CACHE_DIR`` (default ``~/.cache/kdlab``). With
``download=True`` and nothing found, torchvision fetches the official files into ``data_dir`` (or the
cache when no ``data_dir`` is given) and our own readers parse them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from kdlab.errors import UserError
from kdlab.identity import data_identity, source_splits
from kdlab.registry import Registry
from kdlab.runs import open_regular

from .formats import (
    CIFAR10_FORMAT,
    CIFAR100_FORMAT,
    IDX_FILES,
    SVHN_FILES,
    TENSOR_SUFFIXES,
    ArraySplits,
    CifarFormat,
    TensorFile,
    find_idx_files,
    read_cifar,
    read_idx_folder,
    read_svhn_mat,
    read_tensor_file,
)


@dataclass
class TensorData:
    """An in-memory split: ``images`` the inputs ``[N, ...]`` contiguous, ``labels`` int64 ``[N]``.

    The built-in datasets hold uint8 images ``[N, C, H, W]`` (normalised and augmented on the device);
    the ``tensors`` dataset and plugin datasets may also hold float32 features or int64 token ids of
    any sample shape, which reach the model as stored.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Readers may hand over views with odd strides (a stride-0 channel axis for one-channel
        # data); a plain layout keeps gathers cheap and every pass on the same kernels.
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.images.to(device), self.labels.to(device))


@dataclass
class DatasetSplits:
    """Both splits of a dataset plus what models and augmentation need to know about it.

    ``train``/``test`` are :class:`TensorData` except for imagefolder/imagenet, where they are torch
    Datasets yielding normalised float images (their augmentation lives in the transforms, so
    ``pad`` is 0 and ``flip`` False there).

    A dataset of your own: register a factory with ``DATASETS.register(name)``. It is called with the
    keywords ``name``, ``data_dir`` (a Path or None), ``download`` and ``image_size`` (take ``**_``
    for those it ignores) and returns a DatasetSplits of :class:`TensorData` splits: ``labels`` int64
    in ``0..num_classes-1``, ``images`` either uint8 images ``[N, C, H, W]`` (give ``in_channels``,
    ``image_size`` when square, per-channel ``mean``/``std`` of the training split in 0..1, and the
    crop ``pad``/``flip`` of its ``default`` augmentation) or any other inputs ``[N, ...]`` (float32
    features, int64 token ids; leave the image fields at their defaults: no normalisation and no
    augmentation). Every split must hold samples of one shape and dtype.
    """

    name: str
    train: TensorData | Dataset
    test: TensorData | Dataset
    num_classes: int
    in_channels: int | None = None  # images only: channels of [N, C, H, W]
    image_size: int | None = None  # images only: H = W (None for non-square images)
    mean: tuple[float, ...] = ()  # images only: per-channel mean and std after /255
    std: tuple[float, ...] = ()
    pad: int = 0  # random-crop padding used by augmentation (0 = no crop)
    flip: bool = False  # random horizontal flip used by augmentation
    class_names: list[str] = field(default_factory=list)
    val: TensorData | None = None  # held out of the training split by ``val_split`` (never trained on)
    left_out: TensorData | None = None  # training samples data.select left out (kdlab.data.select)
    identity: dict | None = None  # load_dataset(fingerprint=True): kdlab.identity.data_identity

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input sample: ``(C, H, W)`` for images, ``(20,)`` for 20 features, ..."""
        if isinstance(self.train, TensorData):
            return tuple(self.train.images.shape[1:])
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def image_inputs(self) -> bool:
        """Whether the inputs are images that kdlab normalises and crops/flips: uint8 ``[N, C, H, W]``
        in memory, or an ImageFolder. Other inputs reach the model as stored, unaugmented."""
        if isinstance(self.train, TensorData):
            return self.train.images.dtype == torch.uint8 and self.train.images.dim() == 4
        return True


class LabelledSubset(Subset):
    """A Subset that keeps ``targets`` and ``classes`` reachable, like the ImageFolder it wraps."""

    @property
    def targets(self) -> list[int]:
        return [self.dataset.targets[i] for i in self.indices]

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes


DATASETS: Registry[DatasetSplits] = Registry("dataset")


def cache_dir() -> Path:
    """Where ``download=True`` puts files when no data_dir is given (``$KDLAB_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("KDLAB_CACHE_DIR", "~/.cache/kdlab")).expanduser()


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
    download: bool = False,
    image_size: int | None = None,
    val_split: int | None = None,
    fingerprint: bool = False,
) -> DatasetSplits:
    """Load dataset ``name`` (see ``DATASETS.names()``), optionally reduced to class-balanced subsets.

    ``subset``/``test_subset`` keep that many samples of the train/test split, ``n // K`` per class
    (the remainder to the first classes), chosen with ``subset_seed``. ``val_split`` then moves that
    many of the kept training samples (class-balanced, seeded by ``subset_seed`` too) into
    ``splits.val``: see :func:`carve_validation`. ``image_size`` only applies to imagefolder/imagenet
    (default 224); the other datasets have a fixed size. ``fingerprint=True`` records the data's
    identity in ``splits.identity`` (:func:`kdlab.identity.data_identity`: the splits as the files gave
    them and as loaded).
    """
    factory = DATASETS.get(name)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    splits = factory(name=name.lower(), data_dir=root, download=download, image_size=image_size)
    check_splits(splits, name)
    if image_size is not None and splits.image_size is None:
        raise UserError(
            f"image_size={image_size} does not apply to {name}, whose samples are {list(splits.input_shape)}: "
            "drop the image size"
        )
    if image_size is not None and image_size != splits.image_size:
        raise UserError(
            f"image_size={image_size} does not apply to {name}, whose images are "
            f"{splits.image_size}x{splits.image_size}: drop the image size or use imagefolder"
        )
    for split in ("train", "test"):  # an empty split would end the first epoch in a division by zero
        if len(getattr(splits, split)) == 0:
            raise UserError(
                f"the {split} split of {name} holds no images: its files are incomplete; fetch them again "
                "(or point --data-dir at complete ones)"
            )
    source = source_splits(splits) if fingerprint else None
    splits.train = _take_subset(splits.train, subset, subset_seed, splits.num_classes, "subset")
    splits.test = _take_subset(splits.test, test_subset, subset_seed, splits.num_classes, "test_subset")
    if val_split is not None:
        if splits.val is not None:
            raise UserError(
                f"{name} has a validation split of its own ({len(splits.val)} samples), and val_split={val_split} "
                "asks for another: drop val_split, or the val file"
            )
        splits.train, splits.val = carve_validation(splits, val_split, subset_seed)
    if source is not None:
        splits.identity = data_identity(splits, source)
    return splits


def check_splits(splits: DatasetSplits, name: str) -> None:
    """A UserError unless what a dataset factory (kdlab's or a plugin's) returned is usable as its
    contract says (:class:`DatasetSplits`): 2 to ``MAX_CLASSES`` classes; in-memory splits with int64
    labels ``[N]`` in ``0..num_classes-1``, one per sample, and float inputs without NaN or inf. A label
    outside the classes or a NaN input would otherwise train silently into nonsense, or fail mid-run."""
    from kdlab.models.base import MAX_CLASSES

    if not isinstance(splits, DatasetSplits):
        raise UserError(
            f"the factory of dataset '{name}' returned a {type(splits).__name__}, not a DatasetSplits: make it "
            "return one"
        )
    classes = splits.num_classes
    if not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= MAX_CLASSES:
        raise UserError(
            f"dataset {name} has num_classes={str(classes)[:40]}: kdlab trains classifiers of 2 to {MAX_CLASSES} "
            "classes; merge or drop classes"
        )
    for split in ("train", "test", "val"):
        data = getattr(splits, split)
        if not isinstance(data, TensorData):
            continue
        where = f"the {split} split of {name}"
        labels = data.labels
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(data.images) != len(labels):
            raise UserError(
                f"{where} holds {str(labels.dtype).removeprefix('torch.')} labels {list(labels.shape)} for "
                f"{len(data.images)} samples: a dataset gives one int64 label per sample"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
            raise UserError(
                f"{where} has labels {int(labels.min())}..{int(labels.max())}, but the dataset has {classes} "
                f"classes: labels are 0..{classes - 1}"
            )
        images = data.images
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            sample = int((~torch.isfinite(images)).reshape(len(images), -1).any(dim=1).int().argmax())
            raise UserError(
                f"{where} holds NaN or inf inputs (the first in sample {sample}): clean or drop those samples"
            )


def carve_validation(splits: DatasetSplits, n: int, seed: int) -> tuple[TensorData, TensorData]:
    """``(train, val)``: ``n`` samples of ``splits.train`` (class-balanced, chosen with ``seed`` as in
    :func:`class_balanced_subset`) become the validation split, the rest stay the training split.

    The choice depends on the labels, ``n`` and ``seed`` only, so a teacher and its students that
    share them hold out the same images (the teacher never saw its students' validation images).
    Both keep their original order. In-memory datasets only: an ImageFolder training split carries
    its random training transforms, which a validation split must not have.
    """
    train = splits.train
    if not isinstance(train, TensorData):
        raise UserError(
            f"val_split is supported for in-memory datasets, not {splits.name}: drop val_split and hold out "
            "a val/ folder of your own"
        )
    if not splits.num_classes <= n < len(train):
        raise UserError(
            f"val_split={n} is out of range: choose between {splits.num_classes} (one per class) and "
            f"{len(train) - 1} (the training split has {len(train)} images)"
        )
    held_out = class_balanced_subset(train.labels, n, seed, splits.num_classes)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held_out] = False
    return (
        TensorData(train.images[keep], train.labels[keep]),
        TensorData(train.images[held_out], train.labels[held_out]),
    )


def split_labels(split: TensorData | Dataset) -> torch.Tensor:
    """The labels of a split as an int64 tensor ``[N]`` (TensorData or an ImageFolder-like Dataset)."""
    if isinstance(split, TensorData):
        return split.labels
    return torch.as_tensor(split.targets, dtype=torch.int64)


def class_balanced_subset(
    labels: torch.Tensor, n: int, seed: int, num_classes: int | None = None
) -> torch.Tensor:
    """Sorted indices (int64 ``[n]``) of a seeded class-balanced selection of ``n`` samples.

    Each of the K classes gets ``n // K`` samples and the first ``n % K`` classes one more. A class
    with too few samples gives all it has and its shortfall is spread the same way over the others,
    so any ``num_classes <= n <= len(labels)`` works. K defaults to ``labels.max() + 1``.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if not num_classes <= n <= len(labels):
        raise UserError(
            f"subset size {n} is out of range: choose between {num_classes} (one per class) "
            f"and {len(labels)} (the whole split)"
        )
    counts = torch.bincount(labels, minlength=num_classes)
    quota = torch.zeros(num_classes, dtype=torch.int64)
    remaining = n
    while remaining > 0:  # water-filling: one pass when every class has enough samples
        open_classes = (quota < counts).nonzero().flatten()
        share = torch.full((len(open_classes),), remaining // len(open_classes), dtype=torch.int64)
        share[: remaining % len(open_classes)] += 1
        share = torch.minimum(share, counts[open_classes] - quota[open_classes])
        quota[open_classes] += share
        remaining -= int(share.sum())
    # A random permutation stably sorted by label lists each class in random order; keep the first
    # quota[c] of class c, found by each sample's rank within its class.
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    by_class = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    class_start = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[by_class]
    rank = torch.arange(len(labels)) - class_start[sorted_labels]
    return torch.sort(by_class[rank < quota[sorted_labels]]).values


def _take_subset(
    split: TensorData | Dataset, n: int | None, seed: int, num_classes: int, what: str
) -> TensorData | Dataset:
    if n is None:
        return split
    try:
        indices = class_balanced_subset(split_labels(split), n, seed, num_classes)
    except UserError as error:
        raise UserError(f"{what}: {error}") from None
    if isinstance(split, TensorData):
        return TensorData(split.images[indices].contiguous(), split.labels[indices])
    return LabelledSubset(split, indices.tolist())


def _tensor_splits(
    name: str,
    arrays: ArraySplits,
    class_names: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pad: int,
    flip: bool,
) -> DatasetSplits:
    """Wrap numpy splits as TensorData, checking the labels against the class list."""
    num_classes = len(class_names)
    for labels in (arrays.train_labels, arrays.test_labels):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(
                f"{name} labels span {labels.min()}..{labels.max()} but there are {num_classes} classes: "
                "the files are corrupt, fetch them again"
            )
    images = arrays.train_images
    return DatasetSplits(
        name=name,
        train=TensorData(torch.from_numpy(images), torch.from_numpy(arrays.train_labels)),
        test=TensorData(torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels)),
        num_classes=num_classes,
        in_channels=images.shape[1],
        image_size=images.shape[2],
        mean=mean,
        std=std,
        pad=pad,
        flip=flip,
        class_names=class_names,
    )


def _locate(
    name: str,
    search_dirs: list[Path],
    candidates: Callable[[Path], list[Path]],
    accept: Callable[[Path], bool],
    download_root: Path | None,
    torchvision_class: str,
    hint: str,
) -> Path:
    """The first accepted candidate under ``search_dirs``; else download, else one line listing all tried."""
    looked: list[Path] = []
    for folder in dict.fromkeys(search_dirs):  # ordered, without repeats
        for path in candidates(folder):
            if accept(path):
                return path
            looked.append(path)
    if download_root is not None:
        import torchvision.datasets

        try:
            for train in (True, False):
                getattr(torchvision.datasets, torchvision_class)(
                    str(download_root), train=train, download=True
                )
        except Exception as error:  # network, disk or checksum failures all end the same way
            raise UserError(
                f"downloading {name} into {download_root} failed ({type(error).__name__}: {error}); "
                "check the network, or pass --data-dir with the files"
            ) from None
        found = next((path for path in candidates(download_root) if accept(path)), None)
        if found is not None:
            return found
    raise UserError(f"{name} not found: looked in {', '.join(map(str, looked))}; {hint}")


def _search_dirs(data_dir: Path | None, *system_dirs: Path) -> list[Path]:
    return [*([data_dir] if data_dir is not None else []), *system_dirs, cache_dir()]


@dataclass(frozen=True)
class _Cifar:
    fmt: CifarFormat
    torchvision_class: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _load_cifar(spec: _Cifar, *, name: str, data_dir: Path | None, download: bool, **_) -> DatasetSplits:
    fmt = spec.fmt
    location = _locate(
        name,
        _search_dirs(data_dir),
        # data_dir may hold the folder or the archive, or be the extracted folder itself
        lambda folder: [folder / fmt.folder, folder / fmt.archive, folder],
        lambda path: path.is_file() or all((path / member).is_file() for member in fmt.members),
        (data_dir or cache_dir()) if download else None,
        spec.torchvision_class,
        f"pass --data-dir with {fmt.folder}/ or {fmt.archive}, or --download",
    )
    arrays, class_names = read_cifar(location, fmt)
    return _tensor_splits(name, arrays, class_names, spec.mean, spec.std, pad=4, flip=True)


DATASETS.register("cifar10")(
    partial(
        _load_cifar,
        _Cifar(CIFAR10_FORMAT, "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    )
)
DATASETS.register("cifar100")(
    partial(
        _load_cifar,
        _Cifar(CIFAR100_FORMAT, "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    )
)


@dataclass(frozen=True)
class _Idx:
    torchvision_class: str  # also torchvision's folder name: ROOT/FashionMNIST/raw
    mean: float
    std: float
    flip: bool
    class_names: tuple[str, ...]
    hint: str
    system_dirs: tuple[Path, ...] = ()


_IDX_HINT = f"pass --data-dir with the IDX files ({', '.join(IDX_FILES)}, .gz or plain), or --download"
IDX_DATASETS = {
    "fashion-mnist": _Idx(
        "FashionMNIST",
        0.2860,
        0.3530,
        flip=True,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        hint=f"apt-get install dataset-fashion-mnist, or {_IDX_HINT}",
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
    "mnist": _Idx("MNIST", 0.1307, 0.3081, flip=False, class_names=tuple("0123456789"), hint=_IDX_HINT),
}


def _load_idx(*, name: str, data_dir: Path | None, download: bool, **_) -> DatasetSplits:
    spec = IDX_DATASETS[name]  # looked up per call so tests can point system_dirs elsewhere
    folder = _locate(
        name,
        _search_dirs(data_dir, *spec.system_dirs),
        lambda root: [root, root / spec.torchvision_class / "raw", root / "raw"],
        lambda path: find_idx_files(path) is not None,
        (data_dir or cache_dir()) if download else None,
        spec.torchvision_class,
        spec.hint,
    )
    return _tensor_splits(
        name,
        read_idx_folder(folder),
        list(spec.class_names),
        (spec.mean,),
        (spec.std,),
        pad=2,
        flip=spec.flip,
    )


for _name in IDX_DATASETS:
    DATASETS.register(_name)(_load_idx)


@DATASETS.register("digits")
def _load_digits(*, name: str, **_) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (values 0..16 scaled to 0..255) with a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=360, random_state=0, stratify=labels)
    pixels = images[train].astype(np.float64) / 255
    # Statistics of this split's train set, computed, as torchvision users do for CIFAR (population std).
    mean, std = (float(pixels.mean()),), (float(pixels.std()),)
    arrays = ArraySplits(images[train], labels[train], images[test], labels[test])
    return _tensor_splits(name, arrays, [str(d) for d in range(10)], mean, std, pad=1, flip=False)


def read_image(path: str) -> Any:
    """torchvision's PIL loader (an RGB ``PIL.Image``), for regular files only: a FIFO named like an
    image would block a data-loading worker forever; it is skipped as unreadable instead."""
    from PIL import Image

    with open_regular(path) as handle:
        return Image.open(handle).convert("RGB")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@DATASETS.register("imagefolder")
@DATASETS.register("imagenet")
def _load_imagefolder(*, name: str, data_dir: Path | None, image_size: int | None, **_) -> DatasetSplits:
    """``data_dir/train/CLASS/*.jpg`` and ``data_dir/val/CLASS/*.jpg`` with the standard ImageNet transforms."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    hint = "pass --data-dir with train/CLASS/*.jpg and val/CLASS/*.jpg"
    if data_dir is None:
        raise UserError(f"{name} needs a data folder: {hint}")
    folders = [data_dir / "train", data_dir / "val"]
    if not all(folder.is_dir() for folder in folders):
        raise UserError(f"{name} not found: looked in {', '.join(map(str, folders))}; {hint}")
    size = 224 if image_size is None else image_size
    if size < 1:
        raise UserError(f"image_size={size} is not positive: choose e.g. 224")
    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_transform = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *normalize]
    )
    test_transform = transforms.Compose(
        [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), *normalize]
    )
    try:
        train = ImageFolder(str(folders[0]), transform=train_transform, loader=read_image)
        test = ImageFolder(str(folders[1]), transform=test_transform, loader=read_image)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"{name}: {error}; {hint}") from None
    if train.classes != test.classes:
        raise UserError(
            f"{name}: {folders[0]} and {folders[1]} hold different class folders "
            f"({len(train.classes)} vs {len(test.classes)}): give both the same CLASS folders"
        )
    return DatasetSplits(
        name=name,
        train=train,
        test=test,
        num_classes=len(train.classes),
        in_channels=3,
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pad=0,
        flip=False,
        class_names=list(train.classes),
    )


def _load_svhn(*, name: str, data_dir: Path | None, **_) -> DatasetSplits:
    """SVHN from the official ``train_32x32.mat``/``test_32x32.mat`` (``svhn-extra`` adds the 531k
    ``extra_32x32.mat`` images to the training split). Labels are the digits 0-9 (the files store 0 as
    10). Augmentation: 4-pixel random crop, no flip (a mirrored digit is another symbol)."""
    wanted = ["train", "test", *(["extra"] if name == "svhn-extra" else [])]
    folder = _locate(
        name,
        _search_dirs(data_dir),
        lambda root: [root, root / "svhn"],
        lambda path: all((path / SVHN_FILES[split]).is_file() for split in wanted),
        None,  # no download: fetch the official files yourself (train 182 MB, extra 1.3 GB)
        "SVHN",
        f"pass --data-dir with {', '.join(SVHN_FILES[split] for split in wanted)} from "
        "http://ufldl.stanford.edu/housenumbers/",
    )
    arrays = {split: read_svhn_mat(folder / SVHN_FILES[split]) for split in wanted}
    train = [arrays["train"], *([arrays["extra"]] if "extra" in arrays else [])]
    splits = ArraySplits(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        *arrays["test"],
    )
    # Channel statistics of SVHN's training split, the values common SVHN training code uses.
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    return _tensor_splits(name, splits, [str(d) for d in range(10)], mean, std, pad=4, flip=False)


DATASETS.register("svhn")(_load_svhn)
DATASETS.register("svhn-extra")(_load_svhn)


TENSORS_HINT = (
    "pass --data-dir DIR holding train.npz and test.npz (or .pt; val optional), each with x [N, ...] and "
    "integer y [N] (docs/your-own-setting.md)"
)


def _tensor_file(folder: Path, split: str) -> Path | None:
    """``folder/SPLIT.npz`` or ``folder/SPLIT.pt`` (None when neither is there; both is an error)."""
    found = [
        folder / f"{split}{suffix}" for suffix in TENSOR_SUFFIXES if (folder / f"{split}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise UserError(f"{folder} holds both {found[0].name} and {found[1].name}: keep one {split} file")
    return found[0] if found else None


def _image_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``[N, C, H, W]`` images scaled to 0..1 (a constant
    channel gets std 1, so normalising it cannot divide by zero)."""
    channels = range(images.shape[1])
    mean = tuple(float(images[:, c].mean(dtype=np.float64)) / 255 for c in channels)
    std = tuple(float(images[:, c].std(dtype=np.float64)) / 255 or 1.0 for c in channels)
    return mean, std


@DATASETS.register("tensors")
def _load_tensors(*, name: str, data_dir: Path | None, **_) -> DatasetSplits:
    """Your own tensors: ``data_dir/{train,test}.npz|.pt`` (and optionally ``val``), each holding ``x``
    ``[N, ...]`` and integer ``y`` ``[N]`` (:func:`kdlab.data.formats.read_tensor_file`).

    Classes: ``K = len(classes)`` when the training file lists class names (``classes``), else the
    largest label over all splits + 1. Inputs: uint8 ``[N, C, H, W]`` are images (normalised by the
    training split's per-channel mean/std; ``default`` augmentation a random crop padded by H/8, no
    flip); float and bool x become float32 and reach the model as stored (no normalisation); other
    integer x become int64 (token ids) and reach the model unchanged.
    """
    if data_dir is None:
        raise UserError(f"{name} needs a data folder: {TENSORS_HINT}")
    if not data_dir.is_dir():
        raise UserError(f"{name}: {data_dir} is not a folder: {TENSORS_HINT}")
    paths = {split: _tensor_file(data_dir, split) for split in ("train", "test", "val")}
    for split in ("train", "test"):
        if paths[split] is None:
            raise UserError(f"{name}: {data_dir} has no {split}.npz or {split}.pt: {TENSORS_HINT}")
    files: dict[str, TensorFile] = {split: read_tensor_file(path) for split, path in paths.items() if path}
    train = files["train"]
    for split, loaded in files.items():
        if (loaded.x.dtype, loaded.x.shape[1:]) != (train.x.dtype, train.x.shape[1:]):
            raise UserError(
                f"{paths[split]} holds samples of {loaded.x.dtype} {list(loaded.x.shape[1:])}, but {paths['train']} "
                f"of {train.x.dtype} {list(train.x.shape[1:])}: save every split's x with one sample shape and dtype"
            )
        if loaded.classes is not None and loaded.classes != train.classes:
            raise UserError(
                f"{paths[split]} lists other classes than {paths['train']}: list the classes in the train file "
                "(the others may omit them)"
            )
    largest = max(int(loaded.y.max()) for loaded in files.values())
    if train.classes is not None:
        class_names = train.classes
        if largest >= len(class_names):
            raise UserError(
                f"{name}: a label is {largest}, but {paths['train']} lists {len(class_names)} classes: labels are "
                f"0..{len(class_names) - 1}"
            )
    else:
        total = sum(len(loaded.y) for loaded in files.values())
        if largest >= total:  # K = largest + 1 classes cannot all have samples: a label is wrong
            raise UserError(
                f"{name}: a label is {largest}, but the splits hold {total} samples: labels are 0..K-1 for K "
                "classes (or list the class names as classes in the train file)"
            )
        if largest < 1:
            raise UserError(f"{name}: every label is 0: a classifier needs at least 2 classes")
        class_names = [str(k) for k in range(largest + 1)]
    splits = {split: TensorData(torch.from_numpy(f.x), torch.from_numpy(f.y)) for split, f in files.items()}
    images = train.x.dtype == np.uint8 and train.x.ndim == 4
    shape = train.x.shape
    mean, std = _image_statistics(train.x) if images else ((), ())
    return DatasetSplits(
        name=name,
        train=splits["train"],
        test=splits["test"],
        num_classes=len(class_names),
        in_channels=shape[1] if train.x.ndim == 4 else None,
        image_size=shape[2] if train.x.ndim == 4 and shape[2] == shape[3] else None,
        mean=mean,
        std=std,
        pad=max(1, shape[2] // 8) if images else 0,
        flip=False,
        class_names=class_names,
        val=splits.get("val"),
    )
