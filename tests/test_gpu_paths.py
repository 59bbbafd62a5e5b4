"""What the GPU paths changed, checked on the CPU: the loader's per-epoch uploads, the cache rows
computed where the table is, ``kd.cache: auto`` and its record, and device names.

The copies themselves cannot be watched without a GPU; what is checked is their shape: every
batch's crop/flip draws are slices of one tensor made once per epoch on the data's device, and the
cache rows come from those slices and the batch's indices on the device, never from the host.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from fixtures_engine import make_config, random_teacher

import kdlab.device
from kdlab.cache import ViewGrid, decide_cache
from kdlab.config import build_config
from kdlab.data import load_dataset, make_loader
from kdlab.engine import Trainer, train
from kdlab.errors import UserError
from kdlab.experiments.recipes import PlannedRun
from kdlab.experiments.sweep import teacher_passes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A random convnet-4 teacher of digits (the cache's rows and the decision do not need a trained one)."""
    return str(random_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", in_channels=1))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_augmentation_draws_are_uploaded_once_per_epoch(digits):
    """Every batch's dy, dx and flip are views of one tensor on the data's device, made once for the
    epoch (one copy, not three per batch), and equal the CPU draws of the epoch's generator."""
    loader = make_loader(digits, "train", 64, train=True, seed=3, num_workers=0)
    loader.set_epoch(1)
    batches = list(loader)
    storages = {
        part.untyped_storage().data_ptr() for b in batches for part in (b.aug.dy, b.aug.dx, b.aug.flip)
    }
    assert len(storages) <= 2  # dy and dx share the int64 upload; flip is its bool view
    assert all(b.aug.dy.device == loader.data.images.device for b in batches)
    again = list(loader)  # the same epoch drawn again: the same crops
    for first, second in zip(batches, again, strict=True):
        assert torch.equal(first.aug.dy, second.aug.dy) and torch.equal(first.aug.flip, second.aug.flip)
        assert torch.equal(first.inputs, second.inputs)
    for batch in batches:  # the batch's indices on the device, for the cache rows
        assert torch.equal(batch.device_indices.cpu(), batch.indices)
    assert {int(v) for b in batches for v in b.aug.dy} == {0, 1, 2} and not any(
        b.aug.flip.any() for b in batches
    )


def test_cache_rows_are_computed_where_the_table_is(tmp_path, teacher):
    """A training batch's rows come from its device indices and draws: index * V + view, V = 9."""
    config = make_config(tmp_path / "s", teacher=teacher, loss="kl", alpha=0.9, tau=4.0, cache=True)
    trainer = Trainer([config])
    trainer.train_loader.set_epoch(0)
    batch = next(iter(trainer.train_loader))
    rows = trainer.cache_rows(batch)
    expected = batch.indices * 9 + (batch.aug.dy.cpu() * 3 + batch.aug.dx.cpu())
    assert rows.device == trainer.logit_cache.flat.device and torch.equal(rows.cpu(), expected)
    assert torch.equal(trainer.logit_cache.rows(batch.indices, None), batch.indices * 9 + 4)  # centre view


# -- kd.cache: auto ---------------------------------------------------------------------------------


def decision(config, passes: int, **settings):
    splits = load_dataset(config.data.name)
    loader = make_loader(splits, "train", 64, train=True, augment=config.data.augment, num_workers=0)
    arguments = {"teacher_read": True, "features_read": False, "world_size": 1} | settings
    return decide_cache(config, loader, splits.num_classes, passes=passes, **arguments)


def test_auto_caches_when_the_teacher_would_compute_more_views_than_the_cache_holds(tmp_path):
    """digits: 1437 images, pad 1 and no flips: V = 9 views. 9 passes are 9 x 1437 views either way:
    off; from 10 on the live teacher computes more: on. Without augmentation V = 1."""
    config = make_config(tmp_path / "s", teacher="t", loss="kl")
    assert config.kd.cache == "auto" and ViewGrid(1, False).num_views == 9
    off, on = decision(config, 9), decision(config, 10)
    assert (off.use, off.views_needed, off.views_cached) == (False, 9 * 1437, 9 * 1437)
    assert off.reason == (
        "the live teacher would compute 9 pass(es) x 1437 images = 12933 views, the cache holds 9 view(s) x "
        "1437 images = 12933: no fewer"
    )
    assert (on.use, on.views_needed, on.views_cached) == (True, 10 * 1437, 9 * 1437)
    config.data.augment = "none"
    assert (decision(config, 2).use, decision(config, 1).use) == (True, False)
    config.kd.cache_limit_gb = 1e-6  # 1437 x 1 x 10 x 2 B = 28.7 kB: above 1 kB
    assert decision(config, 2).reason.endswith("but it would take 0.0 MB, above kd.cache_limit_gb")
    config.kd.cache_limit_gb = 8.0
    assert decision(config, 2, features_read=True).reason == (
        "a loss reads the teacher's features, which the cache does not hold"
    )
    assert decision(config, 2, world_size=2).reason == "the cache runs in one process"
    assert decision(config, 2, teacher_read=False) is None  # no teacher logits read: nothing to decide
    for setting in (True, False):
        config.kd.cache = setting
        assert decision(config, 1).use is setting and decision(config, 100).use is setting


def test_the_decision_is_printed_once_and_recorded(tmp_path, teacher, capsys):
    """A 2-epoch distillation without augmentation: 2 passes x 1437 against 1 view x 1437: on; with
    digits' crops (9 views) off. Each run says so in one line and keeps it in config.yaml."""
    plain = make_config(tmp_path / "plain", teacher=teacher, loss="kl", alpha=0.9, tau=4.0)
    plain.data.augment, plain.optim.epochs = "none", 2
    cropped = make_config(tmp_path / "cropped", teacher=teacher, loss="kl", alpha=0.9, tau=4.0)
    for config, used in ((plain, True), (cropped, False)):
        summary = train(config)
        lines = [line for line in capsys.readouterr().out.splitlines() if "kd.cache: auto" in line]
        assert len(lines) == 1 and lines[0].startswith(
            f"teacher-logit cache (kd.cache: auto): {'on' if used else 'off'}: "
        )
        assert (summary["inputs"]["cache"] is not None) is used
        record = yaml.safe_load((tmp_path / config.out / "config.yaml").read_text())["run_info"]["kd_cache"]
        views = 1 if used else 9
        assert record == {
            "setting": "auto",
            "used": used,
            "views_needed": 2 * 1437,
            "views_cached": views * 1437,
            "reason": record["reason"],
        }
        assert lines == [
            f"teacher-logit cache (kd.cache: auto): {'on' if used else 'off'}: {record['reason']}"
        ]


def test_a_resumed_run_keeps_the_cache_decision_it_started_with(tmp_path, teacher, capsys):
    """1 epoch without augmentation: 1 pass against 1 view, off. Extended to 3 epochs by --resume, a
    fresh plan would say on (3 passes); the run keeps reading the live teacher, as it started, and
    ends bitwise as a 3-epoch run with kd.cache=false."""
    config = make_config(tmp_path / "run", teacher=teacher, loss="kl", alpha=0.9, tau=4.0)
    config.data.augment, config.optim.epochs = "none", 1
    train(config)
    capsys.readouterr()
    config.optim.epochs = 3
    summary = train(config, resume=True)
    line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher-logit cache")
    )
    assert line.startswith(
        f"teacher-logit cache (kd.cache: auto): off: kept from the start of {config.out} (its record: off); the "
        "plan now would say on: the live teacher would compute 3 pass(es) x 1437 images"
    )
    assert summary["inputs"]["cache"] is None
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run_info"]["kd_cache"]
    assert record["used"] is False and record["reason"].startswith("kept from the start")
    live = make_config(tmp_path / "live", teacher=teacher, loss="kl", alpha=0.9, tau=4.0)
    live.data.augment, live.optim.epochs, live.kd.cache = "none", 3, False
    train(live)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    alone = torch.load(tmp_path / "live" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[key], alone[key]) for key in alone)


