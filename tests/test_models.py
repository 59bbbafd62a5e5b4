"""Model registry and architectures: exact parameter counts, the shared interface, init, errors."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import UserError
from kdlab.models import count_parameters, create_model, list_models
from kdlab.models.imagenet import TORCHVISION_NAMES

# Pinned against the reference implementations' published sizes (100 classes, RGB):
# WRN-16-2 0.703M and WRN-28-4 5.87M (Kim et al.), the rest as in RepDistiller's tables.
PARAMETER_COUNTS = {
    "wrn-16-2": 703_284,
    "wrn-28-4": 5_872_180,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
}

SMALL_NET_PREFIXES = ("convnet-", "mlp-")


@pytest.mark.parametrize("name", PARAMETER_COUNTS)
def test_parameter_count(name: str) -> None:
    assert count_parameters(create_model(name, num_classes=100)) == PARAMETER_COUNTS[name]


def test_parameter_counts_match_the_paper() -> None:
    assert round(PARAMETER_COUNTS["wrn-16-2"] / 1e6, 3) == 0.703
    assert round(PARAMETER_COUNTS["wrn-28-4"] / 1e6, 2) == 5.87
    assert round(PARAMETER_COUNTS["resnet20"] / 1e6, 2) == 0.28
    assert round(PARAMETER_COUNTS["resnet56"] / 1e6, 2) == 0.86
    assert round(PARAMETER_COUNTS["resnet8x4"] / 1e6, 2) == 1.23
    assert round(PARAMETER_COUNTS["resnet32x4"] / 1e6, 2) == 7.43


def _check_interface(name: str, in_channels: int, size: int, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels, **kwargs).eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert logits.shape == (2, 10)
        assert features.ndim == 2 and features.shape[0] == 2
        assert features.shape[1] == model.classifier.in_features
        assert torch.equal(model.classifier(features), logits)
    assert isinstance(model.classifier, torch.nn.Linear)
    assert (model.num_classes, model.in_channels) == (10, in_channels)


CIFAR_NAMES = [
    n for n in list_models() if n not in TORCHVISION_NAMES and not n.startswith(SMALL_NET_PREFIXES)
]
SMALL_NAMES = [n for n in list_models() if n.startswith(SMALL_NET_PREFIXES)]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_models_interface(name: str) -> None:
    _check_interface(name, in_channels=3, size=32)


@pytest.mark.parametrize("name", SMALL_NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_nets_interface_at_28(name: str, in_channels: int) -> None:
    _check_interface(name, in_channels=in_channels, size=28)


@pytest.mark.parametrize("size", [8, 32])
def test_small_nets_other_image_sizes(size: int) -> None:
    _check_interface("convnet-8", in_channels=1, size=size)
    _check_interface("mlp-64", in_channels=1, size=size, image_size=size)


def test_mlp_wrong_image_size_is_a_user_error() -> None:
    model = create_model("mlp-64", num_classes=10, in_channels=1)
    with pytest.raises(UserError, match="image_size=8"):
        model(torch.randn(2, 1, 8, 8))


def test_cifar_models_accept_one_channel_and_other_sizes() -> None:
    _check_interface("wrn-10-1", in_channels=1, size=28)
    _check_interface("resnet20", in_channels=1, size=8)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_imagenet_models_interface(name: str, in_channels: int) -> None:
    _check_interface(name, in_channels=in_channels, size=64)


def test_all_imagenet_models_build() -> None:
    for name in TORCHVISION_NAMES:
        model = create_model(name, num_classes=10)
        assert model.classifier.out_features == 10
        # The head lives in `classifier` only, so it is neither counted nor updated twice.
        assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 10 for m in model.body.modules())


def test_channels_last_and_backward() -> None:
    model = create_model("wrn-10-1", num_classes=10)
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wrn_he_init() -> None:
    torch.manual_seed(0)
    model = create_model("wrn-28-4", num_classes=100)
    conv = model.blocks[-1].conv2  # 256 -> 256 channels: 590k weights, so the sample std is tight
    expected = math.sqrt(2 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(conv.weight.mean().item()) < 0.01 * expected
    assert torch.equal(model.bn.weight, torch.ones_like(model.bn.weight))
    assert torch.equal(model.classifier.bias, torch.zeros(100))


def test_bad_wrn_depth() -> None:
    with pytest.raises(UserError, match=r"wrn depth 15 is invalid: depth must be 6n\+4"):
        create_model("wrn-15-2", num_classes=10)


def test_unknown_name_suggests() -> None:
    with pytest.raises(UserError, match="did you mean") as error:
        create_model("resnet57", 10)
    assert "resnet56" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 10, "in_channels": 0}, "in_channels"),
        ({"num_classes": 10, "depth_multiplier": 2}, "does not accept"),
    ],
)
def test_bad_arguments(kwargs: dict, text: str) -> None:
    with pytest.raises(UserError, match=text):
        create_model("resnet20", **kwargs)


def test_image_size_reaches_only_models_that_need_it() -> None:
    mlp = create_model("mlp-64", 10, in_channels=1, image_size=8)
    assert mlp(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert create_model("resnet20", 10, image_size=8)(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


def test_bad_width() -> None:
    with pytest.raises(UserError, match="width must be a positive integer"):
        create_model("wrn-16-0", num_classes=10)
