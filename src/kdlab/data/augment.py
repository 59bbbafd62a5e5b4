"""Random crop + horizontal flip on uint8 image tensors, batched, on any device; augmentation modes.

The random draws (:class:`AugParams`) are kept apart from applying them, so that the exact view of
each sample (image index, dy, dx, flip) can be recorded, replayed, or used as a cache key.
``data.augment`` picks a mode (:data:`AUGMENT_MODES`, the official code's ``--mode``): none, flip,
crop, crop+flip, or AutoAugment (torchvision.transforms.v2 on the uint8 tensors, on their device).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugParams:
    """Per-sample augmentation of a batch: crop offsets into the padded image and flips.

    ``dy``/``dx`` int64 ``[B]`` in ``0..2*pad`` (``pad`` means no shift), ``flip`` bool ``[B]``.
    """

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return len(self.flip)

    def __getitem__(self, index: torch.Tensor | slice) -> AugParams:
        """The params of the samples at ``index`` (a slice or an index tensor)."""
        return AugParams(self.dy[index], self.dx[index], self.flip[index])


def sample_augmentation(n: int, pad: int, flip: bool, generator: torch.Generator) -> AugParams:
    """Draw crop offsets uniformly in ``0..2*pad`` and flips with probability 1/2 for ``n`` samples.

    Drawn on the CPU from ``generator`` (dy, then dx, then flip), so the same generator state gives
    the same params on every device; disabled parts are zeros/False and draw nothing.
    """
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return AugParams(dy, dx, flips)


def apply_augmentation(images: torch.Tensor, params: AugParams, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad``, take the HxW crop at ``(dy, dx)``, then mirror where ``flip``.

    ``images`` uint8 (or any dtype) ``[B, C, H, W]`` on any device -> same dtype ``[B, C, H, W]``.
    Equals torchvision's ``RandomCrop(size, padding=pad)`` then ``RandomHorizontalFlip`` for the same
    draws. One gather over the flattened padded images: output pixel ``(b, c, i, j)`` reads padded
    pixel ``(b, c, dy_b + i, dx_b + j')`` with ``j' = W - 1 - j`` where flipped, else ``j``.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    padded_width = width + 2 * pad
    dy, dx, flip = (t.to(device, non_blocking=True) for t in (params.dy, params.dx, params.flip))
    rows = dy[:, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device)
    columns = dx[:, None] + torch.where(flip[:, None], width - 1 - columns, columns)  # [B, W]
    flat_index = (rows[:, :, None] * padded_width + columns[:, None, :]).reshape(batch, 1, height * width)
    gathered = padded.reshape(batch, channels, -1).gather(2, flat_index.expand(batch, channels, -1))
    return gathered.reshape(batch, channels, height, width)


# --- augmentation modes (the official code's --mode) -----------------------------------------------

AUGMENT_MODES = ("default", "none", "flip", "crop", "crop+flip", "autoaugment")
_LEGACY = {"true": "default", "on": "default", "false": "none", "off": "none"}  # data.augment was a bool


def augment_mode(value: str | bool) -> str:
    """``data.augment`` as one of ``AUGMENT_MODES``; ``true``/``false`` (the old bool) mean default/none.

    ``default`` is the dataset's own crop/flip (CIFAR: 4-pixel crop + flip, the official ``--mode
    crop``; digits and SVHN: crop only); ``crop`` is the padded random crop alone; ``autoaugment`` is
    crop + flip followed by AutoAugment's CIFAR-10 policy.
    """
    from kdlab.errors import UserError, did_you_mean

    text = ("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower()
    mode = _LEGACY.get(text, text)
    if mode not in AUGMENT_MODES:
        raise UserError(
            f"data.augment={value!r} is not an augmentation mode{did_you_mean(text, AUGMENT_MODES)}: "
            f"choose one of {', '.join(AUGMENT_MODES)}"
        )
    return mode


def augment_settings(mode: str, pad: int, flip: bool) -> tuple[int, bool, bool]:
    """``(pad, flip, autoaugment)`` of ``mode`` for a dataset whose own augmentation is ``(pad, flip)``."""
    settings = {
        "default": (pad, flip, False),
        "none": (0, False, False),
        "flip": (0, True, False),
        "crop": (pad, False, False),
        "crop+flip": (pad, True, False),
        "autoaugment": (pad, True, True),
    }
    return settings[augment_mode(mode)]


@functools.cache
def _cifar10_policy() -> torch.nn.Module:
    from torchvision.transforms import v2

    # Grey fill for the geometric operations, as the CIFAR-10 policy of the official code's transforms.
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=128)


def apply_autoaugment(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy (torchvision.transforms.v2) on uint8 ``[B, C, H, W]``, on the images'
    device: one sub-policy drawn *per sample* from ``seeds[b]`` (int64 ``[B]``, CPU), so a sample's
    augmentation depends on its seed only. Per sample rather than one draw per batch, as a Dataset
    transform would do; the cost is B small calls per batch.
    """
    policy = _cifar10_policy()
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):  # the policy draws from torch's global CPU generator
        for index, seed in enumerate(seeds.tolist()):
            torch.manual_seed(seed)
            out[index] = policy(images[index])
    return out
