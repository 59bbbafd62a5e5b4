"""Data: official formats, safe unpickling, subsets, augmentation, loaders, label noise."""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fixtures_data import (
    CIFAR10_CLASSES,
    idx_bytes,
    tiny_splits,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_imagefolder,
)

from kdlab.data import (
    DATASETS,
    Batch,
    DatasetSplits,
    apply_augmentation,
    apply_label_noise,
    class_balanced_subset,
    load_dataset,
    make_loader,
    parse_label_noise,
    sample_augmentation,
)
from kdlab.data import datasets as datasets_module
from kdlab.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Point the download cache at an empty folder so the user's own downloads never leak in."""
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))


def batches_of(loader, epoch: int) -> list[Batch]:
    loader.set_epoch(epoch)
    return list(loader)


# --- official formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_folder_and_archive(tmp_path, archive):
    written = write_cifar100(tmp_path, n_train=200, n_test=100, archive=archive)
    assert written.path.name == ("cifar-100-python.tar.gz" if archive else "cifar-100-python")
    splits = load_dataset("cifar100", tmp_path)
    assert (splits.num_classes, splits.in_channels, splits.image_size, splits.pad, splits.flip) == (
        100,
        3,
        32,
        4,
        True,
    )
    assert splits.mean == (0.5071, 0.4865, 0.4409) and splits.class_names[7] == "class_07"
    assert splits.train.images.shape == (200, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert splits.train.images.is_contiguous() and splits.test.images.shape == (100, 3, 32, 32)
    assert torch.equal(splits.train.labels, torch.from_numpy(written.train_labels))
    assert torch.equal(splits.test.labels, torch.from_numpy(written.test_labels))
    # A row is the R plane, then G, then B, each row-major: pixel (c, y, x) is at c*1024 + y*32 + x.
    sample, channel, y, x = 17, 2, 5, 30
    assert (
        splits.train.images[sample, channel, y, x] == written.train_data[sample, channel * 1024 + y * 32 + x]
    )


def test_cifar10_batches_and_direct_folder(tmp_path):
    written = write_cifar10(tmp_path, n_train=100, n_test=50)
    for data_dir in (tmp_path, written.path):  # the parent, or the extracted folder itself
        splits = load_dataset("cifar10", data_dir)
        assert splits.train.images.shape == (100, 3, 32, 32) and len(splits.test) == 50
        assert splits.class_names == CIFAR10_CLASSES and splits.std == (0.2470, 0.2435, 0.2616)
        # the five data batches are concatenated in order
        assert torch.equal(splits.train.labels, torch.from_numpy(written.train_labels))
        assert splits.train.images[63, 1, 31, 0] == written.train_data[63, 1024 + 31 * 32]
    archived = write_cifar10(tmp_path / "tar", archive=True)
    splits = load_dataset("cifar10", archived.path.parent)
    assert torch.equal(splits.test.images.reshape(50, -1), torch.from_numpy(archived.test_data))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    written = write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    (written.path / "meta").write_bytes(pickle.dumps({b"fine_label_names": _Payload(marker)}, protocol=2))
    with pytest.raises(
        UserError, match=r"refusing to unpickle posix\.system from .*meta: CIFAR files only hold"
    ):
        load_dataset("cifar100", tmp_path)
    assert not marker.exists()


def test_truncated_cifar_archive(tmp_path):
    archive = write_cifar100(tmp_path, archive=True).path
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="is truncated or corrupt .*: delete it and fetch it again"):
        load_dataset("cifar100", tmp_path)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    splits = load_dataset("fashion-mnist")
    assert splits.train.images.shape == (60000, 1, 28, 28) and splits.test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(splits.train.labels), torch.full((10,), 6000))
    assert (splits.mean, splits.std, splits.pad, splits.flip) == ((0.2860,), (0.3530,), 2, True)
    # the published mean pixel of the training set
    assert splits.train.images.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-4)


