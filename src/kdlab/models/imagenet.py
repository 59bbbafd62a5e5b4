"""torchvision's ImageNet classifiers under their torchvision names, always randomly initialised."""

from __future__ import annotations

import functools

import torch
from torch import nn

from kdlab.models.base import MODELS, Classifier

# Each of these ends in a single nn.Linear that maps the pooled feature vector to the logits.
TORCHVISION_NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
]


def _last(model: nn.Module, kind: type[nn.Module]) -> str:
    return [name for name, module in model.named_modules() if isinstance(module, kind)][-1]


class TorchvisionClassifier(Classifier):
    """A torchvision model split at its final linear layer.

    ``body`` is the torchvision model with that layer replaced by ``nn.Identity``, so it returns the
    pooled (and, where torchvision has it, dropout-ed) penultimate vector ``[B, D]``; ``classifier``
    is the removed layer, so ``forward`` computes what torchvision's model would.
    """

    def __init__(self, name: str, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        import torchvision.models  # imported here: it takes seconds, and most runs never need it

        # weights=None: never download; every kdlab model starts from random weights.
        body = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            first = _first_conv(body)
            old = body.get_submodule(first)
            new = nn.Conv2d(
                in_channels,
                old.out_channels,
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=old.bias is not None,
            )
            # torchvision initialises its convs this way; keep the replacement consistent.
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            body.set_submodule(first, new)
        head = _last(body, nn.Linear)
        self.classifier = body.get_submodule(head)
        body.set_submodule(head, nn.Identity())
        self.body = body

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, D]`` (D = 512 for resnet18, 1024 for mobilenet_v3_small, ...)."""
        return self.body(x)


def _first_conv(model: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def _build(name: str, num_classes: int, in_channels: int = 3) -> TorchvisionClassifier:
    return TorchvisionClassifier(name, num_classes, in_channels)


for _name in TORCHVISION_NAMES:
    MODELS.register(_name)(functools.partial(_build, _name))
