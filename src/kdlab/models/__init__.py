"""Model registry: ``create_model(name, num_classes, ...)`` for every network kdlab trains.

A model is any ``nn.Module`` whose ``forward(x)`` returns logits ``[B, num_classes]``. Register a
factory with ``MODELS.register(name)``; :func:`create_model` passes it the keywords its signature
accepts among ``num_classes``, ``in_channels``, ``image_size`` and ``input_shape`` (the shape of one
input sample, a tuple). Penultimate features come from a forward hook (:mod:`kdlab.models.features`).

kdlab's own models are :class:`Classifier` subclasses: they also expose the penultimate vector
``[B, D]`` through ``forward_features(x)`` and the final ``nn.Linear`` as ``classifier`` (their fast
path for features), and ``num_classes``/``in_channels``. Importing this package registers them.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.models import imagenet, resnet_cifar, small, wrn  # noqa: F401  (registration side effects)
from kdlab.models.base import MODELS, Classifier

__all__ = ["MODELS", "Classifier", "check_logits", "count_parameters", "create_model", "list_models"]

# What create_model may tell a factory about the data, each only when the factory's signature takes it.
DATA_KEYWORDS = ("num_classes", "in_channels", "image_size", "input_shape")


def _accepted(factory: object, offered: dict[str, object]) -> dict[str, object]:
    """The entries of ``offered`` (None values dropped) that ``factory``'s signature accepts: all of
    them when it takes ``**kwargs`` or its signature cannot be read (a C function)."""
    given = {key: value for key, value in offered.items() if value is not None}
    try:
        parameters = inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return given
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return given
    return {key: value for key, value in given.items() if key in parameters}


def create_model(
    name: str,
    num_classes: int,
    in_channels: int | None = 3,
    image_size: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` (``wrn-16-2``, ``resnet56``, ``convnet-8``, ``resnet18``, a user's
    registered name...) with random weights.

    The factory gets the keywords of :data:`DATA_KEYWORDS` that its signature accepts (None values
    are never passed): kdlab's image models take ``in_channels`` (and ``mlp-*`` ``image_size``), a
    user's model may take ``input_shape``, the shape of one sample (``(20,)`` for 20 features,
    ``(3, 32, 32)`` for CIFAR). Extra keyword arguments go to the factory as given. Unknown names,
    bad pattern fields and bad sizes raise ``UserError``; so does a factory that returns no module.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes={num_classes!r} is invalid: a classifier needs num_classes >= 2")
    if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
        raise UserError(
            f"in_channels={in_channels!r} is invalid: use 1 (grayscale), 3 (RGB) or another count >= 1"
        )
    raw_factory, fields = MODELS.resolve(name)
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    data["input_shape"] = tuple(input_shape) if input_shape is not None else None
    try:
        model = raw_factory(**fields, **_accepted(raw_factory, data), **kwargs)
    except TypeError as error:
        # An unexpected keyword is the user's mistake, not a bug: say so in one line.
        if "unexpected keyword" not in str(error):
            raise
        raise UserError(f"model '{name}' does not accept {sorted(kwargs)}: {error}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"the factory of model '{name}' returned a {type(model).__name__}, not a torch.nn.Module: "
            "make it return the module"
        )
    return model


def check_logits(output: object, batch_size: int, num_classes: int, what: str) -> None:
    """A UserError unless ``output`` (what ``what``'s forward returned for ``batch_size`` samples) is
    one floating-point tensor of logits ``[batch_size, num_classes]``."""
    expected = [batch_size, num_classes]
    if not isinstance(output, Tensor):
        raise UserError(
            f"{what} returns a {type(output).__name__}, not a tensor of logits {expected}: make its forward "
            "return the logits alone"
        )
    if list(output.shape) != expected or not output.is_floating_point():
        raise UserError(
            f"{what} returns {str(output.dtype).removeprefix('torch.')} {list(output.shape)} for {batch_size} "
            f"samples, not logits {expected}: its forward must return one row of {num_classes} class scores "
            "per sample"
        )


def list_models() -> list[str]:
    """Names a user can type: exact names plus examples of each family (``wrn-{depth}-{width}``, ...)."""
    return MODELS.names()


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters, trainable or not (the convention of the papers' tables)."""
    return sum(parameter.numel() for parameter in model.parameters())
