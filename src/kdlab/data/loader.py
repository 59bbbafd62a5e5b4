"""Batch iteration: in-memory splits straight from device memory, ImageFolder splits through a DataLoader.

Each epoch is a pure function of ``(seed, epoch)``: the order and every random draw come from a fresh
generator seeded from that pair, so epoch ``e`` is the same whether or not earlier epochs ran in this
process (what makes resuming exact).

Distributed training: every rank draws the same global permutation. For training it is truncated to
a multiple of ``world_size`` (every rank takes the same number of steps, which DDP's gradient
all-reduce needs) and rank ``r`` takes positions ``r, r + W, r + 2W, ...``. Evaluation
(``train=False``) keeps every sample: ranks get ``r::W`` of the full order, so their sizes differ by at
most one and the caller sums correct/total counts over ranks.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from kdlab.errors import UserError

from .augment import (
    AugParams,
    apply_augmentation,
    apply_autoaugment,
    augment_mode,
    augment_settings,
    sample_augmentation,
)
from .datasets import DatasetSplits, TensorData


@dataclass
class Batch:
    """One batch: ``inputs`` float32 ``[B, C, H, W]`` normalised on the device (or, for non-image
    tensors, the stored float32/int64 ``[B, ...]``), ``targets`` int64 ``[B]`` on the device,
    ``indices`` int64 ``[B]`` (CPU) positions in the split, ``aug`` the crop/flip applied, on the
    device for in-memory splits (None when not augmented, and for imagefolder whose augmentation
    lives in its transforms)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    aug: AugParams | None
    # The same indices on the device (in-memory splits; None otherwise): what the teacher-logit
    # cache's rows are computed from on the device, with ``aug`` (there too), without a copy.
    device_indices: torch.Tensor | None = None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on ``(seed, epoch)`` only (hashed, so nearby pairs are unrelated)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _epoch_plan(
    n: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int
) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """The epoch's generator, its global order of the ``n`` samples, and this rank's positions in it.

    The generator has drawn the permutation; later draws (augmentation) continue from it for the
    whole global order, so they too agree across ranks and world sizes.
    """
    generator = epoch_generator(seed, epoch)
    if shuffle:
        order = torch.randperm(n, generator=generator)
        order = order[: n - n % world_size]
    else:
        order = torch.arange(n)
    return generator, order, torch.arange(rank, len(order), world_size)


def _shard_size(n: int, shuffle: bool, rank: int, world_size: int) -> int:
    """How many of the ``n`` samples rank ``rank`` gets per epoch (matches ``_epoch_plan``)."""
    kept = n - n % world_size if shuffle else n
    return len(range(rank, kept, world_size))


def _num_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


def check_train_batches(
    num_samples: int, batch_size: int, world_size: int, needs: list[tuple[int, str]] = ()
) -> None:
    """A UserError unless every training batch of every rank is possible and holds at least the
    minimum each of ``needs`` asks, ``(minimum, 'who needs it and why')``: the full batches and the
    last partial one, of ``shard % batch_size`` samples where ``shard = floor(num_samples / W)``
    (``_epoch_plan``). The message suggests the nearest batch size that fits (kdlab keeps every
    sample of an epoch rather than dropping a short last batch, so the fix is the user's choice)."""
    if num_samples < batch_size * world_size:
        raise UserError(
            f"batch size {batch_size} x {world_size} process(es) is larger than the {num_samples} training "
            "images: lower --batch-size or enlarge --subset"
        )
    shard = _shard_size(num_samples, True, 0, world_size)
    minimum = max((need for need, _ in needs), default=1)
    if minimum <= 1:
        return
    reason = next(why for need, why in needs if need == minimum)

    def suggestion() -> int:
        """The nearest batch size whose batches all hold ``minimum`` or more (the larger one at equal
        distance); ``shard`` itself always does."""
        for distance in range(shard):
            for size in (batch_size + distance, batch_size - distance):
                if minimum <= size <= shard and (shard % size == 0 or shard % size >= minimum):
                    return size
        return shard

    per = " per process" if world_size > 1 else ""
    if batch_size < minimum:
        raise UserError(
            f"batch size {batch_size} is too small: {reason}; choose e.g. --batch-size {suggestion()}"
        )
    last = shard % batch_size
    if 0 < last < minimum:
        raise UserError(
            f"the last training batch of each epoch would hold {last} of the {shard} training samples{per} at "
            f"batch size {batch_size}: {reason}; choose e.g. --batch-size {suggestion()}"
        )


