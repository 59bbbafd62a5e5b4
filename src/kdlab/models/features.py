"""Penultimate features of any model, by a forward hook on a layer named by its module path.

Where a loss (``reads`` student_features / teacher_features) or ``kdlab analyze`` needs a model's
penultimate features, they come from the layer that the run's ``features`` setting names:

- ``features: NAME`` (a path as in ``model.get_submodule``, e.g. ``body.3``): the *output* of that
  layer, flattened to ``[B, D]``;
- ``features`` unset (None): the *input* of the model's last ``nn.Linear`` submodule in
  ``named_modules()`` order (the layer that maps features to logits in most classifiers);
- kdlab's own :class:`~kdlab.models.Classifier` models with ``features`` unset keep their exact fast
  path, ``classifier(forward_features(x))``: the same tensors the hook on ``classifier``'s input sees.

The hook only keeps a reference to a tensor of the forward it observes, so a step that reads
features through it can still be captured as one CUDA graph. The layer a model uses is remembered on
the model (:func:`set_feature_layer`): a student's from its config, a teacher's from its run's
recorded config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import UserError, did_you_mean

_ATTRIBUTE = "_kdlab_feature_layer"  # on the model: the run's `features` setting (None: the default)
_SHOWN_NAMES = 8  # layer names an error lists


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper wraps (hooks and module paths refer to it)."""
    return getattr(model, "_orig_mod", model)


def set_feature_layer(model: nn.Module, name: str | None) -> None:
    """Remember on ``model`` the layer its features come from (a run's ``features`` setting)."""
    setattr(unwrapped(model), _ATTRIBUTE, name)


def feature_layer_of(model: nn.Module) -> str | None:
    """The ``features`` setting remembered on ``model`` (None: the default layer)."""
    return getattr(unwrapped(model), _ATTRIBUTE, None)


def fast_path(model: nn.Module) -> bool:
    """Whether ``model``'s features come from its own ``forward_features``/``classifier`` (kdlab's
    models, and kdlab's stacked students, with ``features`` unset)."""
    inner = unwrapped(model)
    return (
        feature_layer_of(inner) is None
        and callable(getattr(inner, "forward_features", None))
        and isinstance(getattr(inner, "classifier", None), nn.Module)
    )


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(path, layer)`` of the last ``nn.Linear`` submodule in ``named_modules()`` order (the model
    itself does not count: a bare Linear's input is the data, not features); None when there is none."""
    found = [
        (name, layer)
        for name, layer in unwrapped(model).named_modules()
        if name and isinstance(layer, nn.Linear)
    ]
    return found[-1] if found else None


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _model_name(model: nn.Module, what: str | None) -> str:
    return what or f"the {type(unwrapped(model)).__name__} model"


def feature_layer(model: nn.Module, what: str | None = None) -> tuple[str, nn.Module, bool]:
    """``(path, layer, take_input)`` of the layer ``model``'s features come from: the named layer
    (its output) or, by default, the last Linear (its input). A one-line UserError when the named
    layer does not exist (listing a few that do) or the model has no Linear and no ``features``."""
    inner = unwrapped(model)
    name = feature_layer_of(inner)
    who = _model_name(model, what)
    names = _layer_names(inner)
    listed = ", ".join(names[:_SHOWN_NAMES]) + (
        f", ... ({len(names)} layers)" if len(names) > _SHOWN_NAMES else ""
    )
    if name is None:
        found = last_linear(inner)
        if found is None:
            raise UserError(
                f"{who} has no nn.Linear submodule, so kdlab cannot tell where its penultimate features are: set "
                f"features=LAYER to the layer whose output they are (one of {listed or 'no named layers'})"
            )
        return found[0], found[1], True
    try:
        layer = inner.get_submodule(name) if name else None
    except AttributeError:
        layer = None
    if layer is None or layer is inner:
        raise UserError(
            f"features={name!r} is not a layer of {who}{did_you_mean(name, names)}: choose one of "
            f"{listed or 'no named layers'}"
        )
    return name, layer, False


class FeatureTap:
    """Captures the features of one forward of ``model`` by a hook on :func:`feature_layer`.

    ``with tap.capture(): logits = model(x)`` then ``tap.features()`` -> ``[B, D]``. A layer that
    runs several times in one forward gives its last call's tensor.
    """

    def __init__(
        self, model: nn.Module, what: str | None = None, layer: tuple[str, nn.Module, bool] | None = None
    ) -> None:
        """``layer``: ``(path, module, take_input)`` to tap instead of :func:`feature_layer`'s."""
        self.what = _model_name(model, what)
        self.name, self.layer, self.take_input = layer if layer is not None else feature_layer(model, what)
        self.value: Any = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.take_input:
            self.value = args[0] if args else next(iter(kwargs.values()), None)
        else:
            self.value = output

    @contextlib.contextmanager
    def capture(self) -> Iterator[FeatureTap]:
        self.value = None
        handle = self.layer.register_forward_hook(self._hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    def features(self, batch_size: int | None = None) -> Tensor:
        """The captured tensor flattened to ``[B, D]``; a UserError when the layer never ran, or gave
        something other than one tensor with a row per sample."""
        where = f"the {'input' if self.take_input else 'output'} of layer {self.name!r} of {self.what}"
        if self.value is None:
            raise UserError(
                f"{where} was never computed: the layer does not run in the model's forward; set features= "
                "to a layer the forward uses"
            )
        if not isinstance(self.value, Tensor):
            raise UserError(
                f"{where} is a {type(self.value).__name__}, not a tensor: set features= to a layer that "
                "returns one tensor"
            )
        if self.value.dim() < 1 or (batch_size is not None and self.value.shape[0] != batch_size):
            raise UserError(
                f"{where} has shape {list(self.value.shape)}, not one row per sample of a batch of {batch_size}: "
                "set features= to a layer whose output starts with the batch axis"
            )
        return self.value.flatten(1) if self.value.dim() > 1 else self.value[:, None]


def forward_with_features(model: nn.Module, inputs: Tensor, what: str | None = None) -> tuple[Tensor, Tensor]:
    """``(logits [B, K], features [B, D])`` of one forward of ``model``: the fast path of kdlab's
    models, else the hook of :class:`FeatureTap` (the model's own forward, not a compiled wrapper)."""
    inner = unwrapped(model)
    if fast_path(inner):
        features = inner.forward_features(inputs)
        return inner.classifier(features), features
    tap = FeatureTap(inner, what)
    with tap.capture():
        logits = inner(inputs)
    return logits, tap.features(len(inputs))


def check_features(model: nn.Module, inputs: Tensor, what: str | None = None) -> None:
    """Before training: a UserError when ``model``'s feature layer cannot be found, does not run on
    ``inputs`` (a few samples of the data), or gives no per-sample tensor. Eval mode, no gradients:
    nothing about the model changes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward_with_features(model, inputs, what)
    finally:
        model.train(was_training)
