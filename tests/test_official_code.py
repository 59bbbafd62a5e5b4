"""The official code's remaining experiments: teacher-chosen data fractions, augmentation modes, SVHN
in its .mat files, and the per-sample teacher scores (entropy, TLD) they rank by."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from fixtures_data import tiny_splits, write_svhn

from kdlab.analysis.metrics import predictive_entropy, top_logit_difference
from kdlab.config import DataConfig, build_config
from kdlab.data import DatasetSplits, augment_mode, augment_settings, load_dataset, make_loader
from kdlab.data.augment import apply_autoaugment
from kdlab.data.select import parse_selection, select_indices, teacher_scores
from kdlab.errors import UserError


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))


# --- per-sample teacher scores ------------------------------------------------------------------------


def test_top_logit_difference_hand_computed():
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 5.0, 4.0]])
    labels = torch.tensor([0, 1, 0, 2])
    # right: 3 - 1; wrong: 1 - 3; a tie at the top counts as right with margin 0; wrong: 4 - 5.
    assert top_logit_difference(logits, labels).tolist() == [2.0, -2.0, 0.0, -1.0]


# --- teacher-chosen fractions -------------------------------------------------------------------------

# Two classes of four samples; teacher logits (m, 0) for class 0 and (0, m) for class 1, so every
# sample is classified right, its TLD is m and its entropy falls as the margin m grows.
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
MARGINS = torch.tensor([3.0, 0.5, 2.0, 1.0, 2.5, 6.0, 5.0, 4.0], dtype=torch.float64)


def fixture_logits() -> torch.Tensor:
    logits = torch.zeros(8, 2, dtype=torch.float64)
    logits[LABELS == 0, 0] = MARGINS[LABELS == 0]
    logits[LABELS == 1, 1] = MARGINS[LABELS == 1]
    return logits


def test_entropy_selection_matches_a_hand_ranked_order():
    scores = teacher_scores(fixture_logits(), LABELS)
    # Entropy of softmax((m, 0)): p = 1 / (1 + e^-m), H = -p ln p - (1 - p) ln(1 - p).
    p = 1 / (1 + torch.exp(-MARGINS))
    assert torch.allclose(scores["entropy"], -(p * p.log() + (1 - p) * (1 - p).log()))
    assert torch.equal(scores["tld"], MARGINS)

    # By hand, ascending entropy = descending margin. Class 0: samples 0 (3), 2 (2), 3 (1), 1 (0.5);
    # class 1: 5 (6), 6 (5), 7 (4), 4 (2.5). Every class-1 margin beats its class-0 rank-mate, so class 1
    # has the lower mean entropy and the higher mean TLD.
    def chosen(spec: str) -> list[int]:
        return select_indices(LABELS, parse_selection(spec), seed=0, scores=scores).tolist()

    assert chosen("samples:entropy:0-0.5") == [0, 2, 5, 6]  # the surest half of each class
    assert chosen("samples:entropy:0.5-1") == [1, 3, 4, 7]
    assert chosen("samples:entropy:0.25-0.75") == [2, 3, 6, 7]
    assert chosen("samples:entropy:0-0.25:overall") == [5, 6]  # the two surest of all eight
    assert chosen("samples:tld:0-0.5") == [1, 3, 4, 7]  # smallest margins first
    assert chosen("classes:entropy:0-0.5") == [4, 5, 6, 7]
    assert chosen("classes:tld:0-0.5,samples:tld:0.5-1") == [0, 2]


def test_random_selection_is_seeded_and_keeps_the_band_size_per_class():
    labels = torch.arange(1000) % 10
    rules = parse_selection("samples:random:0.2-0.3")
    first = select_indices(labels, rules, seed=3)
    assert torch.equal(first, select_indices(labels, rules, seed=3))
    assert not torch.equal(first, select_indices(labels, rules, seed=4))
    assert torch.bincount(labels[first]).tolist() == [10] * 10  # a tenth of each class of 100
    classes = select_indices(labels, parse_selection("classes:random:0-0.1"), seed=0)
    assert len(classes) == 100 and len(torch.unique(labels[classes])) == 1  # one class, whole
    # 100 * 0.29 is 28.999... in floating point: a band edge still means 29 samples.
    assert (
        len(select_indices(torch.zeros(100, dtype=torch.long), parse_selection("samples:random:0-0.29")))
        == 29
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("samples:entropy", "is malformed"),
        ("sample:entropy:0-0.1", "not classes or samples (did you mean samples?)"),
        ("samples:entropi:0-0.1", "is not a ranking (did you mean entropy?)"),
        ("samples:entropy:0.2-0.1", "must be LOWER-UPPER with 0 <= lower < upper <= 1"),
        ("classes:entropy:0-0.1:overall", "the only option is ':overall', for samples"),
        ("samples:tld:0-0.1,samples:random:0-0.5", "names samples twice"),
    ],
)
def test_bad_selections_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_selection(spec)


def test_selection_config_needs_a_teacher_to_rank():
    flags = {"model": "mlp-8", "data": {"name": "digits", "select": "samples:entropy:0-0.1"}}
    with pytest.raises(UserError, match="ranks by the teacher's entropy: pass --teacher"):
        build_config(flags=flags)
    flags["data"]["select"] = "samples:random:0-0.1"
    assert build_config(flags=flags).data.select == "samples:random:0-0.1"
    with pytest.raises(UserError, match="data.select_pass='twice' is invalid"):
        build_config(flags=flags, overrides=["data.select_pass=twice"])


# --- augmentation modes ------------------------------------------------------------------------------


@pytest.fixture
def tiny() -> DatasetSplits:
    return tiny_splits(40, 4)


def raw_batches(splits: DatasetSplits, augment, seed: int = 1) -> list:
    loader = make_loader(splits, "train", 10, train=True, seed=seed, augment=augment)
    loader.set_epoch(0)
    batches = list(loader)
    for batch in batches:  # undo the normalisation: back to uint8 images
        batch.raw = (batch.inputs * 0.25 + 0.5).mul(255).round().to(torch.uint8)
    return batches


def test_augment_modes_and_the_old_boolean():
    assert [augment_mode(value) for value in (True, False, "on", "off", "Crop+Flip")] == [
        "default", "none", "default", "none", "crop+flip",
    ]  # fmt: skip
    assert augment_settings("default", 4, False) == (4, False, False)  # the dataset's own: SVHN crops only
    assert augment_settings("flip", 4, False) == (0, True, False)
    assert augment_settings("crop", 4, True) == (4, False, False)
    assert augment_settings("autoaugment", 4, True) == (4, True, True)
    assert DataConfig(augment=False).augment == "none" and build_config().data.augment == "default"
    assert build_config(overrides=["data.augment=false"]).data.augment == "none"  # YAML's bool, as before
    with pytest.raises(UserError, match="data.augment='cropflip' is not an augmentation mode"):
        build_config(overrides=["data.augment=cropflip"])
    with pytest.raises(UserError, match="AutoAugment's views are not a finite set"):
        build_config(overrides=["data.augment=autoaugment", "kd.cache=true"])


def test_each_mode_applies_only_its_transforms(tiny):
    images = tiny.train.images
    for batch in raw_batches(tiny, "none"):
        assert batch.aug is None and torch.equal(batch.raw, images[batch.indices])
    for batch in raw_batches(tiny, "flip"):
        assert not batch.aug.dy.any() and not batch.aug.dx.any() and batch.aug.flip.any()
        expected = torch.where(
            batch.aug.flip.view(-1, 1, 1, 1), images[batch.indices].flip(3), images[batch.indices]
        )
        assert torch.equal(batch.raw, expected)
    crops = raw_batches(tiny, "crop")
    assert all(not batch.aug.flip.any() for batch in crops) and any(
        batch.aug.dy.ne(2).any() for batch in crops
    )
    both = raw_batches(tiny, "crop+flip")
    assert any(batch.aug.flip.any() for batch in both) and any(batch.aug.dx.ne(2).any() for batch in both)


def test_autoaugment_is_a_seeded_per_sample_policy_after_crop_and_flip(tiny):
    from torchvision.transforms import v2

    first, again = raw_batches(tiny, "autoaugment"), raw_batches(tiny, "autoaugment")
    assert all(torch.equal(a.raw, b.raw) for a, b in zip(first, again, strict=True))  # (seed, epoch) only
    cropped = raw_batches(tiny, "crop+flip")
    changed = sum(int((a.raw != c.raw).any(dim=(1, 2, 3)).sum()) for a, c in zip(first, cropped, strict=True))
    assert 0 < changed < len(tiny.train)  # same crops and flips underneath; the policy changes most, not all
    # One sample, by hand: torchvision's policy seeded with that sample's seed, on its cropped image.
    seeds = torch.tensor([5, 6])
    pictures = tiny.train.images[:2]
    out = apply_autoaugment(pictures, seeds)
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=128)
    torch.manual_seed(6)
    assert torch.equal(out[1], policy(pictures[1]))


# --- SVHN -------------------------------------------------------------------------------------------


def test_svhn_from_official_mat_files(tmp_path):
    written = write_svhn(tmp_path / "svhn", n_train=30, n_test=20, n_extra=10)
    splits = load_dataset("svhn", tmp_path / "svhn")
    assert (len(splits.train), len(splits.test), splits.num_classes, splits.in_channels) == (30, 20, 10, 3)
    assert (splits.pad, splits.flip) == (4, False)
    # X [32, 32, 3, N] -> [N, 3, 32, 32]; the label 10 is the digit 0.
    assert torch.equal(
        splits.train.images[7], torch.from_numpy(written.train_data[:, :, :, 7].transpose(2, 0, 1))
    )
    assert splits.train.labels.tolist() == (written.train_labels % 10).tolist()
    assert 10 in written.train_labels.tolist() and 0 in splits.train.labels.tolist()
    extra = load_dataset("svhn-extra", tmp_path)  # the folder above works too (data_dir/svhn)
    assert len(extra.train) == 40 and torch.equal(extra.train.images[:30], splits.train.images)


def test_svhn_missing_or_corrupt_files_are_one_line_errors(tmp_path):
    write_svhn(tmp_path / "svhn", n_train=10, n_test=10)
    with pytest.raises(UserError, match="svhn-extra not found: .*extra_32x32.mat"):
        load_dataset("svhn-extra", tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match=r"cannot read .*test_32x32.mat as an SVHN .mat file"):
        load_dataset("svhn", tmp_path / "svhn")
    from scipy.io import savemat

    savemat(
        tmp_path / "svhn" / "test_32x32.mat", {"X": np.zeros((8, 8, 3, 2), np.uint8), "y": np.ones((2, 1))}
    )
    with pytest.raises(UserError, match=r"does not hold SVHN's X \[32, 32, 3, N\]"):
        load_dataset("svhn", tmp_path / "svhn")


def test_entropy_metric_is_shared():
    logits = torch.tensor([[0.0, 0.0]])
    assert predictive_entropy(logits).item() == pytest.approx(math.log(2))


# --- a teacher-chosen fraction, end to end ---------------------------------------------------------


def test_distill_on_a_teacher_chosen_fraction_records_it(tmp_path):
    from kdlab.engine import train
    from kdlab.teacher import load_teacher

    quiet = {"progress": False, "tensorboard": False}
    base = {"data": {"name": "digits"}, "optim": {"epochs": 1, "batch_size": 32}, **quiet}
    teacher = tmp_path / "teacher"
    train(build_config(flags={**base, "model": "convnet-4", "out": str(teacher)}))
    spec = "classes:random:0-0.5,samples:tld:0-0.2"
    config = build_config(
        flags={
            **base,
            "model": "mlp-8",
            "out": str(tmp_path / "student"),
            "kd": {"teacher": str(teacher), "loss": "kl"},
        },
        overrides=[f"data.select={spec}", "data.select_seed=3"],
    )
    summary = train(config)
    record = json.loads((tmp_path / "student" / "selection.json").read_text())
    # The same choice, recomputed here: the teacher's clean logits on the training split.
    splits = load_dataset("digits")
    model = load_teacher(str(teacher), torch.device("cpu"))
    loader = make_loader(splits, "train", 512, train=False)
    with torch.no_grad():
        logits = torch.cat([model(batch.inputs) for batch in loader])
    expected = select_indices(
        splits.train.labels, parse_selection(spec), 3, teacher_scores(logits, splits.train.labels)
    )
    assert record["indices"] == expected.tolist() and record["kept"] == summary["train_images"] == len(
        expected
    )
    assert len(record["classes_kept"]) == 5 and record["of"] == len(splits.train)
    assert (record["select"], record["select_pass"], record["select_seed"]) == (spec, "clean", 3)