@pytest.mark.parametrize(("layout", "gz"), [("flat", True), ("raw", False), ("MNIST", True)])
def test_idx_layouts(tmp_path, layout, gz):
    written = write_idx(tmp_path, n_train=30, n_test=20, layout=layout, gz=gz)
    splits = load_dataset("mnist", tmp_path)
    assert splits.train.images.shape == (30, 1, 28, 28) and (splits.pad, splits.flip) == (2, False)
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(written.train_data))
    assert torch.equal(splits.test.labels, torch.from_numpy(written.test_labels))


def test_truncated_idx(tmp_path):
    folder = write_idx(tmp_path, n_train=30, n_test=20).path
    images = folder / "train-images-idx3-ubyte.gz"
    content = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(content[:-100]))  # a valid gzip of a cut IDX file
    expected = 16 + 30 * 28 * 28
    message = rf"{images} is truncated or corrupt \(expected {expected} bytes, got {expected - 100}\)"
    with pytest.raises(UserError, match=message + ": delete it and fetch it again"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(gzip.compress(content)[:-500])  # a cut gzip stream
    with pytest.raises(UserError, match=rf"expected {expected} bytes, got \d+ before the gzip stream ended"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 28), np.uint8))))  # wrong number of dimensions
    with pytest.raises(UserError, match="not an IDX file of bytes with 3 dimensions"):
        load_dataset("mnist", tmp_path)


def test_missing_dataset_is_one_line_listing_every_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as error:
        load_dataset("cifar100", empty)
    message = str(error.value)
    assert "\n" not in message and message.startswith("cifar100 not found: looked in ")
    for path in (empty / "cifar-100-python", empty / "cifar-100-python.tar.gz", tmp_path / "cache"):
        assert str(path) in message
    assert message.endswith(
        "pass --data-dir with cifar-100-python/ or cifar-100-python.tar.gz, or --download"
    )

    spec = datasets_module.IDX_DATASETS["fashion-mnist"]
    system = tmp_path / "no-system-package"
    monkeypatch.setitem(datasets_module.IDX_DATASETS, "fashion-mnist", replace(spec, system_dirs=(system,)))
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist", empty)
    message = str(error.value)
    for path in (empty, empty / "FashionMNIST" / "raw", empty / "raw", system, tmp_path / "cache"):
        assert str(path) in message
    assert "\n" not in message and "apt-get install dataset-fashion-mnist, or pass --data-dir" in message
    assert message.endswith("or --download")


