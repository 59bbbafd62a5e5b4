"""What every kdlab model shares: the model registry, the classifier interface and He initialisation.

Kept apart from ``__init__`` so the model files can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.registry import Registry

F = TypeVar("F", bound=Callable[..., nn.Module])

MODELS: Registry[nn.Module] = Registry("model")

# Stated limits on what a model name, a checkpoint or a dataset may ask create_model to build; checked
# before anything is allocated. 2^31 parameters is 8 GiB of float32 weights, 17x the largest model
# kdlab ships (wide_resnet101_2, 127M); 100,000 classes is 4.6x ImageNet-21k's.
MAX_PARAMETERS = 2**31
MAX_CLASSES = 100_000
MAX_SAMPLE_VALUES = 2**28  # values of one input sample (C x H x W): a 3 x 4096 x 4096 image is 2^25.6


def parameter_count(count: Callable[..., int | None]) -> Callable[[F], F]:
    """Declare a registered factory's parameter count as a closed form of its name's fields and data
    keywords (``count(**fields, num_classes=..., in_channels=..., ...)``; None when the fields are
    invalid, which the factory then reports). :func:`kdlab.models.create_model` evaluates it before
    calling the factory, so ``wrn-10000-1000`` is refused without allocating; ``tests/test_bounds.py``
    checks each form against the built model's ``count_parameters``."""

    def decorator(factory: F) -> F:
        factory.parameter_count = count  # type: ignore[attr-defined]
        return factory

    return decorator


class Classifier(nn.Module):
    """Base of every registered model: ``forward(x) == classifier(forward_features(x))`` exactly.

    Subclasses set ``self.classifier`` (the final ``nn.Linear``) and implement
    ``forward_features``: images ``[B, in_channels, H, W]`` -> pooled penultimate vector ``[B, D]``.
    Analysis code relies only on this interface, never on a model's internals.
    """

    classifier: nn.Linear

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.classifier(self.forward_features(x))


def stack_groups(
    block: Callable[[int, int, int], nn.Module], channels: list[int], blocks_per_group: int
) -> nn.Sequential:
    """The three stages of a CIFAR ResNet/WRN: ``blocks_per_group`` blocks per stage, widths
    ``channels[1:]``, strides 1, 2, 2 on each stage's first block; ``block(in, out, stride)``."""
    layers: list[nn.Module] = []
    for group, stride in enumerate((1, 2, 2)):
        for i in range(blocks_per_group):
            block_in = channels[group] if i == 0 else channels[group + 1]
            layers.append(block(block_in, channels[group + 1], stride if i == 0 else 1))
    return nn.Sequential(*layers)


def he_init(model: nn.Module, zero_linear_bias: bool) -> None:
    """Conv weights ~ N(0, 2 / (k*k*out_channels)) (He, fan-out), BatchNorm weight 1 and bias 0.

    This is both the WRN code's explicit ``normal_(0, sqrt(2/n))`` and RepDistiller's
    ``kaiming_normal_(mode="fan_out")``; only the WRN code also zeroes the linear bias.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and zero_linear_bias:
            nn.init.zeros_(module.bias)


def require_positive(name: str, field: str, value: int) -> None:
    """UserError for a pattern field such as the width in ``wrn-16-0``."""
    if value < 1:
        raise UserError(f"{name}: {field} {value} is invalid: {field} must be a positive integer")