class TensorLoader:
    """Batches of a :class:`TensorData` split that lives on the device; augmentation runs there too."""

    def __init__(
        self,
        splits: DatasetSplits,
        data: TensorData,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        augment: str | bool,
        rank: int,
        world_size: int,
        channels_last: bool,
        drop_last: bool,
    ) -> None:
        self.data = data.to(device)  # once: batches are gathered on the device
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.channels_last = channels_last
        # uint8 images are normalised and augmented; other inputs (float features, token ids) reach the
        # model as stored.
        images = data.images.dtype == torch.uint8 and data.images.dim() == 4
        augmenting = train and images
        pad, flip, auto = (
            augment_settings(augment, splits.pad, splits.flip) if augmenting else (0, False, False)
        )
        self.pad, self.flip, self.autoaugment = pad, flip, auto
        self.augment = pad > 0 or flip
        self.mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1) if images else None
        self.std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1) if images else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> the normalised float32 model input (channels_last if asked); other
        inputs unchanged.

        The one place this happens: the teacher-logit cache builds its inputs here too, so cached
        and live logits see bit-identical inputs."""
        if self.mean is None:
            return images
        inputs = (images.float() / 255 - self.mean) / self.std
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return _shard_size(len(self.data), self.train, self.rank, self.world_size)

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.data)
        generator, order, positions = _epoch_plan(
            n, self.seed, self.epoch, self.train, self.rank, self.world_size
        )
        aug = (
            sample_augmentation(len(order), self.pad, self.flip, generator)[positions]
            if self.augment
            else None
        )
        # Drawn on the CPU (the same draws on every device), uploaded once for the epoch: each batch
        # then takes a slice on the device instead of copying its three small tensors from the host.
        aug_on_device = _to_device(aug, self.data.images.device) if aug is not None else None
        # Drawn after the crops/flips, over the whole global order, so that ranks agree (module docstring).
        auto_seeds = (
            torch.randint(0, 2**62, (len(order),), generator=generator)[positions]
            if self.autoaugment
            else None
        )
        local = order[positions]
        local_on_device = local.to(self.data.images.device)
        for batch in range(len(self)):
            window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            batch_indices = local_on_device[window]
            images = self.data.images[batch_indices]
            batch_aug = aug_on_device[window] if aug_on_device is not None else None
            if batch_aug is not None:
                images = apply_augmentation(images, batch_aug, self.pad)
            if auto_seeds is not None:
                images = apply_autoaugment(images, auto_seeds[window])
            yield Batch(
                self.prepare(images), self.data.labels[batch_indices], local[window], batch_aug, batch_indices
            )


def _to_device(aug: AugParams, device: torch.device) -> AugParams:
    """``aug`` on ``device`` in one host-to-device copy (dy, dx and flip packed into one tensor)."""
    packed = torch.stack([aug.dy, aug.dx, aug.flip.long()]).to(device)
    return AugParams(packed[0], packed[1], packed[2].bool())


class _IndexedDataset(Dataset):
    """Yields ``(image, target, index)`` for an index, seeding the transform's randomness per sample.

    The sampler hands over ``(index, sample_seed)``; the transforms draw from torch's global RNG, which
    is forked and seeded per sample, so an image's augmentation depends on ``(seed, epoch, index)`` only,
    whatever the number of workers and even with persistent workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor | None, int | str, int]:
        """``(image, target, index)``; ``(None, "PATH (why)", index)`` for a file that cannot be
        decoded (not an image, truncated), which :func:`_collate_readable` drops."""
        index, sample_seed = item
        try:
            if sample_seed is None:
                image, target = self.dataset[index]
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed)
                    image, target = self.dataset[index]
        except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for a damaged file
            return None, f"{_sample_path(self.dataset, index)} ({type(error).__name__})", index
        return image, target, index


def _sample_path(dataset: Dataset, index: int) -> str:
    """The file behind sample ``index`` of an ImageFolder (possibly inside Subsets)."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"sample {index}"


def _collate_readable(
    items: list[tuple[torch.Tensor | None, int | str, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]] | list[str]:
    """The batch of the samples that could be read, and the files that could not; only those files
    when none could be read."""
    readable = [item for item in items if item[0] is not None]
    unreadable = [item[1] for item in items if item[0] is None]
    if not readable:
        return unreadable
    return (*default_collate(readable), unreadable)


class _EpochSampler(Sampler):
    """This rank's ``(index, sample_seed)`` pairs for the current epoch (see the module docstring)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world_size: int) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return _shard_size(self.n, self.shuffle, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        generator, order, positions = _epoch_plan(
            self.n, self.seed, self.epoch, self.shuffle, self.rank, self.world_size
        )
        if not self.shuffle:  # evaluation transforms are deterministic
            return iter([(int(i), None) for i in order[positions]])
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)[positions]
        return iter(list(zip(order[positions].tolist(), seeds.tolist(), strict=True)))


