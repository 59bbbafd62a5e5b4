"""An exact teacher-logit cache: the frozen teacher's logits for every (image, crop offset, flip).

With padding ``p`` and flips, in-memory augmentation has ``V = (2p + 1)^2 * 2`` possible views of
each image (50 for Fashion-MNIST, p = 2; 162 for CIFAR, p = 4); inputs that are not uint8 images
(the ``tensors`` dataset's features or token ids) are never augmented: one view each. The teacher is frozen, so its logits
for all ``N * V`` views can be computed once (batched, inference mode, on the training device, with
the same autocast as the live teacher) and then looked up by ``(batch.indices, batch.aug)`` instead of
running the teacher: every student of every seed reads the same file.

Storage is float16, in a ``.npy`` file that is memory-mapped, shape ``[N, V, K]``; view ``v`` of a
crop at ``(dy, dx)`` with flip ``f`` is ``(dy * (2p + 1) + dx) * F + f`` (``F`` = 2 with flips, else 1).
Why float16 rather than bfloat16: it keeps 11 significant bits against bfloat16's 8, so its rounding
error is 8x smaller (relative 2^-11 ~ 4.9e-4), and its range (|z| <= 65504) is far beyond any
classifier's logits; the build refuses teacher logits outside it. When the teacher itself runs under
bfloat16 autocast (`amp: bf16`), its logits are bfloat16 values, which float16 holds exactly
for ``6.1e-5 <= |z| <= 65504``: there the cache is bitwise the live teacher.

The file lives in ``kd.cache_dir`` (default ``$KDLAB_CACHE_DIR/teacher-logits``) under a name
derived from everything the logits depend on: the teacher's weights and architecture, the training
images' bytes (so dataset, subset and data folder), normalisation, ``pad``/``flip``, precision,
memory format, compilation, device type and torch version. The build prints the size first and
refuses above ``kd.cache_limit_gb``; it writes to a temporary file renamed into place, so an
interrupted build leaves nothing behind: SIGTERM or Ctrl-C during the build removes the temporary
file and stops with :class:`~kdlab.errors.RunInterrupted`; the temporary file of a build killed
outright (``kill -9``) is removed by the next open of the cache folder. A build holds an ``flock``
on its temporary file, so that only files no process is building are ever removed.
interrupted build leaves nothing behind. Beside it, ``NAME.json`` records what it was built from (the
key above) and the sha256 of its bytes; every open checks both (:func:`check_cache_record`), so a
file of the right shape but other content is refused, never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdlab.data import AugParams, apply_augmentation, cache_dir
from kdlab.data.loader import TensorLoader
from kdlab.device import uses_bf16
from kdlab.errors import RunInterrupted, UserError
from kdlab.identity import hash_tensors, short
from kdlab.runs import OutputFolder, check_regular, file_sha256, read_regular

try:
    import fcntl
except ImportError:  # Windows: no locks, so no clean-up of other builds' temporary files either
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = "kdlab-teacher-logits-v1"
STORAGE_DTYPE = np.float16
FLOAT16_MAX = 65504.0
GPU_BUILD_BATCH = 1024  # images per teacher forward when building on a GPU: large batches keep it busy
# The temporary file of a build (tempfile.mkstemp in _build): ".NAME-KEY.npy.XXXXXXXX.tmp".
_BUILD_TEMPORARY = re.compile(r"\.[^/]+-[0-9a-f]{20}\.npy\.[A-Za-z0-9_]{8}\.tmp")


@dataclass(frozen=True)
class ViewGrid:
    """The finite augmentation space: crops at ``(dy, dx)`` in ``0..2*pad`` squared, times flips."""

    pad: int
    flip: bool

    @property
    def side(self) -> int:
        return 2 * self.pad + 1

    @property
    def flips(self) -> int:
        return 2 if self.flip else 1

    @property
    def num_views(self) -> int:
        """``V = (2p + 1)^2 * F``."""
        return self.side * self.side * self.flips

    def view_index(
        self, aug: AugParams | None, batch_size: int, device: torch.device | None = None
    ) -> Tensor:
        """int64 ``[B]``: ``(dy * (2p + 1) + dx) * F + flip``, where ``aug`` is; no augmentation is the
        centre crop unflipped (on ``device``, default the CPU)."""
        if aug is None:
            return torch.full(
                (batch_size,),
                (self.pad * self.side + self.pad) * self.flips,
                dtype=torch.int64,
                device=device,
            )
        return (aug.dy * self.side + aug.dx) * self.flips + aug.flip.long()

    def views(self) -> list[tuple[int, int, bool]]:
        """Every ``(dy, dx, flip)`` in view-index order."""
        return [
            (dy, dx, bool(flip))
            for dy in range(self.side)
            for dx in range(self.side)
            for flip in range(self.flips)
        ]


def cache_size_bytes(num_images: int, grid: ViewGrid, num_classes: int) -> int:
    """``N * V * K * 2`` bytes (float16)."""
    return num_images * grid.num_views * num_classes * np.dtype(STORAGE_DTYPE).itemsize


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's architecture (its repr) and every tensor of its state_dict."""
    module = getattr(module, "_orig_mod", module)  # a torch.compile wrapper: hash what it wraps
    digest = hashlib.sha256(repr(module).encode())
    hash_tensors(digest, module.state_dict())
    return digest.hexdigest()


