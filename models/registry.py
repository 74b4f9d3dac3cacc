"""Networks by name: :func:`build_model` and :data:`ARCHITECTURES`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn

from l2bn_lit import convert_norm, get_norm_layer

from .cifar_resnet import PreActResNet18, resnet20, resnet32, resnet44, resnet56, resnet110
from .cifar_zoo import mobilenet_v2, shufflenet_v2, vgg11, vgg16
from .small_cnn import SmallCNN

__all__ = ["ARCHITECTURES", "build_model"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "preact_resnet18": PreActResNet18,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "mobilenet_v2": mobilenet_v2,
}
TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, norm: str = "l2bn", norm_options: dict[str, Any] | None = None
) -> nn.Module:
    """Builds ``arch`` with ``norm`` (``bn``, ``l2bn``, ``gn``, ``ln``, ``none``) and its options.

    torchvision models (``torchvision.<name>``) take 3-channel input and ``norm`` ``bn`` or ``l2bn``;
    so does ``shufflenet_v2``, which hard-codes BatchNorm2d. timm models (``timm.<name>``, timm
    installed) take ``bn`` or ``l2bn`` (their BatchNormAct2d layers become L2BNAct2d).
    """
    options = dict(norm_options or {})
    if arch.startswith(TORCHVISION_PREFIX):
        name = arch[len(TORCHVISION_PREFIX) :]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classification model {name!r} in arch={arch!r}")
        if norm not in ("bn", "l2bn"):
            raise ValueError(f"torchvision models take norm 'bn' or 'l2bn' (through convert_norm), got {norm!r}")
        if in_channels != 3:
            raise ValueError(f"torchvision models take 3-channel input, the data has {in_channels}")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return convert_norm(model, norm, **options) if norm == "l2bn" else model
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX) :], num_classes, in_channels, norm, options)
    if arch == "shufflenet_v2":
        return shufflenet_v2(num_classes, norm, options, in_channels)
    if arch not in ARCHITECTURES:
        known = ", ".join([*ARCHITECTURES, "shufflenet_v2", f"{TORCHVISION_PREFIX}<name>", f"{TIMM_PREFIX}<name>"])
        raise ValueError(f"unknown arch {arch!r}; choose one of {known}")
    return ARCHITECTURES[arch](num_classes=num_classes, norm_layer=get_norm_layer(norm, 2, **options), in_channels=in_channels)


def _timm_model(name: str, num_classes: int, in_channels: int, norm: str, options: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"arch=timm.{name} needs timm: pip install -e '.[timm]'") from error
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} in arch=timm.{name} (timm.list_models() lists them)")
    if norm not in ("bn", "l2bn"):
        raise ValueError(f"timm models take norm 'bn' or 'l2bn' (through convert_norm), got {norm!r}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    return convert_norm(model, norm, **options) if norm == "l2bn" else model