def test_unknown_dataset_and_wrong_image_size(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar-100' \\(did you mean cifar100"):
        load_dataset("cifar-100")
    with pytest.raises(UserError, match="image_size=64 does not apply to digits"):
        load_dataset("digits", image_size=64)
    assert {"cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "imagefolder", "imagenet"} <= set(
        DATASETS.names()
    )


def test_digits():
    splits = load_dataset("digits")
    assert splits.train.images.shape == (1437, 1, 8, 8) and len(splits.test) == 360
    assert splits.train.images.max() == 255 and (splits.pad, splits.flip) == (1, False)
    # stratified: every class has 35..37 test samples
    counts = torch.bincount(splits.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37
    pixels = splits.train.images.double() / 255
    assert splits.mean[0] == pytest.approx(pixels.mean().item()) and 0.2 < splits.mean[0] < 0.4
    assert splits.std[0] == pytest.approx(pixels.std(correction=0).item())


def test_imagefolder_and_its_loader(tmp_path):
    write_imagefolder(tmp_path, classes=["cat", "dog", "fox"], per_class=4, size=40)
    for name in ("imagefolder", "imagenet"):
        splits = load_dataset(name, tmp_path, image_size=32, subset=6)
        assert (splits.num_classes, splits.image_size, splits.pad, splits.class_names) == (
            3,
            32,
            0,
            ["cat", "dog", "fox"],
        )
    assert splits.train.targets == [0, 0, 1, 1, 2, 2] and len(splits.test) == 12
    loader = make_loader(splits, "train", 4, train=True, num_workers=0, channels_last=True)
    assert len(loader) == 2
    batch = next(iter(loader))
    assert batch.inputs.shape == (4, 3, 32, 32) and batch.inputs.dtype == torch.float32
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last) and batch.aug is None
    assert batch.targets.dtype == torch.int64 and batch.indices.shape == (4,)
    # indices point into the split, and random crops depend on (seed, epoch, index) only
    assert all(
        splits.train.targets[i] == t
        for i, t in zip(batch.indices.tolist(), batch.targets.tolist(), strict=True)
    )
    with_workers = make_loader(splits, "train", 4, train=True, num_workers=2)  # persistent workers
    batches_of(with_workers, 0)
    first, second = batches_of(loader, 1), batches_of(with_workers, 1)
    assert len(first) == len(second) == 2
    assert all(
        torch.equal(a.inputs, b.inputs) and torch.equal(a.indices, b.indices)
        for a, b in zip(first, second, strict=True)
    )
    assert not torch.equal(batches_of(loader, 2)[0].inputs, first[0].inputs)
    test_batch = next(iter(make_loader(splits, "test", 12, train=False, num_workers=0)))
    assert torch.equal(test_batch.indices, torch.arange(12)) and test_batch.inputs.shape == (12, 3, 32, 32)
    with pytest.raises(UserError, match="val_split is supported for in-memory datasets, not imagefolder"):
        load_dataset("imagefolder", tmp_path, image_size=32, val_split=3)


def test_missing_imagefolder(tmp_path):
    with pytest.raises(
        UserError, match=rf"imagefolder not found: looked in {tmp_path}/train, {tmp_path}/val"
    ):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(UserError, match="imagenet needs a data folder"):
        load_dataset("imagenet")


# --- subsets ------------------------------------------------------------------------------------


def test_class_balanced_subset():
    labels = torch.arange(1000) % 10
    indices = class_balanced_subset(labels, 25, seed=3)
    assert torch.equal(indices, torch.sort(indices).values) and len(indices.unique()) == 25
    assert torch.bincount(labels[indices], minlength=10).tolist() == [3] * 5 + [2] * 5
    assert torch.equal(indices, class_balanced_subset(labels, 25, seed=3))
    assert not torch.equal(indices, class_balanced_subset(labels, 25, seed=4))
    # a class short of samples gives all it has; the rest is spread over the others
    skewed = torch.cat(
        [torch.zeros(2, dtype=torch.int64), torch.ones(50, dtype=torch.int64), torch.full((50,), 2)]
    )
    assert torch.bincount(skewed[class_balanced_subset(skewed, 30, seed=0)]).tolist() == [2, 14, 14]
    for n in (9, 1001):
        with pytest.raises(UserError, match=f"subset size {n} is out of range: choose between 10"):
            class_balanced_subset(labels, n, seed=0)


def test_load_dataset_subsets(tmp_path):
    write_cifar10(tmp_path, n_train=100, n_test=50)
    full = load_dataset("cifar10", tmp_path)
    splits = load_dataset("cifar10", tmp_path, subset=20, test_subset=10, subset_seed=1)
    assert torch.bincount(splits.train.labels).tolist() == [2] * 10 and len(splits.test) == 10
    kept = class_balanced_subset(full.train.labels, 20, seed=1)
    assert torch.equal(splits.train.images, full.train.images[kept])
    with pytest.raises(UserError, match="test_subset: subset size 51 is out of range"):
        load_dataset("cifar10", tmp_path, test_subset=51)


def test_validation_split_is_carved_from_the_training_subset(tmp_path):
    write_cifar10(tmp_path, n_train=100, n_test=50)
    subset = load_dataset("cifar10", tmp_path, subset=60, subset_seed=1)
    splits = load_dataset("cifar10", tmp_path, subset=60, subset_seed=1, val_split=20)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 20, 50)
    assert torch.bincount(splits.val.labels).tolist() == [2] * 10  # class-balanced
    # Disjoint, and together exactly the subset: each image once, the subset's order kept in both.
    held_out = class_balanced_subset(subset.train.labels, 20, seed=1)
    kept = torch.ones(60, dtype=torch.bool)
    kept[held_out] = False
    assert torch.equal(splits.val.images, subset.train.images[held_out])
    assert torch.equal(splits.train.images, subset.train.images[kept])
    again = load_dataset("cifar10", tmp_path, subset=60, subset_seed=1, val_split=20)
    assert torch.equal(again.val.images, splits.val.images)  # seeded
    other = load_dataset("cifar10", tmp_path, subset=60, subset_seed=2, val_split=20)
    assert not torch.equal(other.val.images, splits.val.images)
    loader = make_loader(splits, "val", 8, train=False)
    assert sum(len(batch.targets) for batch in loader) == 20
    assert load_dataset("cifar10", tmp_path).val is None
    with pytest.raises(UserError, match="cifar10 has no val split: set data.val_split=N"):
        make_loader(load_dataset("cifar10", tmp_path), "val", 8, train=False)
    for n in (9, 60):
        with pytest.raises(UserError, match=f"val_split={n} is out of range: choose between 10 .* and 59"):
            load_dataset("cifar10", tmp_path, subset=60, val_split=n)


