"""Datasets in their official formats, tensor augmentation, batch iteration, label noise and subsets.

splits = load_dataset("cifar100", "data/", subset=5000)
loader = make_loader(splits, "train", 128, device="cuda", train=True, seed=0)
for epoch in range(epochs):
    loader.set_epoch(epoch)
    for batch in loader:  # Batch(inputs, targets, indices, aug)
        ...
"""

from .augment import (
    AUGMENT_MODES,
    AugParams,
    apply_augmentation,
    apply_autoaugment,
    augment_mode,
    augment_settings,
    sample_augmentation,
)
from .datasets import (
    DATASETS,
    DatasetSplits,
    LabelledSubset,
    TensorData,
    cache_dir,
    carve_validation,
    class_balanced_subset,
    load_dataset,
    split_labels,
)
from .loader import Batch, epoch_generator, make_loader
from .noise import apply_label_noise, parse_label_noise

__all__ = [
    "AUGMENT_MODES",
    "DATASETS",
    "AugParams",
    "Batch",
    "DatasetSplits",
    "LabelledSubset",
    "TensorData",
    "apply_augmentation",
    "apply_autoaugment",
    "augment_mode",
    "augment_settings",
    "apply_label_noise",
    "cache_dir",
    "carve_validation",
    "class_balanced_subset",
    "epoch_generator",
    "load_dataset",
    "make_loader",
    "parse_label_noise",
    "sample_augmentation",
    "split_labels",
]
