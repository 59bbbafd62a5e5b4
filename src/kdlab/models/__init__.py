"""Model registry: ``create_model(name, num_classes, in_channels)`` for every network kdlab trains.

Every model returns logits ``[B, num_classes]`` from ``forward(x)``, the penultimate vector
``[B, D]`` from ``forward_features(x)``, and has ``classifier`` (the final ``nn.Linear``),
``num_classes`` and ``in_channels``. Importing this package registers all models.
"""

from __future__ import annotations

import inspect

from torch import nn

from kdlab.errors import UserError
from kdlab.models import imagenet, resnet_cifar, small, wrn  # noqa: F401  (registration side effects)
from kdlab.models.base import MODELS, Classifier

__all__ = ["MODELS", "Classifier", "count_parameters", "create_model", "list_models"]


def create_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None, **kwargs
) -> Classifier:
    """Build model ``name`` (``wrn-16-2``, ``resnet56``, ``convnet-8``, ``resnet18``...) with random weights.

    ``image_size`` (input height = width) reaches the models that need it (``mlp-*``) and is ignored
    by the others, so callers can always pass it. Extra keyword arguments go to the model's factory.
    Unknown names, bad pattern fields and bad sizes raise ``UserError``.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes={num_classes!r} is invalid: a classifier needs num_classes >= 2")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(
            f"in_channels={in_channels!r} is invalid: use 1 (grayscale), 3 (RGB) or another count >= 1"
        )
    raw_factory, fields = MODELS.resolve(name)
    if image_size is not None and "image_size" in inspect.signature(raw_factory).parameters:
        kwargs["image_size"] = image_size
    try:
        return raw_factory(**fields, num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as error:
        # An unexpected keyword is the user's mistake, not a bug: say so in one line.
        if "unexpected keyword" not in str(error):
            raise
        raise UserError(f"model '{name}' does not accept {sorted(kwargs)}: {error}") from None


def list_models() -> list[str]:
    """Names a user can type: exact names plus examples of each family (``wrn-{depth}-{width}``, ...)."""
    return MODELS.names()


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters, trainable or not (the convention of the papers' tables)."""
    return sum(parameter.numel() for parameter in model.parameters())