class TeacherLogitCache:
    """Cached teacher logits, ``table`` float16 ``[N, V, K]`` (a memory map, or a copy on a GPU)."""

    def __init__(self, table: Tensor, grid: ViewGrid, path: Path, device: torch.device) -> None:
        self.table, self.grid, self.path, self.device = table, grid, path, device
        self.identity: dict[str, Any] | None = None  # file, key, sha256: recorded by the runs that read it
        self.flat = table.reshape(-1, table.shape[-1])  # row i * V + v

    def lookup(self, indices: Tensor, aug: AugParams | None) -> Tensor:
        """float32 ``[B, K]`` on the device: the teacher's logits for images ``indices`` seen through ``aug``.

        ``indices`` int64 ``[B]`` are positions in the training split (``Batch.indices``); ``aug`` the
        batch's crop/flip draws (``None``: the unaugmented image).
        """
        return self.gather(self.rows(indices, aug))

    def rows(self, indices: Tensor, aug: AugParams | None) -> Tensor:
        """int64 ``[B]``: the table rows ``index * V + view`` of a batch, where the table is.

        A training batch of an in-memory split has its indices and draws on the device already
        (``Batch.device_indices``, ``Batch.aug``: uploaded once per epoch), so its rows are computed
        there, with no copy; other callers' CPU indices are computed on the CPU and copied from
        pinned memory without waiting. The training step receives the rows as an input (a captured
        CUDA graph then gathers whatever rows its static buffer holds).
        """
        device = self.flat.device
        if indices.device == device and (aug is None or aug.dy.device == device):
            return indices * self.grid.num_views + self.grid.view_index(aug, len(indices), device)
        if aug is not None:
            aug = AugParams(aug.dy.cpu(), aug.dx.cpu(), aug.flip.cpu())
        rows = indices.cpu() * self.grid.num_views + self.grid.view_index(aug, len(indices))
        if self.flat.is_cuda:
            rows = rows.pin_memory().to(device, non_blocking=True)
        return rows

    def gather(self, rows: Tensor) -> Tensor:
        """float32 ``[B, K]`` on the training device: the logits of table ``rows`` (from :meth:`rows`)."""
        return self.flat.index_select(0, rows).to(self.device, non_blocking=True).float()


def _inputs(images: Tensor, grid: ViewGrid, dy: int, dx: int, flip: bool, loader: TensorLoader) -> Tensor:
    """One view of ``images`` (uint8 ``[B, C, H, W]``), normalised by the loader's own ``prepare``."""
    count = len(images)
    aug = AugParams(
        torch.full((count,), dy, dtype=torch.int64),
        torch.full((count,), dx, dtype=torch.int64),
        torch.full((count,), flip, dtype=torch.bool),
    )
    viewed = apply_augmentation(images, aug, grid.pad) if grid.pad > 0 or grid.flip else images
    return loader.prepare(viewed)


