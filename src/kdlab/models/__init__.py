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
import math

from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.models import imagenet, resnet_cifar, small, wrn  # noqa: F401  (registration side effects)
from kdlab.models.base import MAX_CLASSES, MAX_PARAMETERS, MAX_SAMPLE_VALUES, MODELS, Classifier

__all__ = [
    "MODELS", "Classifier", "batch_needs", "check_logits", "check_model_name", "count_parameters", "create_model",
    "list_models",
]  # fmt: skip

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
    _check_data_sizes(num_classes, in_channels, image_size, input_shape)
    raw_factory, fields = MODELS.resolve(name)
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    data["input_shape"] = tuple(input_shape) if input_shape is not None else None
    count = getattr(raw_factory, "parameter_count", None)
    if count is not None:
        _check_parameter_count(name, count(**fields, **_accepted(raw_factory, data)))
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


def check_model_name(name: str) -> None:
    """A UserError for a model name that is unknown, or whose fields ask for more parameters than the
    stated limit even for the smallest data (2 classes, 1 channel, 1x1 images): what config validation
    can tell before any data is loaded, so that a sweep or a chain refuses ``wrn-10000-1000`` up front.
    :func:`create_model` checks the real count once the data is known."""
    factory, fields = MODELS.resolve(name)
    count = getattr(factory, "parameter_count", None)
    if count is not None:
        smallest = {"num_classes": 2, "in_channels": 1, "image_size": 1, "input_shape": (1, 1, 1)}
        parameters = count(**fields, **_accepted(factory, smallest))
        if parameters is not None and parameters > MAX_PARAMETERS:
            _check_parameter_count(name, parameters)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_data_sizes(
    num_classes: object, in_channels: object, image_size: object, input_shape: object
) -> None:
    """A UserError for a class count, channel count, image size or sample shape (from a dataset or a
    checkpoint) that no model can be built for, or that is beyond the stated limits."""
    if not _is_int(num_classes) or not 2 <= num_classes <= MAX_CLASSES:
        raise UserError(
            f"num_classes={str(num_classes)[:40]} is invalid: kdlab builds classifiers of 2 to {MAX_CLASSES} classes; "
            "use data with that many"
        )
    if in_channels is not None and (not _is_int(in_channels) or in_channels < 1):
        raise UserError(
            f"in_channels={str(in_channels)[:40]} is invalid: use 1 (grayscale), 3 (RGB) or another count >= 1"
        )
    from kdlab.config import MAX_IMAGE_SIZE

    if image_size is not None and (not _is_int(image_size) or not 1 <= image_size <= MAX_IMAGE_SIZE):
        raise UserError(
            f"image_size={str(image_size)[:40]} is invalid: kdlab builds models for images of 1 to "
            f"{MAX_IMAGE_SIZE} pixels a side; resize the images"
        )
    if input_shape is not None:
        shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None
        if not shape or not all(_is_int(size) and size >= 1 for size in shape):
            raise UserError(f"input_shape={str(input_shape)[:60]} is invalid: it must list positive sizes")
        sample = shape
    else:
        sample = [in_channels or 1, image_size or 1, image_size or 1]
    if math.prod(sample) > MAX_SAMPLE_VALUES:
        raise UserError(
            f"samples of shape {str(sample)[:60]} hold {math.prod(sample)} values, more than kdlab's limit of "
            f"2^{MAX_SAMPLE_VALUES.bit_length() - 1} per sample: use smaller inputs"
        )


def _check_parameter_count(name: str, parameters: int | None) -> None:
    """A UserError when a model of ``parameters`` (its closed form, None: not known) would exceed the
    stated limit or this machine's memory for its float32 weights alone."""
    if parameters is None:
        return
    from kdlab.data.formats import memory_bytes

    size = 4 * parameters
    memory = memory_bytes()
    if parameters > MAX_PARAMETERS or (memory is not None and size > memory):
        limit = f"kdlab's limit of 2^{MAX_PARAMETERS.bit_length() - 1} parameters"
        if parameters <= MAX_PARAMETERS:
            limit = f"this machine's memory ({memory / 1e9:.3g} GB)"
        raise UserError(
            f"model '{name[:80]}' would have {parameters:.3g} parameters ({size / 1e9:.3g} GB of float32 weights), "
            f"more than {limit}: choose a smaller model (fewer or narrower layers)"
        )


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


def batch_needs(model: nn.Module, name: str) -> list[tuple[int, str]]:
    """What ``model`` needs of each training batch, ``[(minimum samples, why)]`` for
    :func:`kdlab.data.loader.check_train_batches`: 2 when it has BatchNorm layers, which in training
    normalise over the batch (PyTorch refuses one value per channel, and over a single image the
    statistics are that image's own)."""
    if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return [
            (2, f"--model {name} has BatchNorm layers, which need at least 2 samples per batch in training")
        ]
    return []
