"""The paper's pre-activation Wide-ResNet, ``wrn-{depth}-{width}``.

Layer for layer the network of Kim et al. (2021)'s code, itself xternalz/WideResNet-pytorch
(via clovaai/overhaul-distillation), without dropout; pooling is adaptive so any input size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import UserError
from kdlab.models.base import MODELS, Classifier, he_init, parameter_count, require_positive, stack_groups


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``.

    When the shape changes, the 1x1 shortcut conv sees the block's first BN-ReLU output rather than
    the raw input, exactly as in the reference code (its ``equalInOut`` branch).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            None
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(Classifier):
    """Pre-activation WRN: stem conv to 16 channels, three groups of (depth-4)/6 blocks with
    widths 16w, 32w, 64w (strides 1, 2, 2), final BN-ReLU, global average pool -> ``[B, 64w]``."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UserError(
                f"wrn depth {depth} is invalid: depth must be 6n+4 (10, 16, 22, 28, 40, ...), e.g. wrn-16-2"
            )
        require_positive(f"wrn-{depth}-{width}", "width", width)
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.blocks = stack_groups(PreActBlock, channels, blocks_per_group)
        self.bn = nn.BatchNorm2d(channels[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[3], num_classes)
        he_init(self, zero_linear_bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, 64 * width]``."""
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(self.pool(out), 1)


def wrn_parameters(depth: int, width: int, num_classes: int, in_channels: int = 3, **_: object) -> int | None:
    """Stem ``9 C 16``; per block from ``i`` to ``o`` channels two BatchNorms ``2 i + 2 o``, two convs
    ``9 i o + 9 o^2`` and, when ``i != o``, the 1x1 shortcut ``i o``; final BatchNorm ``2 (64w)``,
    linear ``64w K + K``. None for a depth or width the factory refuses."""
    if depth < 10 or (depth - 4) % 6 or width < 1:
        return None
    blocks = (depth - 4) // 6
    channels = [16, 16 * width, 32 * width, 64 * width]
    total = 9 * in_channels * 16
    for inner, outer in zip(channels[:3], channels[1:], strict=True):
        first = (
            2 * inner
            + 2 * outer
            + 9 * inner * outer
            + 9 * outer**2
            + (inner * outer if inner != outer else 0)
        )
        total += first + (blocks - 1) * (4 * outer + 18 * outer**2)
    return total + 2 * channels[3] + (channels[3] + 1) * num_classes


@MODELS.register(
    "wrn-{depth}-{width}",
    examples=["wrn-16-2", "wrn-16-4", "wrn-16-6", "wrn-28-2", "wrn-28-4", "wrn-40-2", "wrn-40-4", "wrn-10-1"],
)
@parameter_count(wrn_parameters)
def wrn(depth: int, width: int, num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(depth, width, num_classes, in_channels)