def _build(
    path: Path,
    images: Tensor,
    grid: ViewGrid,
    num_classes: int,
    teacher_fn: Callable[[Tensor], Tensor],
    loader: TensorLoader,
    batch_size: int,
    progress: bool,
) -> None:
    """Fill ``path`` with the teacher's logits of every view, written block by block (``[c, V, K]``).

    SIGTERM and SIGINT are looked at between blocks (as the training loop does between steps): the
    temporary file is removed and :class:`RunInterrupted` raised. Its flock, held until the end,
    tells :func:`remove_stale_temporaries` of another process that this build is alive.
    """
    from kdlab.device import World
    from kdlab.engine.stop import StopRequests  # here: kdlab.engine imports this module

    shape = (len(images), grid.num_views, num_classes)
    stop = StopRequests(World(), torch.device("cpu"))
    with stop.listening():
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)  # a new file: nobody else holds it
            _fill(temporary, shape, images, grid, teacher_fn, loader, batch_size, progress, stop)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        finally:
            os.close(handle)  # releases the flock, after the file is renamed or removed
    if stop.signum is not None:  # it came during the last block: the cache is complete, the stop kept
        raise RunInterrupted(
            f"stopped by {signal.Signals(stop.signum).name} as the teacher-logit cache was finished (kept in "
            f"{path}): run the same command again to train",
            stop.signum,
        )


def _fill(
    temporary: str,
    shape: tuple[int, int, int],
    images: Tensor,
    grid: ViewGrid,
    teacher_fn: Callable[[Tensor], Tensor],
    loader: TensorLoader,
    batch_size: int,
    progress: bool,
    stop: Any,
) -> None:
    """Write the ``[N, V, K]`` table into ``temporary``, block by block; :class:`RunInterrupted` when
    ``stop`` has received a signal (looked at before each block)."""
    table = np.lib.format.open_memmap(temporary, mode="w+", dtype=STORAGE_DTYPE, shape=shape)
    try:
        views = grid.views()
        starts = range(0, len(images), batch_size)
        for start in tqdm(
            starts, desc="teacher-logit cache", unit="block", disable=None if progress else True
        ):
            if stop.signum is not None:
                raise RunInterrupted(
                    f"stopped by {signal.Signals(stop.signum).name} while building the teacher-logit cache; "
                    "its partial file was removed: run the same command again to build it",
                    stop.signum,
                )
            # Gathered by an index tensor, as TensorLoader does: the batch then has the loader's strides,
            # which decide the convolution kernel and so the last bit of the logits.
            chunk = images[torch.arange(start, min(start + batch_size, len(images)), device=images.device)]
            block = torch.stack(
                [teacher_fn(_inputs(chunk, grid, dy, dx, flip, loader)) for dy, dx, flip in views], dim=1
            )  # [c, V, K] float32
            peak = block.abs().max().item()  # a sync per block: building, not training
            if not peak <= FLOAT16_MAX:  # also catches NaN
                raise UserError(
                    f"the teacher's logits reach {peak:g}, outside float16's range (65504): they cannot be "
                    "cached exactly; drop kd.cache and run the live teacher"
                )
            table[start : start + len(chunk)] = block.to(torch.float16).cpu().numpy()
        table.flush()
    finally:
        del table  # unmapped before the file is renamed or removed


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files of builds that were killed outright (``kill -9``) from ``folder``:
    names of the form ``_build`` makes, regular files only, and only when no process holds their
    flock (a live build holds it from the moment its file is made). Returns the removed paths."""
    removed: list[Path] = []
    if fcntl is None or not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not _BUILD_TEMPORARY.fullmatch(entry.name):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, a link, or not ours to read
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a build in progress
            with contextlib.suppress(OSError):  # still the file we locked: remove it under the lock
                if os.path.samestat(os.fstat(fd), entry.lstat()):
                    entry.unlink()
                    removed.append(entry)
        finally:
            os.close(fd)
    return removed


def _clean_stale_temporaries(folder: Path) -> None:
    for stale in remove_stale_temporaries(folder):
        print(f"teacher-logit cache: removed {stale.name}, left by a build that was killed")


def view_grid(loader: TensorLoader) -> ViewGrid:
    """The views of a training loader's images: its crops and flips (one view when not augmented)."""
    return ViewGrid(loader.pad, loader.flip) if loader.augment else ViewGrid(0, False)