@dataclass
class _Skipped:
    """The files of one dataset that cannot be decoded, and how many a warning has counted."""

    files: set[str] = field(default_factory=set)
    warned: int = 0


_SKIPPED: weakref.WeakKeyDictionary[Dataset, _Skipped] = weakref.WeakKeyDictionary()


class DatasetLoader:
    """Batches of a torch Dataset (imagefolder/imagenet) through a DataLoader, as :class:`Batch`."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        channels_last: bool,
        drop_last: bool,
        split: str = "train",
    ) -> None:
        self.device, self.channels_last = device, channels_last
        self.split = split
        # Shared by every loader of this dataset (training and clean passes): one warning per file.
        self.skipped = _SKIPPED.setdefault(dataset, _Skipped())
        self.sampler = _EpochSampler(len(dataset), seed, train, rank, world_size)
        self.loader = DataLoader(
            _IndexedDataset(dataset),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate_readable,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            drop_last=drop_last,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch  # the sampler runs in this process, so persistent workers see it

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        """Batches of the images that can be decoded. A damaged image file is skipped and counted; a
        complete pass that found new ones ends with a one-line warning naming the first (by path). A
        batch of nothing but damaged files is an error: the folder is not usable."""
        for batch in self.loader:
            if isinstance(batch, list):
                raise UserError(
                    f"none of a batch of {len(batch)} images of the {self.split} split can be read (first: "
                    f"{batch[0]}): check the image folder"
                )
            images, targets, indices, unreadable = batch
            self.skipped.files.update(unreadable)
            inputs = images.to(self.device, non_blocking=True)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield Batch(inputs, targets.to(self.device, non_blocking=True), indices, None)
        if len(self.skipped.files) > self.skipped.warned:
            self.skipped.warned = len(self.skipped.files)
            print(
                f"kdlab: warning: skipped {self.skipped.warned} image file(s) of the {self.split} split that "
                f"cannot be read (first: {min(self.skipped.files)}); delete or replace them",
                file=sys.stderr,
            )


def _check_non_image(
    splits: DatasetSplits, data: TensorData, train: bool, mode: str, channels_last: bool
) -> None:
    """What image-only settings say to inputs that are not uint8 images ``[N, C, H, W]``."""
    kind = f"{str(data.images.dtype).removeprefix('torch.')} {list(data.images.shape[1:])}"
    if train and mode not in ("default", "none"):
        raise UserError(
            f"data.augment={mode} crops and flips uint8 images [N, C, H, W], but the samples of {splits.name} are "
            f"{kind}: use data.augment=none"
        )
    if channels_last and data.images.dim() != 4:
        raise UserError(
            f"channels_last applies to image batches [B, C, H, W], but the samples of {splits.name} are {kind}: "
            "drop channels_last"
        )


def make_loader(
    splits: DatasetSplits,
    split: str,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    train: bool,
    seed: int = 0,
    augment: str | bool = "default",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 4,
    channels_last: bool = False,
    drop_last: bool = False,
) -> TensorLoader | DatasetLoader:
    """Iterate ``splits.<split>`` (``"train"``, ``"val"``, ``"test"`` or ``"left_out"``, the training
    samples ``data.select`` left out) in batches of :class:`Batch`.

    ``train=True`` shuffles and, for in-memory splits, augments as ``augment`` says (a mode of
    ``AUGMENT_MODES``; ``True``/``False`` mean default/none; inputs other than uint8 images take
    default or none, which do nothing); ``train=False`` keeps the order and does not augment. Call ``set_epoch(e)`` before iterating epoch ``e``. ``num_workers`` only matters for
    Dataset splits (imagefolder/imagenet), whose augmentation lives in their transforms.
    """
    if split not in ("train", "val", "test", "left_out"):
        raise UserError(f"unknown split '{split}': choose train, val, test or left_out")
    if getattr(splits, split) is None:
        raise UserError(f"{splits.name} has no {split} split: set data.val_split=N to hold one out")
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} is not positive: choose e.g. 128")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside 0..{world_size - 1} for world size {world_size}")
    data = getattr(splits, split)
    device = torch.device(device)
    mode = augment_mode(augment)
    if isinstance(data, TensorData):
        if not splits.image_inputs:
            _check_non_image(splits, data, train, mode, channels_last)
        return TensorLoader(
            splits, data, batch_size, device, train, seed, mode, rank, world_size, channels_last, drop_last
        )
    if train and mode != "default":
        raise UserError(
            f"data.augment={mode} applies to in-memory datasets; {splits.name} augments in its transforms "
            "(random resized crop + flip): use data.augment=default"
        )
    return DatasetLoader(
        data, batch_size, device, train, seed, rank, world_size, num_workers, channels_last, drop_last, split
    )
