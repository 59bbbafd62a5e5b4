"""The models of the example setting: plain ``nn.Sequential`` MLPs, registered with kdlab's model
registry. Nothing here is kdlab-specific but the decorator: a factory takes the keywords it names
among ``num_classes``, ``input_shape``, ``in_channels`` and ``image_size`` and returns any module that
maps inputs ``[B, *input_shape]`` to logits ``[B, num_classes]``. kdlab finds the penultimate
features (for ``kdlab analyze`` and feature losses) as the input of the last ``nn.Linear``.

Imported by ``setting.yaml`` (``imports: [models.py]``) or on the command line with
``--import examples/tabular/models.py``.
"""

from __future__ import annotations

import math

from torch import nn

from kdlab.models import MODELS


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int, depth: int) -> nn.Sequential:
    """Flatten, then ``depth`` x (Linear(hidden) + ReLU), then Linear(num_classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("tab-large")
def tab_large(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The large teacher: three hidden layers of 512."""
    return mlp(input_shape, num_classes, 512, 3)


@MODELS.register("tab-medium")
def tab_medium(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The medium teacher of sequential distillation (C8): two hidden layers of 128."""
    return mlp(input_shape, num_classes, 128, 2)


@MODELS.register("tabmlp-{hidden}", examples=["tabmlp-8", "tabmlp-16", "tabmlp-32"])
def tab_student(hidden: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Students: two hidden layers of ``hidden`` units (``tabmlp-16``)."""
    return mlp(input_shape, num_classes, hidden, 2)
