"""CIFAR ResNets as in the CRD/RepDistiller codebase: resnet20/32/56/110, resnet8x4, resnet32x4."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models.base import MODELS, Classifier, he_init, stack_groups

Channels = tuple[int, int, int, int]  # stem, group 1, group 2, group 3


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``.

    The shortcut is a 1x1 conv + BN when the shape changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    """Stem conv3x3-BN-ReLU to ``channels[0]``, three groups of (depth-2)/6 blocks with
    ``channels[1:]`` (strides 1, 2, 2), global average pool -> ``[B, channels[3]]``."""

    def __init__(self, depth: int, channels: Channels, num_classes: int, in_channels: int = 3):
        super().__init__(num_classes, in_channels)
        blocks_per_group = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        )
        self.blocks = stack_groups(BasicBlock, channels, blocks_per_group)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[3], num_classes)
        # RepDistiller leaves the linear layer at PyTorch's default init.
        he_init(self, zero_linear_bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, channels[3]]``."""
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


_CIFAR_RESNETS: dict[str, tuple[int, Channels]] = {
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _build(depth: int, channels: Channels, num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(depth, channels, num_classes, in_channels)


for _name, (_depth, _channels) in _CIFAR_RESNETS.items():
    MODELS.register(_name)(functools.partial(_build, _depth, _channels))