def cache_folder(config: Any) -> Path:
    """``kd.cache_dir``, or ``$KDLAB_CACHE_DIR/teacher-logits``."""
    return Path(config.kd.cache_dir).expanduser() if config.kd.cache_dir else cache_dir() / "teacher-logits"


@dataclass(frozen=True)
class CacheDecision:
    """Whether a group reads its teacher's logits from the cache, and why (``kd.cache: auto``).

    ``views_needed``: the teacher forwards of images a live teacher would compute, ``passes x N``
    (a pass: one epoch of one group that shares the teacher); ``views_cached``: what the cache
    holds and costs to build, ``V x N``. None where the decision did not get that far.
    """

    use: bool
    reason: str
    views_needed: int | None = None
    views_cached: int | None = None

    def record(self, setting: Any) -> dict[str, Any]:
        """What the run's record keeps of it (``config.yaml``'s ``run_info.kd_cache``)."""
        return {
            "setting": setting,
            "used": self.use,
            "views_needed": self.views_needed,
            "views_cached": self.views_cached,
            "reason": self.reason,
        }


def decide_cache(
    config: Any,
    loader: Any,
    num_classes: int,
    teacher_read: bool,
    features_read: bool,
    world_size: int,
    passes: int,
) -> CacheDecision | None:
    """Whether the group of ``config`` (the lead) uses the teacher-logit cache; None when no student
    of it reads the teacher's logits (nothing to decide).

    ``kd.cache: true`` / ``false``: as set (a cache that cannot be built is then a UserError, when
    it is opened). ``auto``: on exactly when a live teacher would compute more views than the cache
    holds, ``passes x N > V x N``, i.e. ``passes > V``: ``passes`` is how many times the teacher
    would go over the N training images (each epoch of each group that reads this teacher and
    these images: a single run's epochs; a sweep's total over its lockstep groups and seeds), ``V``
    the views per image (``(2p + 1)^2 x F`` crops and flips; 1 without augmentation). Every epoch
    draws new random views, so a live teacher never reuses one; the cache computes each view once,
    as ``V`` teacher passes of inference. ``auto`` is off, whatever the counts, where the cache
    cannot serve: a loss that reads the teacher's features, a dataset not held in memory (random
    resized crops have no finite set of views), AutoAugment, several processes, a cache above
    ``kd.cache_limit_gb`` or above the free space of ``kd.cache_dir``.

    The decision depends on the plan only, never on whether the cache file already exists: the
    same command makes the same decision, and so trains on the same teacher logits.
    """
    setting = config.kd.cache
    if not teacher_read:
        return None
    if setting != "auto":  # true or false (RunConfig.validate accepts nothing else)
        return CacheDecision(bool(setting), f"kd.cache: {'true' if setting else 'false'}")
    off = None
    if features_read:
        off = "a loss reads the teacher's features, which the cache does not hold"
    elif not isinstance(loader, TensorLoader):
        off = (
            f"{config.data.name} is not held in memory (its random resized crops have no finite set of views)"
        )
    elif loader.autoaugment:
        off = "AutoAugment's views are not a finite set"
    elif world_size > 1:
        off = "the cache runs in one process"
    if off is not None:
        return CacheDecision(False, off)
    grid, images = view_grid(loader), len(loader.data)
    needed, cached = passes * images, grid.num_views * images
    counts = (
        f"the live teacher would compute {passes} pass(es) x {images} images = {needed} views, the cache "
        f"holds {grid.num_views} view(s) x {images} images = {cached}"
    )
    if needed <= cached:
        return CacheDecision(False, f"{counts}: no fewer", needed, cached)
    size = cache_size_bytes(images, grid, num_classes)
    if size > config.kd.cache_limit_gb * 1e9:
        return CacheDecision(
            False, f"{counts}, but it would take {_megabytes(size)}, above kd.cache_limit_gb", needed, cached
        )
    folder = cache_folder(config)
    existing = next((path for path in (folder, *folder.parents) if path.is_dir()), None)
    free = shutil.disk_usage(existing).free if existing is not None else 0
    if free < size:
        return CacheDecision(
            False,
            f"{counts}, but it needs {_megabytes(size)} and {folder} has {_megabytes(free)} free",
            needed,
            cached,
        )
    return CacheDecision(True, counts, needed, cached)