# --- augmentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_augmentation_equals_torchvision(pad):
    generator = torch.Generator().manual_seed(pad)
    images = torch.randint(0, 256, (24, 3, 7, 9), dtype=torch.uint8, generator=generator)  # H != W on purpose
    params = sample_augmentation(24, pad, True, generator)
    augmented = apply_augmentation(images, params, pad)
    for image, out, dy, dx, flip in zip(images, augmented, params.dy, params.dx, params.flip, strict=True):
        expected = TF.crop(TF.pad(image, [pad]), int(dy), int(dx), 7, 9)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(out, expected)
    assert augmented.dtype == torch.uint8 and augmented.shape == images.shape


def test_augmentation_draws_are_uniform():
    pad, n = 2, 50_000
    params = sample_augmentation(n, pad, True, torch.Generator().manual_seed(0))
    assert params.dy.min() == 0 and params.dy.max() == 2 * pad
    counts = torch.bincount(params.dy * (2 * pad + 1) + params.dx, minlength=(2 * pad + 1) ** 2).double()
    expected = n / len(counts)
    chi_square = ((counts - expected) ** 2 / expected).sum().item()
    assert chi_square < 60  # 24 degrees of freedom: p < 1e-4 above 60
    assert abs(params.flip.double().mean().item() - 0.5) < 0.01
    disabled = sample_augmentation(5, 0, False, torch.Generator())
    assert not disabled.dy.any() and not disabled.dx.any() and not disabled.flip.any()


# --- loaders ------------------------------------------------------------------------------------