def test_a_sweep_counts_the_teacher_passes_of_all_its_groups(tmp_path):
    """Two seeds of three students sharing a teacher: 2 lockstep groups x 3 epochs = 6 passes (also
    for --no-lockstep, so that both decide alike); another teacher's students are counted apart."""

    def planned(name: str, seed: int, teacher: str) -> PlannedRun:
        config = make_config(tmp_path / name, teacher=teacher, loss="kl")
        config.seed, config.optim.epochs = seed, 3
        return PlannedRun(name, config)

    runs = [planned(f"s{seed}-{i}", seed, "t") for seed in (0, 1) for i in range(3)] + [planned("u", 0, "u")]
    assert sorted(teacher_passes(runs).values()) == [3, 6]


def test_kd_cache_takes_auto_true_or_false():
    assert [build_config(overrides=[f"kd.cache={v}"]).kd.cache for v in ("auto", "true", "off")] == [
        "auto",
        True,
        False,
    ]
    with pytest.raises(UserError, match=r"^kd.cache='sometimes' is invalid: choose auto, true or false$"):
        build_config(overrides=["kd.cache=sometimes"])


# -- device names ---------------------------------------------------------------------------------


def test_a_cuda_device_is_named_with_its_index_and_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert [kdlab.device.resolve_device(name) for name in ("cuda", "auto", "cuda:1")] == [
        torch.device("cuda", 0),
        torch.device("cuda", 0),
        torch.device("cuda", 1),
    ]
    with pytest.raises(
        UserError, match=r"^--device cuda:2 names GPU 2, but this machine has 2 \(cuda:0 to cuda:1\): "
    ):
        kdlab.device.resolve_device("cuda:2")