def open_logit_cache(
    config: Any,
    loader: Any,
    teacher: nn.Module,
    teacher_fn: Callable[[Tensor], Tensor],
    num_classes: int,
    device: torch.device,
    world_size: int = 1,
    batch_size: int = 256,
) -> TeacherLogitCache:
    """Open the cache for this teacher and training split, building it first when it does not exist.

    ``config`` is the lead :class:`~kdlab.config.RunConfig`; ``loader`` the training loader (its
    device-resident images, normalisation and crop/flip settings define the views); ``teacher_fn``
    maps normalised inputs to float32 logits exactly as the live teacher path does.
    """
    if not isinstance(loader, TensorLoader):
        raise UserError(
            f"kd.cache needs an in-memory dataset with crop/flip augmentation, not {config.data.name} (its "
            "random resized crops have no finite set of views): drop kd.cache"
        )
    if world_size > 1:
        raise UserError("kd.cache runs in one process only: drop kd.cache or train on one device")
    limit_gb = config.kd.cache_limit_gb
    if not limit_gb > 0:
        raise UserError(f"kd.cache_limit_gb={limit_gb} must be positive, e.g. 8")
    grid = view_grid(loader)
    images = loader.data.images
    key = {
        "format": CACHE_FORMAT,
        "teacher": module_fingerprint(teacher),
        "dataset": config.data.name,
        "subset": config.data.subset,
        "subset_seed": config.data.subset_seed,
        "images": hashlib.sha256(images.cpu().contiguous().numpy().tobytes()).hexdigest(),
        "num_images": len(images),
        "num_classes": num_classes,
        "mean": loader.mean.flatten().tolist() if loader.mean is not None else None,  # None: not images
        "std": loader.std.flatten().tolist() if loader.std is not None else None,
        "pad": grid.pad,
        "flip": grid.flip,
        "precision": "bf16" if uses_bf16(config.amp, device) else "fp32",
        "channels_last": config.channels_last,
        "compile": config.compile,
        "device": device.type,
        "torch": torch.__version__,
        "storage": np.dtype(STORAGE_DTYPE).name,
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_folder(config)
    path = folder / f"{config.data.name}-{name}.npy"
    size = cache_size_bytes(len(images), grid, num_classes)
    describe = (
        f"{len(images)} images x {grid.num_views} views ({grid.side}x{grid.side} crops x {grid.flips} "
        f"flips) x {num_classes} classes x 2 B = {_megabytes(size)}"
        if loader.mean is not None
        else f"{len(images)} samples (no views: not images) x {num_classes} classes x 2 B = {_megabytes(size)}"
    )
    record_path = path.with_suffix(".json")
    if path.is_symlink() and not path.exists():  # exists() follows the link: the build would replace it
        raise UserError(
            f"{path} is a symbolic link to nothing; kdlab writes the teacher-logit cache only as a regular file: "
            "remove the link, or choose another kd.cache_dir"
        )
    if path.exists():  # a FIFO or folder under the name is refused below, never replaced
        print(f"teacher-logit cache: reusing {path} ({describe})")
        digest = check_cache_record(path, record_path, key)
        _clean_stale_temporaries(folder)
    else:
        # The .json sidecar is written through the folder's manifest (kdlab.runs.OutputFolder; shared by
        # every build, so its lock is waited for): checked before the build, never over a file of yours.
        sidecar = OutputFolder(folder, "cache", flag="kd.cache_dir", wait=True)
        sidecar.check([path.with_suffix(".json").name])
        print(f"teacher-logit cache: {describe} -> {path}")
        if size > limit_gb * 1e9:
            raise UserError(
                f"the teacher-logit cache would take {_megabytes(size)}, above kd.cache_limit_gb={limit_gb:g}: "
                f"raise it (--set kd.cache_limit_gb={size / 1e9 * 1.1:.2g}) or drop kd.cache"
            )
        folder.mkdir(parents=True, exist_ok=True)
        _clean_stale_temporaries(folder)  # after every check, and before free space is measured
        free = shutil.disk_usage(folder).free
        if free < size:
            raise UserError(
                f"the teacher-logit cache needs {_megabytes(size)} but {folder} has {_megabytes(free)} free: "
                "free space, set kd.cache_dir elsewhere, or drop kd.cache"
            )
        start = time.perf_counter()
        if device.type != "cpu":
            batch_size = max(batch_size, GPU_BUILD_BATCH)
        _build(path, images, grid, num_classes, teacher_fn, loader, batch_size, config.progress)
        digest = file_sha256(path)  # of the bytes as built: checked at every later open
        sidecar.write_json(
            record_path.name,
            {
                **key,
                "shape": [len(images), grid.num_views, num_classes],
                "build_time_s": time.perf_counter() - start,
                "sha256": digest,
            },
        )
    check_regular(
        path, fix="delete it to rebuild the cache"
    )  # np.load of a memory map takes a path, not a file
    array = np.load(path, mmap_mode="c", allow_pickle=False)  # copy-on-write: the file is never modified
    expected = (len(images), grid.num_views, num_classes)
    if array.shape != expected or array.dtype != STORAGE_DTYPE:
        raise UserError(
            f"{path} holds {array.dtype} {list(array.shape)}, not float16 {list(expected)}: delete it to rebuild"
        )
    table = torch.from_numpy(array)
    if device.type != "cpu":  # a GPU gathers from its own memory; the CPU reads the map directly
        table = table.to(device)
    cache = TeacherLogitCache(table, grid, path, device)
    cache.identity = {"file": str(path.resolve()), "key": name, "sha256": digest}
    return cache


def check_cache_record(path: Path, record_path: Path, key: dict[str, Any]) -> str:
    """The sha256 of the cache file ``path``, checked against its build record ``record_path`` (the
    ``.json`` beside it): built from ``key`` (what the logits depend on) and unchanged since. A
    UserError naming the file and the fix (delete it: the next run builds it again) otherwise."""
    try:
        record = json.loads(read_regular(record_path, limit=1 << 20))
    except (OSError, ValueError, RecursionError):  # a FIFO or folder there: NotARegularFile, one line
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise UserError(
            f"{path} has no checksum in {record_path.name} (missing, damaged, or written by a kdlab before cache "
            "checksums), so kdlab cannot tell that it holds this teacher's logits: delete it (the next run "
            "builds it again)"
        )
    changed = next((field for field, value in key.items() if record.get(field) != value), None)
    if changed is not None:
        raise UserError(
            f"{path} was built from other inputs than its name says ({changed} {record.get(changed)!r:.40} in "
            f"{record_path.name}, {key[changed]!r:.40} now): delete it (the next run builds it again)"
        )
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise UserError(
            f"{path} changed after it was built (sha256 {short(record['sha256'])} at its build, {short(digest)} "
            "now): delete it (the next run builds it again)"
        )
    return digest
