"""Backbones registered by name: torchvision ResNets (with an explicit CIFAR stem) and any timm model.

A backbone maps images (B, 3, H, W) to features (B, F) and exposes ``num_features``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torchvision

from cssl.core.errors import ConfigError

_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


def list_backbones() -> list[str]:
    """Registered names; any ``timm:<name>`` is accepted as well."""
    return sorted(_RESNETS)


def auto_cifar_stem(image_size: int) -> bool:
    """The CIFAR stem keeps small images from being downsampled 4x before the first block."""
    return image_size <= 64


def build_backbone(name: str, *, cifar_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """Build a backbone without its classifier.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``timm:<model name>``.
        cifar_stem: ResNets only: 3x3 stride-1 conv1 and no max-pool (for 32-64 px images).
        zero_init_residual: ResNets only: zero-init the last BN of each residual branch.

    Returns:
        A module with attribute ``num_features``.
    """
    if name.startswith("timm:"):
        return _timm_backbone(name[len("timm:") :])
    if name not in _RESNETS:
        raise ConfigError(
            f"unknown backbone {name!r}: choose one of {', '.join(list_backbones())} or timm:<model name>"
        )
    net = _RESNETS[name](weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _timm_backbone(model_name: str) -> nn.Module:
    import timm

    if not model_name or not timm.is_model(model_name):
        raise ConfigError(f"unknown timm model {model_name!r} in backbone=timm:{model_name} (see timm.list_models())")
    net = timm.create_model(model_name, pretrained=False, num_classes=0)
    return net  # timm models expose num_features already