@pytest.fixture
def tiny() -> DatasetSplits:
    """A 103-sample in-memory dataset (both splits) with CIFAR-like crop and flip."""
    return tiny_splits(103, 5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def test_loader_epochs_are_reproducible_from_scratch(tiny):
    loader = make_loader(tiny, "train", 16, train=True, seed=7)
    assert len(loader) == 7
    epochs = [batches_of(loader, epoch) for epoch in range(3)]
    fresh = batches_of(make_loader(tiny, "train", 16, train=True, seed=7), 2)
    for a, b in zip(epochs[2], fresh, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.indices, b.indices)
        assert torch.equal(a.aug.dy, b.aug.dy) and torch.equal(a.aug.flip, b.aug.flip)
    assert not torch.equal(epochs[0][0].indices, epochs[1][0].indices)
    order = torch.cat([batch.indices for batch in epochs[0]])
    assert torch.equal(torch.sort(order).values, torch.arange(103))
    # the batch holds exactly the augmented, normalised images at its indices
    batch = epochs[1][0]
    expected = apply_augmentation(tiny.train.images[batch.indices], batch.aug, 2).float() / 255
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    assert torch.equal(batch.inputs, (expected - mean) / std)
    assert torch.equal(batch.targets, tiny.train.labels[batch.indices])


def test_eval_loader_keeps_order_without_augmentation(tiny):
    loader = make_loader(tiny, "test", 50, train=False, drop_last=True)
    batches = batches_of(loader, 0)
    assert len(loader) == len(batches) == 2 and all(batch.aug is None for batch in batches)
    assert torch.equal(batches[1].indices, torch.arange(50, 100))
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    assert torch.equal(batches[0].inputs, (tiny.test.images[:50].float() / 255 - mean) / std)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_ranks_cover_the_truncated_permutation_once(tiny, world_size):
    single = torch.cat(
        [batch.indices for batch in batches_of(make_loader(tiny, "train", 8, train=True, seed=3), 5)]
    )
    shards = []
    for rank in range(world_size):
        loader = make_loader(tiny, "train", 8, train=True, seed=3, rank=rank, world_size=world_size)
        shards.append(torch.cat([batch.indices for batch in batches_of(loader, 5)]))
    kept = 103 - 103 % world_size
    assert all(len(shard) == kept // world_size for shard in shards)
    # rank r holds positions r, r + W, ... of the same global permutation
    interleaved = torch.stack(shards, dim=1).flatten()
    assert torch.equal(interleaved, single[:kept])
    # evaluation shards keep every sample
    eval_shards = [
        torch.cat(
            [b.indices for b in make_loader(tiny, "test", 8, train=False, rank=r, world_size=world_size)]
        )
        for r in range(world_size)
    ]
    assert torch.equal(torch.sort(torch.cat(eval_shards)).values, torch.arange(103))


def test_loader_rejects_bad_arguments(tiny):
    with pytest.raises(UserError, match="unknown split 'valid': choose train, val, test or left_out"):
        make_loader(tiny, "valid", 8, train=False)
    with pytest.raises(UserError, match="rank 2 is outside 0..1"):
        make_loader(tiny, "train", 8, train=True, rank=2, world_size=2)


# --- label noise --------------------------------------------------------------------------------


def test_symmetric_label_noise():
    labels = torch.arange(1001) % 10
    original = labels.clone()
    noisy, flipped = apply_label_noise(labels, 10, "symmetric:0.4", seed=1)
    assert torch.equal(labels, original)
    assert len(flipped) == round(0.4 * 1001) == (noisy != labels).sum()
    assert (noisy[flipped] != labels[flipped]).all() and noisy.min() >= 0 and noisy.max() < 10
    again, flipped_again = apply_label_noise(labels, 10, "symmetric:0.4", seed=1)
    assert torch.equal(again, noisy) and torch.equal(flipped_again, flipped)
    assert not torch.equal(apply_label_noise(labels, 10, "symmetric:0.4", seed=2)[1], flipped)
    # the new classes are spread over all other classes
    assert len((noisy[flipped] - labels[flipped]).remainder(10).unique()) == 9
    assert len(apply_label_noise(labels, 10, "symmetric:0", seed=1)[1]) == 0


def test_asymmetric_label_noise():
    labels = torch.arange(1000) % 10
    noisy, flipped = apply_label_noise(labels, 10, "asymmetric:0.4", seed=0, dataset="cifar10")
    # only truck, bird, deer, cat and dog (500 samples) are candidates
    assert len(flipped) == 200 and (noisy != labels).sum() == 200
    mapping = {(int(a), int(b)) for a, b in zip(labels[flipped], noisy[flipped], strict=True)}
    assert mapping == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    noisy, flipped = apply_label_noise(labels, 10, "asymmetric:0.25", seed=0, dataset="fashion-mnist")
    assert len(flipped) == 250 and torch.equal(noisy[flipped], (labels[flipped] + 1) % 10)


@pytest.mark.parametrize(
    "spec", ["symmetric", "gaussian:0.2", "symmetric:1.0", "symmetric:-0.1", "symmetric:abc"]
)
def test_malformed_noise_specs(spec):
    with pytest.raises(UserError, match=f"invalid label noise '{spec}': write KIND:RATE"):
        parse_label_noise(spec)


def test_noise_spec_parsing():
    assert parse_label_noise("symmetric:0.4") == ("symmetric", 0.4)
    assert parse_label_noise("asymmetric:0") == ("asymmetric", 0.0)
