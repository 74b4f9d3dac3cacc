"""VGG with norm, MobileNetV2 and ShuffleNetV2 for 32x32 inputs (CIFAR strides).

MobileNetV2 and ShuffleNetV2 are torchvision's implementations with a stride-1 stem (and, for
MobileNetV2, a stride-1 second stage), as in the common CIFAR adaptations. Input
``(N, in_channels, 32, 32)``; output ``(N, num_classes)`` logits.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from l2bn_lit.nn import convert_norm

from .cifar_resnet import NormLayer

__all__ = ["CifarVGG", "vgg11", "vgg16", "mobilenet_v2", "shufflenet_v2"]

_VGG_STAGES = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG-11/16 with a norm after every conv; five 2x2 max-pools take 32x32 to 1x1, then one linear layer."""

    def __init__(self, depth: int, num_classes: int, norm_layer: NormLayer, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG_STAGES[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), norm_layer(item), nn.ReLU(inplace=True)]
                channels = item
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, ``(N, 512)``."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def vgg11(num_classes: int, norm_layer: NormLayer, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(11, num_classes, norm_layer, in_channels)


def vgg16(num_classes: int, norm_layer: NormLayer, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(16, num_classes, norm_layer, in_channels)


def mobilenet_v2(num_classes: int, norm_layer: NormLayer, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 (norm_layer injected) with stride 1 in the stem and second stage."""
    # t, c, n, s as in torchvision, second row's stride 2 -> 1 for 32x32 inputs
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = torchvision.models.MobileNetV2(
        num_classes=num_classes, inverted_residual_setting=setting, norm_layer=norm_layer
    )
    model.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
    return model


def shufflenet_v2(num_classes: int, norm: str, norm_options: dict | None = None, in_channels: int = 3) -> nn.Module:
    """torchvision's ShuffleNetV2 1.0x with a stride-1 stem and no stem max-pool. It hard-codes
    BatchNorm2d, so the norm is applied by :func:`l2bn_lit.convert_norm` (``bn`` or ``l2bn``)."""
    if norm not in ("bn", "l2bn"):
        raise ValueError(f"shufflenet_v2 hard-codes BatchNorm2d: norm must be 'bn' or 'l2bn', got {norm!r}")
    model = torchvision.models.shufflenet_v2_x1_0(num_classes=num_classes)
    model.conv1[0] = nn.Conv2d(in_channels, 24, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return convert_norm(model, "l2bn", **(norm_options or {})) if norm == "l2bn" else model
