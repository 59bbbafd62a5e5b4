"""Small fast nets for 28x28 single-channel images (Fashion-MNIST, MNIST, 8x8 digits): ``convnet-{width}``
and ``mlp-{hidden}``."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.models.base import MODELS, Classifier, he_init, parameter_count, require_positive


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class ConvNet(Classifier):
    """Three conv3x3-BN-ReLU stages (w, 2w, 4w channels, 2x2 max-pool after the first two), global
    average pool -> ``[B, 4w]``. Works for any input of at least 4x4 (28x28, 8x8, 32x32, ...)."""

    def __init__(self, width: int, num_classes: int, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels)
        require_positive(f"convnet-{width}", "width", width)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)
        he_init(self, zero_linear_bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, 4 * width]``."""
        return self.features(x)


class MLP(Classifier):
    """Flatten -> Linear(hidden)-ReLU-Linear(hidden)-ReLU -> ``[B, hidden]``.

    The first layer's size depends on the image, so the model is built for ``image_size`` x
    ``image_size`` inputs (default 28; pass ``image_size=8`` for the 8x8 digits). We chose this over
    ``nn.LazyLinear`` so that parameter counts, optimizers, checkpoints and ``torch.compile`` behave
    exactly as for every other model; an input of the wrong size is a one-line UserError.
    """

    def __init__(self, hidden: int, num_classes: int, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__(num_classes, in_channels)
        require_positive(f"mlp-{hidden}", "hidden", hidden)
        require_positive(f"mlp-{hidden}", "image_size", image_size)
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, image_size, image_size] -> [B, hidden]``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise UserError(
                f"mlp was built for inputs of shape {list(expected)} but got {list(x.shape[1:])}: "
                f"pass image_size={x.shape[-1]} and in_channels={x.shape[1]} to create_model"
            )
        return self.features(x)


def convnet_parameters(width: int, num_classes: int, in_channels: int = 1, **_: object) -> int:
    """Convs ``9 C w + 9 (w)(2w) + 9 (2w)(4w)``, BatchNorms ``2 (w + 2w + 4w)``, linear ``4w K + K``."""
    return 9 * in_channels * width + 90 * width**2 + 14 * width + 4 * width * num_classes + num_classes


def mlp_parameters(
    hidden: int, num_classes: int, in_channels: int = 1, image_size: int = 28, **_: object
) -> int:
    """Linear layers ``C S^2 -> h -> h -> K``, each with a bias."""
    return (in_channels * image_size**2 + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * num_classes


@MODELS.register(
    "convnet-{width}", examples=["convnet-4", "convnet-8", "convnet-16", "convnet-32", "convnet-64"]
)
@parameter_count(convnet_parameters)
def convnet(width: int, num_classes: int, in_channels: int = 1) -> ConvNet:
    return ConvNet(width, num_classes, in_channels)


@MODELS.register("mlp-{hidden}", examples=["mlp-64", "mlp-256"])
@parameter_count(mlp_parameters)
def mlp(hidden: int, num_classes: int, in_channels: int = 1, image_size: int = 28) -> MLP:
    return MLP(hidden, num_classes, in_channels, image_size)
